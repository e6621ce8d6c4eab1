"""``@handles`` and the registry that maps message types to handlers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs
from attrs import frozen

from ._messages import Command, Event, Message, message_name
from .exceptions import RegistrationError, UnknownMessageTypeError

__all__ = ["HandlerInfo", "HandlerRegistry", "handles"]

T = TypeVar("T")
_MARK = "__catga_handles__"


def handles(*message_types: type[Message]) -> Callable[[T], T]:
    """Mark an async function, or a class with ``async def handle``, as a handler.

    The object is returned unchanged; registration happens when it is passed to
    :meth:`HandlerRegistry.register` or found by :meth:`HandlerRegistry.scan`.

    Raises:
        RegistrationError: no message type given, or one that is not a Command/Event.
    """
    if not message_types:
        raise RegistrationError(
            "@handles needs at least one message type, e.g. @handles(MyCommand)"
        )
    for message_type in message_types:
        _check_message_type(message_type)

    def mark(target: T) -> T:
        setattr(target, _MARK, marks_of(target) + message_types)
        return target

    return mark


def marks_of(obj: Any) -> tuple[type[Message], ...]:
    """Return the types ``obj`` was marked to handle; marks are never inherited.

    A class's marks live in its own ``__dict__`` (an undecorated subclass handles
    nothing); an instance carries the marks of its class.
    """
    if inspect.isclass(obj):
        return obj.__dict__.get(_MARK, ())  # type: ignore[no-any-return]
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return getattr(obj, _MARK, ())
    return type(obj).__dict__.get(_MARK, ())  # type: ignore[no-any-return]


def _check_message_type(message_type: Any) -> None:
    if not (isinstance(message_type, type) and issubclass(message_type, Command | Event)):
        raise RegistrationError(f"@handles takes Command or Event subclasses, got {message_type!r}")


@frozen
class HandlerInfo:
    """One registered handler of one message type.

    Attributes:
        name: dotted name, used in logs, dead letters and idempotency keys.
        message_type: the type it handles.
        target: the function, class or instance that was registered.
        call: the async callable that takes the message first (a function or a bound
            ``handle``); for a class, ``None`` until an instance is made per message.
        parameters: the parameters after the message, to be injected.
        init_parameters: for a class, the parameters of ``__init__``, to be injected.
    """

    name: str
    message_type: type[Message]
    target: Any
    call: Callable[..., Any] | None
    parameters: tuple[inspect.Parameter, ...]
    init_parameters: tuple[inspect.Parameter, ...] = ()


class HandlerRegistry:
    """Message type -> handlers, and message name -> type (the decoding allowlist)."""

    def __init__(self, *handlers: Any) -> None:
        self._handlers: dict[type[Message], tuple[HandlerInfo, ...]] = {}
        self._types: dict[str, type[Message]] = {}
        self.version = 0
        if handlers:
            self.register(*handlers)

    @classmethod
    def from_modules(cls, *modules: types.ModuleType | str) -> HandlerRegistry:
        """Return a registry holding every handler found in ``modules`` (see :meth:`scan`)."""
        registry = cls()
        registry.scan(*modules)
        return registry

    def register(self, *handlers: Any) -> None:
        """Register handlers marked with ``@handles`` (functions, classes or instances).

        Raises:
            RegistrationError: unmarked object, a bad signature, or a second command handler.
        """
        for handler in handlers:
            marked = marks_of(handler)
            if not marked:
                raise RegistrationError(f"{handler!r} is not marked with @handles(...)")
            for message_type in dict.fromkeys(marked):
                self._add(_describe(handler, message_type))

    def _add(self, info: HandlerInfo) -> None:
        existing = self._handlers.get(info.message_type, ())
        if any(h.target is info.target for h in existing):
            return
        if issubclass(info.message_type, Command) and existing:
            raise RegistrationError(
                f"command {info.message_type.__qualname__} already has handler "
                f"{existing[0].name}, so {info.name} cannot be added: a command has exactly "
                "one handler (use an Event for fan-out)"
            )
        names = {h.name for h in existing}
        if info.name in names:
            # Names key QoS 2 records and dead letters: two instances of one class need two.
            n = 2
            while f"{info.name}#{n}" in names:
                n += 1
            info = attrs.evolve(info, name=f"{info.name}#{n}")
        self.add_types(info.message_type)
        self._handlers[info.message_type] = (*existing, info)
        self.version += 1

    def add_types(self, *message_types: type[Message]) -> None:
        """Allow message types to be decoded from the wire without a local handler.

        Raises:
            RegistrationError: a name already taken by another type.
        """
        for message_type in message_types:
            if not (isinstance(message_type, type) and issubclass(message_type, Message)):
                raise RegistrationError(f"{message_type!r} is not a Message subclass")
            name = message_name(message_type)
            known = self._types.setdefault(name, message_type)
            if known is not message_type:
                raise RegistrationError(
                    f"message name {name!r} is used by {known.__module__}.{known.__qualname__} "
                    f"and {message_type.__module__}.{message_type.__qualname__}: set a distinct "
                    "`message_name` ClassVar on one of them"
                )

    def scan(self, *modules: types.ModuleType | str) -> int:
        """Register every ``@handles`` object defined in modules or packages (recursively).

        Returns:
            How many handlers were found.
        """
        found = [obj for module in modules for obj in _marked_objects(module)]
        self.register(*found)
        return len(found)

    def handlers_for(self, message_type: type[Message]) -> tuple[HandlerInfo, ...]:
        """Return the handlers of a message type (empty when none)."""
        return self._handlers.get(message_type, ())

    def type_for(self, name: str) -> type[Message]:
        """Return the type registered under a wire name.

        Raises:
            UnknownMessageTypeError: no such name.
        """
        try:
            return self._types[name]
        except KeyError:
            raise UnknownMessageTypeError(name) from None

    @property
    def message_types(self) -> tuple[type[Message], ...]:
        """Every known message type, with or without handlers."""
        return tuple(self._types.values())

    def __iter__(self) -> Iterator[HandlerInfo]:
        for infos in self._handlers.values():
            yield from infos

    def __len__(self) -> int:
        return sum(len(infos) for infos in self._handlers.values())


def _marked_objects(module: types.ModuleType | str) -> Iterable[Any]:
    if isinstance(module, str):
        module = importlib.import_module(module)
    for name, obj in vars(module).items():
        if name.startswith("__") or not marks_of(obj):
            continue
        # Classes and functions count where they are defined (not where imported);
        # an instance counts wherever it is a module attribute (duplicates are ignored).
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if defined_here or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            yield obj
    if hasattr(module, "__path__"):
        for sub in pkgutil.iter_modules(module.__path__, module.__name__ + "."):
            yield from _marked_objects(sub.name)


def _describe(handler: Any, message_type: type[Message]) -> HandlerInfo:
    if inspect.isclass(handler):
        method = getattr(handler, "handle", None)
        _check_async(method, handler)
        params = _parameters(method, skip=2, owner=handler)
        init_params = _parameters(handler.__init__, skip=1, owner=handler)
        name = f"{handler.__module__}.{handler.__qualname__}"
        return HandlerInfo(name, message_type, handler, None, params, init_params)
    if inspect.iscoroutinefunction(handler):
        name = f"{handler.__module__}.{handler.__qualname__}"
        return HandlerInfo(name, message_type, handler, handler, _parameters(handler, 1, handler))
    method = getattr(handler, "handle", None)
    _check_async(method, handler)
    cls = type(handler)
    name = f"{cls.__module__}.{cls.__qualname__}"
    return HandlerInfo(name, message_type, handler, method, _parameters(method, 1, handler))


def _check_async(method: Any, owner: Any) -> None:
    if not inspect.iscoroutinefunction(method):
        raise RegistrationError(
            f"{owner!r} must be an async function or have `async def handle(self, message, ...)`"
        )


def _parameters(func: Any, skip: int, owner: Any) -> tuple[inspect.Parameter, ...]:
    if func is object.__init__:
        return ()
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: keep raw annotations
        hints = {}
    params = list(inspect.signature(func, eval_str=False).parameters.values())
    if len(params) < skip:
        raise RegistrationError(f"{owner!r} must take the message as its first parameter")
    rest = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params[skip:]]
    for p in rest:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise RegistrationError(f"{owner!r}: *args/**kwargs cannot be injected ({p.name})")
    return tuple(rest)
