"""Messages: ids, timestamps, class-level settings and wire names."""

from __future__ import annotations

import os
import time
from typing import ClassVar

import attrs
import pytest
from attrs import frozen

from catga import Command, Event, Message, QoS, message_name, new_message_id


@frozen(kw_only=True)
class PlaceOrder(Command[str]):
    order_id: str


@frozen(kw_only=True)
class OrderShipped(Event):
    order_id: str
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Renamed(Event):
    message_name: ClassVar[str] = "orders.renamed.v2"


@frozen(kw_only=True)
class RenamedChild(Renamed):
    pass


class TestMessageId:
    def test_fixed_at_creation(self) -> None:
        """Reading message_id twice gives the same value: it is not regenerated on read."""
        order = PlaceOrder(order_id="o-1")
        first = order.message_id
        assert order.message_id == first
        assert order.message_id is first

    def test_caller_given_id_is_kept(self) -> None:
        """An explicit message_id (a business key) is kept as given."""
        order = PlaceOrder(order_id="o-1", message_id="pay-456")
        assert order.message_id == "pay-456"

    def test_unique_across_many(self) -> None:
        """Ten thousand messages get ten thousand distinct ids."""
        ids = {OrderShipped(order_id="o").message_id for _ in range(10_000)}
        assert len(ids) == 10_000

    def test_new_message_id_is_a_nonempty_string(self) -> None:
        """new_message_id returns distinct non-empty strings."""
        first, second = new_message_id(), new_message_id()
        assert isinstance(first, str)
        assert first
        assert first != second

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_unique_after_fork(self) -> None:
        """A forked child does not repeat the parent's ids (its prefix is renewed)."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child process
            try:
                os.write(write_end, new_message_id().encode())
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            child_id = os.read(read_end, 200).decode()
        finally:
            os.close(read_end)
            os.waitpid(pid, 0)
        parent_id = new_message_id()
        assert child_id
        assert child_id != parent_id
        assert child_id[:16] != parent_id[:16]

    def test_messages_are_immutable(self) -> None:
        """A message is frozen: its id cannot be reassigned."""
        order = PlaceOrder(order_id="o-1")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            order.message_id = "other"  # type: ignore[misc]


class TestMetadata:
    def test_correlation_id_defaults_to_none(self) -> None:
        """A message starts a conversation unless a correlation_id is given."""
        assert PlaceOrder(order_id="o").correlation_id is None
        assert PlaceOrder(order_id="o", correlation_id="c-1").correlation_id == "c-1"

    def test_created_at_is_the_unix_time_of_creation(self) -> None:
        """created_at is a Unix timestamp taken when the message is made, and stays fixed."""
        before = time.time()
        order = PlaceOrder(order_id="o")
        after = time.time()
        assert before <= order.created_at <= after
        assert order.created_at == order.created_at

    def test_fields_are_keyword_only(self) -> None:
        """Messages take keyword arguments only."""
        with pytest.raises(TypeError):
            PlaceOrder("o-1")  # type: ignore[misc]

    def test_class_settings_are_not_fields(self) -> None:
        """qos, timeout, retry and message_name are ClassVars, not per-instance fields."""
        names = set(attrs.fields_dict(OrderShipped))
        assert names == {"message_id", "correlation_id", "created_at", "order_id"}


class TestClassSettings:
    def test_qos_defaults_to_none(self) -> None:
        """Without an override the type's qos is None (the options' default applies)."""
        assert PlaceOrder.qos is None
        assert Message.timeout is None
        assert Message.retry is None

    def test_qos_override_at_class_level(self) -> None:
        """A type may set its QoS as a ClassVar; instances see it too."""
        assert OrderShipped.qos is QoS.EXACTLY_ONCE
        assert OrderShipped(order_id="o").qos is QoS.EXACTLY_ONCE

    def test_qos_values_match_mqtt(self) -> None:
        """QoS levels are the MQTT integers 0, 1 and 2."""
        assert [int(q) for q in QoS] == [0, 1, 2]
        assert QoS(2) is QoS.EXACTLY_ONCE


class TestMessageName:
    def test_defaults_to_the_qualified_name(self) -> None:
        """The wire name of a type is its __qualname__."""
        assert message_name(PlaceOrder) == "PlaceOrder"

    def test_class_level_override(self) -> None:
        """A message_name ClassVar replaces the wire name."""
        assert message_name(Renamed) == "orders.renamed.v2"

    def test_override_is_not_inherited(self) -> None:
        """A subclass gets its own name, so it never collides with its parent's."""
        assert message_name(RenamedChild) == "RenamedChild"

    def test_non_string_override_is_ignored(self) -> None:
        """A message_name that is not a string falls back to the qualified name."""
        odd = type("Odd", (), {"message_name": 42})
        assert message_name(odd) == "Odd"
