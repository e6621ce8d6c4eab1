"""Message types and trivial handlers, so the framework's own overhead is what is timed.

One type per QoS and fan-out, with the QoS set on the class (the usual way),
so every case runs the chain catga composes by default for that level.
"""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from catga import Command, Event, HandlerRegistry, QoS, handles

__all__ = [
    "Ping",
    "Ping0",
    "Ping1",
    "Ping2",
    "Tick0",
    "Tick0x3",
    "Tick1",
    "Tick1x3",
    "Tick2",
    "on_ping",
    "registry",
]


@frozen(kw_only=True)
class Ping(Command[int]):
    """A command with no class-level QoS (the options' default, QoS 1, applies)."""


@frozen(kw_only=True)
class Ping0(Command[int]):
    """A QoS 0 command."""

    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


@frozen(kw_only=True)
class Ping1(Command[int]):
    """A QoS 1 command."""

    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class Ping2(Command[int]):
    """A QoS 2 command."""

    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Tick0(Event):
    """A QoS 0 event with one handler."""

    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


@frozen(kw_only=True)
class Tick0x3(Event):
    """A QoS 0 event with three handlers."""

    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


@frozen(kw_only=True)
class Tick1(Event):
    """A QoS 1 event with one handler."""

    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class Tick1x3(Event):
    """A QoS 1 event with three handlers."""

    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class Tick2(Event):
    """A QoS 2 event with one handler."""

    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@handles(Ping, Ping0, Ping1, Ping2)
async def on_ping(command: Ping) -> int:
    """Return a small value: the cheapest possible command handler."""
    return 1


@handles(Tick0, Tick0x3, Tick1, Tick1x3, Tick2)
async def on_tick_a(event: Event) -> None:
    """Do nothing."""


@handles(Tick0x3, Tick1x3)
async def on_tick_b(event: Event) -> None:
    """Do nothing."""


@handles(Tick0x3, Tick1x3)
async def on_tick_c(event: Event) -> None:
    """Do nothing."""


def registry() -> HandlerRegistry:
    """Return a registry with every benchmark handler."""
    return HandlerRegistry(on_ping, on_tick_a, on_tick_b, on_tick_c)
