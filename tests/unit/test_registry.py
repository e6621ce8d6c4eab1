"""``@handles`` and the HandlerRegistry: registration, scanning, the name allowlist."""

from __future__ import annotations

import types
from typing import Any

import pytest
from attrs import frozen
from hypothesis import given

from catga import Command, Event, HandlerRegistry, Message, handles
from catga.exceptions import RegistrationError, SerializationError, UnknownMessageTypeError
from tests import strategies
from tests.unit import fixtures_pkg
from tests.unit.fixtures_pkg import duplicate_names, orders
from tests.unit.fixtures_pkg.sub import billing


@frozen(kw_only=True)
class CreateUser(Command[str]):
    name: str


@frozen(kw_only=True)
class UserCreated(Event):
    name: str


@frozen(kw_only=True)
class Unhandled(Event):
    pass


@handles(CreateUser)
async def create_user(command: CreateUser) -> str:
    return command.name


@handles(CreateUser)
async def create_user_again(command: CreateUser) -> str:
    return command.name


@handles(CreateUser)
class CreateUserHandler:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    async def handle(self, command: CreateUser, audit: str = "off") -> str:
        return self.prefix + command.name


@handles(UserCreated)
async def send_welcome(event: UserCreated) -> None:
    return None


@handles(UserCreated)
async def add_to_crm(event: UserCreated) -> None:
    return None


@handles(UserCreated, CreateUser)
async def multi(message: Any) -> None:
    return None


@handles(UserCreated)
class AuditUser:
    async def handle(self, event: UserCreated) -> None:
        return None


class AuditUserLater(AuditUser):
    """A subclass that was never decorated: code reuse, not a second handler."""


@handles(Unhandled)
class AuditOther(AuditUser):
    """Decorated for another event only."""


class TestHandles:
    def test_returns_the_object_unchanged(self) -> None:
        """@handles only marks: the function is still callable as before."""
        assert create_user.__name__ == "create_user"
        assert HandlerRegistry().handlers_for(CreateUser) == ()

    def test_needs_a_message_type(self) -> None:
        """@handles() with no type is refused with a usage hint."""
        with pytest.raises(RegistrationError, match="at least one message type"):
            handles()

    @pytest.mark.parametrize("bad", [int, Message, "CreateUser", object()])
    def test_rejects_non_messages(self, bad: Any) -> None:
        """Only Command and Event subclasses may be handled."""
        with pytest.raises(RegistrationError, match="Command or Event"):
            handles(bad)


class TestRegister:
    def test_async_function(self) -> None:
        """An async function is registered with its dotted name and no parameters to inject."""
        registry = HandlerRegistry(create_user)
        (info,) = registry.handlers_for(CreateUser)
        assert info.target is create_user
        assert info.call is create_user
        assert info.name == f"{__name__}.create_user"
        assert info.parameters == ()

    def test_class_with_async_handle(self) -> None:
        """A class is registered with no bound call; handle/__init__ parameters are recorded."""
        registry = HandlerRegistry(CreateUserHandler)
        (info,) = registry.handlers_for(CreateUser)
        assert info.target is CreateUserHandler
        assert info.call is None
        assert [p.name for p in info.parameters] == ["audit"]
        assert [p.name for p in info.init_parameters] == ["prefix"]

    def test_instance(self) -> None:
        """An instance is registered with its bound handle and its class's name."""
        handler = CreateUserHandler("x-")
        registry = HandlerRegistry(handler)
        (info,) = registry.handlers_for(CreateUser)
        assert info.target is handler
        assert info.call == handler.handle
        assert info.name == f"{__name__}.CreateUserHandler"

    def test_second_command_handler_is_rejected(self) -> None:
        """A command has exactly one handler: a second one raises RegistrationError."""
        registry = HandlerRegistry(create_user)
        with pytest.raises(RegistrationError, match="CreateUser"):
            registry.register(create_user_again)
        assert [h.target for h in registry.handlers_for(CreateUser)] == [create_user]

    def test_second_command_handler_error_names_both(self) -> None:
        """The error for a second command handler names the existing and the new handler."""
        registry = HandlerRegistry(create_user)
        with pytest.raises(RegistrationError) as caught:
            registry.register(create_user_again)
        assert f"{__name__}.create_user" in str(caught.value)
        assert f"{__name__}.create_user_again" in str(caught.value)

    def test_registering_the_same_handler_twice_is_a_no_op(self) -> None:
        """Re-registering a handler neither duplicates it nor counts as a second handler."""
        registry = HandlerRegistry(create_user, send_welcome)
        version = registry.version
        registry.register(create_user, send_welcome)
        assert len(registry) == 2
        assert registry.version == version

    def test_events_accept_many_handlers_in_order(self) -> None:
        """An event may have any number of handlers, kept in registration order."""
        registry = HandlerRegistry(send_welcome, add_to_crm, AuditUser)
        assert [h.target for h in registry.handlers_for(UserCreated)] == [
            send_welcome,
            add_to_crm,
            AuditUser,
        ]

    def test_one_handler_for_several_types(self) -> None:
        """@handles(A, B) registers the object for both types."""
        registry = HandlerRegistry(multi)
        assert [h.message_type for h in registry] == [UserCreated, CreateUser]

    def test_unmarked_object_is_rejected(self) -> None:
        """Registering something without @handles is an error."""

        async def plain(event: UserCreated) -> None:
            return None

        with pytest.raises(RegistrationError, match="not marked"):
            HandlerRegistry(plain)

    def test_sync_function_is_rejected(self) -> None:
        """A plain def handler is refused: handlers must be async."""

        @handles(UserCreated)
        def sync_handler(event: UserCreated) -> None:
            return None

        with pytest.raises(RegistrationError, match="async"):
            HandlerRegistry(sync_handler)

    def test_class_with_sync_handle_is_rejected(self) -> None:
        """A class whose handle is not async is refused."""

        @handles(UserCreated)
        class SyncHandle:
            def handle(self, event: UserCreated) -> None:
                return None

        with pytest.raises(RegistrationError, match="async"):
            HandlerRegistry(SyncHandle)

    def test_class_without_handle_is_rejected(self) -> None:
        """A marked class with no handle method is refused."""

        @handles(UserCreated)
        class NoHandle:
            pass

        with pytest.raises(RegistrationError, match="async"):
            HandlerRegistry(NoHandle)

    def test_handler_without_message_parameter_is_rejected(self) -> None:
        """A handler must take the message as its first parameter."""

        @handles(UserCreated)
        async def no_args() -> None:
            return None

        with pytest.raises(RegistrationError, match="first parameter"):
            HandlerRegistry(no_args)

    def test_var_args_are_rejected(self) -> None:
        """*args/**kwargs after the message cannot be injected."""

        @handles(UserCreated)
        async def var_kwargs(event: UserCreated, **services: Any) -> None:
            return None

        with pytest.raises(RegistrationError, match="services"):
            HandlerRegistry(var_kwargs)

    def test_unresolvable_annotation_keeps_the_raw_string(self) -> None:
        """A forward reference that cannot be resolved does not break registration."""

        @handles(UserCreated)
        async def forward(event: UserCreated, repo: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
            return None

        (info,) = HandlerRegistry(forward).handlers_for(UserCreated)
        assert info.parameters[0].annotation == "NoSuchType"

    def test_version_grows_with_each_registration(self) -> None:
        """registry.version changes whenever a handler is added (mediators watch it)."""
        registry = HandlerRegistry()
        before = registry.version
        registry.register(send_welcome)
        assert registry.version > before

    def test_undecorated_subclass_is_not_a_handler(self) -> None:
        """A subclass of a handler class is not itself a handler unless decorated."""
        with pytest.raises(RegistrationError, match="not marked"):
            HandlerRegistry(AuditUserLater)

    def test_decorated_subclass_handles_only_its_own_types(self) -> None:
        """@handles on a subclass of a handler class registers it for its own types only."""
        registry = HandlerRegistry(AuditOther)
        assert [h.message_type for h in registry] == [Unhandled]


class TestScan:
    def test_scan_package_recursively(self) -> None:
        """Scanning a package finds handlers in its modules and subpackages, each once."""
        registry = HandlerRegistry()
        found = registry.scan(fixtures_pkg)
        assert found == 3
        assert {h.target for h in registry} == {
            orders.on_order_placed,
            orders.CancelOrderHandler,
            billing.charge_card,
        }

    def test_scan_by_module_name(self) -> None:
        """A dotted module name is imported and scanned; unmarked functions are skipped."""
        registry = HandlerRegistry()
        assert registry.scan("tests.unit.fixtures_pkg.orders") == 2
        assert orders.not_a_handler not in {h.target for h in registry}

    def test_scan_skips_imported_handlers(self) -> None:
        """Handlers imported into a module belong to their defining module only."""
        registry = HandlerRegistry()
        assert registry.scan(billing) == 1
        assert [h.target for h in registry] == [billing.charge_card]

    def test_from_modules(self) -> None:
        """from_modules builds a registry from several modules (for DI providers)."""
        registry = HandlerRegistry.from_modules(orders, "tests.unit.fixtures_pkg.sub.billing")
        assert len(registry) == 3
        assert registry.type_for("ChargeCard") is billing.ChargeCard

    def test_scan_of_a_module_object(self) -> None:
        """scan takes module objects too, and skips marked names the module only imported."""
        module = types.ModuleType("tests.unit.generated_handlers")
        module.send_welcome = send_welcome  # imported from elsewhere: skipped
        assert HandlerRegistry().scan(module) == 0

    def test_scan_finds_handler_instances(self) -> None:
        """A handler instance created in the scanned module is found, even if its class is not."""
        module = types.ModuleType("tests.unit.generated_handlers")
        module.EventSink = strategies.EventSink  # the imported class itself: skipped
        module.audit = strategies.EventSink("audit")
        registry = HandlerRegistry()
        assert registry.scan(module) == 1
        assert {h.target for h in registry} == {module.audit}

    def test_scanning_twice_is_harmless(self) -> None:
        """A second scan of the same package registers nothing new."""
        registry = HandlerRegistry.from_modules(fixtures_pkg)
        registry.scan(fixtures_pkg)
        assert len(registry) == 3


class TestTypes:
    def test_type_for_registered_name(self) -> None:
        """A handled type is known by its wire name."""
        registry = HandlerRegistry(create_user)
        assert registry.type_for("CreateUser") is CreateUser

    def test_type_for_unknown_name(self) -> None:
        """An unknown wire name raises UnknownMessageTypeError carrying the name."""
        with pytest.raises(UnknownMessageTypeError) as caught:
            HandlerRegistry().type_for("os.system")
        assert caught.value.name == "os.system"
        assert isinstance(caught.value, SerializationError)
        assert isinstance(caught.value, LookupError)

    def test_add_types_without_handlers(self) -> None:
        """add_types allows decoding a type that has no local handler."""
        registry = HandlerRegistry()
        registry.add_types(Unhandled)
        assert registry.type_for("Unhandled") is Unhandled
        assert registry.message_types == (Unhandled,)
        assert len(registry) == 0

    def test_add_types_rejects_non_messages(self) -> None:
        """Only Message subclasses may be added to the allowlist."""
        with pytest.raises(RegistrationError, match="not a Message"):
            HandlerRegistry().add_types(dict)  # type: ignore[arg-type]

    def test_same_qualname_in_two_modules_is_rejected(self) -> None:
        """Two types with one wire name raise, naming both modules and advising message_name."""
        registry = HandlerRegistry()
        registry.add_types(orders.OrderPlaced)
        with pytest.raises(RegistrationError) as caught:
            registry.add_types(duplicate_names.OrderPlaced)
        text = str(caught.value)
        assert orders.__name__ in text
        assert duplicate_names.__name__ in text
        assert "message_name" in text
        assert registry.type_for("OrderPlaced") is orders.OrderPlaced

    def test_name_collision_through_a_handler_registers_nothing(self) -> None:
        """A handler whose type's name is taken is refused and not half-registered."""

        @handles(duplicate_names.OrderPlaced)
        async def on_duplicate(event: Any) -> None:
            return None

        registry = HandlerRegistry(orders.on_order_placed)
        with pytest.raises(RegistrationError, match="message_name"):
            registry.register(on_duplicate)
        assert registry.handlers_for(duplicate_names.OrderPlaced) == ()


class TestRegistryProperties:
    @given(batches=strategies.handler_batches)
    def test_iteration_gives_exactly_what_was_registered(self, batches: list[list[Any]]) -> None:
        """Registering any event handlers, in any batches, iterates to exactly those handlers."""
        registry = HandlerRegistry()
        expected: dict[type[Event], dict[int, Any]] = {t: {} for t in strategies.EVENT_TYPES}
        for batch in batches:
            registry.register(*batch)
            for handler in batch:
                for message_type in handler.__catga_handles__:
                    expected[message_type].setdefault(id(handler), handler)
        for message_type, handlers in expected.items():
            assert [h.target for h in registry.handlers_for(message_type)] == list(
                handlers.values()
            )
        pairs = [(h.message_type, h.target) for h in registry]
        assert len(pairs) == len(registry) == sum(len(h) for h in expected.values())
        assert len({(t, id(x)) for t, x in pairs}) == len(pairs)
        assert set(registry.message_types) == {t for t, h in expected.items() if h}
