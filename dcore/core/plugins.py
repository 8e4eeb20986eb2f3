"""Plugin discovery: interfaces, the registry, and registration.

Discovery only. Building instances lives in :mod:`dcore.core.factory`, running them in
:mod:`dcore.core.pipeline`; the runner never knows how a plugin was found.

A :class:`PluginRegistry` is an ordinary object. The default one is global for
convenience (``@register_plugin`` writes there, built-ins and the ``dcore.plugins``
entry points are loaded into it); :func:`use_registry` scopes another one, which is how
tests get an isolated copy.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from dcore.errors import DuplicatePluginError, PluginError, PluginNotFoundError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRegistry",
    "current_registry",
    "default_registry",
    "define_interface",
    "interface_by_name",
    "interfaces_of",
    "is_interface",
    "register_plugin",
    "use_registry",
]

ENTRY_POINT_GROUP = "dcore.plugins"
_log = logging.getLogger("dcore.plugins")

T = TypeVar("T", bound=type)

_INTERFACES: dict[str, type] = {}


def define_interface(cls: T) -> T:
    """Mark an abstract class as a plugin interface that plugins register under.

    Interfaces are code, not registrations, so they live in one process-wide table keyed
    by class name (messages name the interface, e.g. ``"Execute"``).
    """
    existing = _INTERFACES.get(cls.__name__)
    if existing is not None and existing is not cls and existing.__module__ != cls.__module__:
        raise PluginError(
            f"interface name {cls.__name__!r} is taken by {existing.__module__}."
            f"{existing.__qualname__}; give {cls.__module__}.{cls.__qualname__} another name"
        )
    cls.__dcore_interface__ = cls  # type: ignore[attr-defined]
    _INTERFACES[cls.__name__] = cls
    return cls


def is_interface(cls: object) -> bool:
    """True for a class that :func:`define_interface` marked (not for its subclasses)."""
    return isinstance(cls, type) and vars(cls).get("__dcore_interface__") is cls


def interfaces_of(cls: type) -> list[type]:
    """The interfaces a plugin class implements, nearest first."""
    return [k for k in cls.__mro__ if is_interface(k)]


def interface_by_name(name: str) -> type:
    """Resolve an interface named in a message; raises ``PluginError`` for an unknown one."""
    try:
        return _INTERFACES[name]
    except KeyError:
        known = ", ".join(sorted(_INTERFACES)) or "(none)"
        raise PluginError(f"no plugin interface named {name!r}; known: {known}") from None


class PluginRegistry:
    """Plugin classes by interface and name. Thread-safe; copy() gives an isolated twin."""

    def __init__(self) -> None:
        self._plugins: dict[type, dict[str, type]] = {}
        self._lock = threading.RLock()
        #: Grows with every change, so caches of built pipelines can tell they are stale.
        self.generation = 0

    def register(self, name: str, cls: type, *, replace: bool = False) -> type:
        """Register ``cls`` under ``name`` for every interface it implements."""
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugin name must be a non-empty string, got {name!r}")
        implemented = interfaces_of(cls)
        if not implemented:
            raise PluginError(
                f"{cls.__qualname__} implements no plugin interface; subclass one "
                "(e.g. Execute, Dispatch, StorageInterface) before registering it"
            )
        with self._lock:
            for interface in implemented:
                table = self._plugins.setdefault(interface, {})
                current = table.get(name)
                if current is not None and current is not cls and not replace:
                    raise DuplicatePluginError(
                        f"{interface.__name__} plugin {name!r} is already registered as "
                        f"{current.__module__}.{current.__qualname__}; pass replace=True "
                        "to override it"
                    )
            for interface in implemented:
                self._plugins[interface][name] = cls
            self.generation += 1
        return cls

    def unregister(self, interface: type, name: str) -> None:
        with self._lock:
            self._plugins.get(interface, {}).pop(name, None)
            self.generation += 1

    def get(self, interface: type, name: str) -> type:
        """The class registered as ``name`` for ``interface``; raises PluginNotFoundError."""
        with self._lock:
            table = self._plugins.get(interface, {})
            try:
                return table[name]
            except KeyError:
                raise PluginNotFoundError(interface.__name__, name, table) from None

    def names(self, interface: type) -> list[str]:
        with self._lock:
            return sorted(self._plugins.get(interface, {}))

    def __contains__(self, item: tuple[type, str]) -> bool:
        interface, name = item
        with self._lock:
            return name in self._plugins.get(interface, {})

    def copy(self) -> PluginRegistry:
        twin = PluginRegistry()
        with self._lock:
            twin._plugins = {k: dict(v) for k, v in self._plugins.items()}
        return twin

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Load third-party plugins: each entry point is a module (registering on import)
        or a callable taking this registry. A broken one warns and is skipped."""
        loaded: list[str] = []
        for ep in importlib.metadata.entry_points(group=group):
            try:
                with use_registry(self):
                    obj = ep.load()
                    if callable(obj) and not isinstance(obj, type):
                        obj(self)
            except Exception as exc:  # a broken third-party package must not break dcore
                warnings.warn(
                    f"dcore plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc!r}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            loaded.append(ep.name)
        return loaded

    def __repr__(self) -> str:
        with self._lock:
            counts = {i.__name__: len(t) for i, t in self._plugins.items()}
        return f"PluginRegistry({counts})"


_DEFAULT = PluginRegistry()
_stack: list[PluginRegistry] = []
_stack_lock = threading.Lock()


def default_registry() -> PluginRegistry:
    """The process-wide registry that built-ins and entry points are loaded into."""
    return _DEFAULT


def current_registry() -> PluginRegistry:
    """The registry scoped by the innermost :func:`use_registry`, else the default one."""
    with _stack_lock:
        return _stack[-1] if _stack else _DEFAULT


@contextmanager
def use_registry(registry: PluginRegistry) -> Iterator[PluginRegistry]:
    """Make ``registry`` current (for every thread) until the block ends."""
    with _stack_lock:
        _stack.append(registry)
    try:
        yield registry
    finally:
        with _stack_lock:
            _stack.remove(registry)


def register_plugin(
    name: str, *, replace: bool = False, registry: PluginRegistry | None = None
) -> Callable[[T], T]:
    """Class decorator: register the class as plugin ``name`` in the current registry."""

    def decorate(cls: T) -> T:
        (registry or current_registry()).register(name, cls, replace=replace)
        return cls

    return decorate

