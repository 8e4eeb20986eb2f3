"""Plugin discovery: interfaces, the registry, and registration.

Discovery only. Building instances lives in :mod:`dcore._core.factory`, running them in
:mod:`dcore._core.pipeline`; the runner never knows how a plugin was found.

A :class:`PluginRegistry` is an ordinary object. The default one is global for
convenience (``@register_plugin`` writes there, built-ins and the ``dcore.plugins``
entry points are loaded into it); :func:`use_registry` scopes another one, which is how
tests get an isolated copy.

**Core functions** a worker may run are registered by name too (``@core_function``,
like Celery's task registry), in one process-wide table: like interfaces and context
types they are code, not configuration. A message names a core function; a worker runs
it only if it was registered under that name, never by importing or walking attributes
of whatever the name says.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from dcore.errors import DuplicatePluginError, PluginError, PluginNotFoundError

__all__ = [
    "CORE_NAME_MAX",
    "ENTRY_POINT_GROUP",
    "PluginRegistry",
    "core_function",
    "core_function_name",
    "current_registry",
    "default_registry",
    "define_interface",
    "interface_by_name",
    "interfaces_of",
    "is_interface",
    "register_core_function",
    "register_plugin",
    "registered_core_function",
    "registered_core_functions",
    "use_registry",
]

ENTRY_POINT_GROUP = "dcore.plugins"
_log = logging.getLogger("dcore.plugins")

T = TypeVar("T", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

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
    # read without the lock (every pipeline run asks): indexing a list is atomic
    stack = _stack
    if stack:
        try:
            return stack[-1]
        except IndexError:  # popped since: none is scoped now
            pass
    return _DEFAULT


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


# -- core functions ---------------------------------------------------------------------
#: A core function's registered name: ``pkg.mod:func`` or a dotted name of your own.
_CORE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_.]*)?")
CORE_NAME_MAX = 200
_CORE: dict[str, Callable[..., Any]] = {}
_CORE_NAMES: dict[Callable[..., Any], str] = {}
_core_lock = threading.Lock()


class _CoreGeneration:
    """Grows with every core function registration, so caches keyed by a name can tell
    the name now means another function."""

    value = 0


core_generation = _CoreGeneration()


def _identity(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def default_core_name(fn: Callable[..., Any]) -> str:
    """``pkg.mod:func`` for a function defined at the top level of an importable module;
    PluginError saying to pass a name otherwise."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        where = "in __main__" if module == "__main__" else "not at a module's top level"
        raise PluginError(
            f"core function {qualname or fn!r} is {where}, so it has no stable default "
            "name: register it with an explicit one, e.g. @core_function('orders.finalize')"
        )
    return f"{module}:{qualname}"


def check_core_name(name: object) -> None:
    """PluginError unless ``name`` is a valid core function name."""
    if not isinstance(name, str) or len(name) > CORE_NAME_MAX or _CORE_NAME.fullmatch(name) is None:
        raise PluginError(
            f"core function name must be 'pkg.mod:func' or a dotted name of letters, digits "
            f"and underscores (at most {CORE_NAME_MAX} characters), got {name!r:.120}"
        )


def register_core_function(
    fn: Callable[..., Any], name: str | None = None, *, replace: bool = False
) -> str:
    """Register ``fn`` as a core function a worker may run; returns its name.

    The default name is ``pkg.mod:func``, which needs a module-level function; give
    ``name`` for anything else. A name taken by another function is an error unless
    ``replace=True`` (registering a reloaded module's function again is allowed)."""
    if not callable(fn):
        raise PluginError(f"a core function must be callable, got {fn!r:.120}")
    chosen = default_core_name(fn) if name is None else name
    check_core_name(chosen)
    with _core_lock:
        current = _CORE.get(chosen)
        if (current is not None and current is not fn and not replace
                and _identity(current) != _identity(fn)):  # fmt: skip
            raise DuplicatePluginError(
                f"core function name {chosen!r} is already registered for "
                f"{_identity(current)}; pass replace=True to override it"
            )
        if current is not None:
            _CORE_NAMES.pop(current, None)
        _CORE[chosen] = fn
        _CORE_NAMES[fn] = chosen
        core_generation.value += 1
    return chosen


def registered_core_function(name: str) -> Callable[..., Any] | None:
    """The core function registered as ``name``, or None. Looks the name up, nothing
    else: no import, no attribute walk."""
    with _core_lock:
        return _CORE.get(name)


def core_function_name(fn: Callable[..., Any]) -> str | None:
    """The name ``fn`` is registered under, or None."""
    with _core_lock:
        try:
            return _CORE_NAMES.get(fn)
        except TypeError:  # an unhashable callable cannot have been registered
            return None


def registered_core_functions() -> dict[str, Callable[..., Any]]:
    with _core_lock:
        return dict(_CORE)


@overload
def core_function(fn: F, /) -> F: ...


@overload
def core_function(name: str | None = None, /, *, replace: bool = False) -> Callable[[F], F]: ...


def core_function(target: Any = None, /, *, replace: bool = False) -> Any:
    """Register a core function a worker may run: ``@core_function`` (named
    ``pkg.mod:func``) or ``@core_function("orders.finalize")``.

    A pipeline handed to another process (Celery) names its core function in the job
    message; the worker runs only functions registered here, under that name. A core
    function run in-process (thread, FastAPI) needs no registration."""

    def decorate(fn: F, name: str | None = None) -> F:
        register_core_function(fn, name, replace=replace)
        return fn

    if callable(target):
        return decorate(target)
    return lambda fn: decorate(fn, target)
