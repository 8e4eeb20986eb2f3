"""Building plugin instances: options checked against the constructor, services injected.

A constructor parameter annotated with a service interface (``storage:
StorageInterface``) is filled from the active Environment (one annotated
``Environment`` gets the environment itself); every other parameter comes
from the options, validated by a Pydantic model derived once per class from the
signature. Unknown, missing or ill-typed options raise ``PluginOptionsError`` naming the
plugin, the option and what it accepts.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
import threading
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from dcore._core.environment import Environment, current_environment
from dcore._plugins.interfaces import constructor
from dcore._plugins.registry import PluginRegistry
from dcore.errors import PluginError, PluginOptionsError

__all__ = ["PluginFactory", "immutable_values", "plugin_signature", "rejected"]

#: Option values whose validation result can be cached and shared: immutable scalars.
#: The type is part of the cache key, so ``1``, ``1.0`` and ``True`` never collide.
_ATOMIC = (str, int, float, bool, bytes, type(None))
_CACHE_LIMIT = 256


def _cache_key(options: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A key for options made only of immutable scalars, else None (not cached)."""
    key = []
    for name, value in options.items():
        kind = type(value)
        if kind not in _ATOMIC:
            return None
        key.append((name, kind, value))
    key.sort(key=lambda item: item[0])
    return tuple(key)


def _immutable(value: Any) -> bool:
    return type(value) in _ATOMIC or isinstance(value, enum.Enum)


def immutable_values(values: Mapping[str, Any]) -> bool:
    """True when every value is an immutable scalar: validated options that any number
    of instances may be built from without sharing anything they could change."""
    return all(_immutable(v) for v in values.values())


def _refuse_unresolved_services(cls: type, params: list[inspect.Parameter], exc: Exception) -> None:
    """PluginError for a service parameter whose annotation cannot be resolved (a name
    imported only under TYPE_CHECKING): it would silently become a required option."""
    from dcore import services

    injected = ["Environment"] + [
        name for name in services.__all__ if getattr(getattr(services, name), "service_name", "")
    ]
    pattern = re.compile(r"\b(" + "|".join(injected) + r")\b")
    for p in params:
        annotation = p.annotation if isinstance(p.annotation, str) else ""
        found = pattern.search(annotation)
        if found:
            raise PluginError(
                f"{cls.__qualname__}.__init__ parameter {p.name!r} is annotated "
                f"{annotation!r}, which cannot be resolved ({type(exc).__name__}: {exc}); "
                f"services are injected by type, so import {found.group(1)} at module "
                "level, not only under TYPE_CHECKING"
            ) from exc


class _Signature:
    """What a plugin class's constructor wants: injected services and an options model."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.services: dict[str, type] = {}
        fields: dict[str, Any] = {}
        init = _init_of(cls)
        if init is object.__init__:
            params: list[inspect.Parameter] = []
            hints: dict[str, Any] = {}
        else:
            params = list(inspect.signature(init).parameters.values())[1:]
            try:
                hints = typing.get_type_hints(init)
            except Exception as exc:  # options then take any value; services must resolve
                _refuse_unresolved_services(cls, params, exc)
                hints = {}
        self.accepts_any = False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                self.accepts_any = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            hint = hints.get(p.name, Any)
            if hint is Environment or (
                isinstance(hint, type) and bool(getattr(hint, "service_name", ""))
            ):
                self.services[p.name] = hint
                continue
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (hint, default)
        self.model: type[BaseModel] = create_model(
            f"{cls.__name__}Options",
            __config__=ConfigDict(
                extra="allow" if self.accepts_any else "forbid", arbitrary_types_allowed=True
            ),
            **fields,
        )
        # validated options by _cache_key: building the same stage per request then costs
        # a dict lookup instead of a pydantic validation
        self._validated: dict[tuple[Any, ...], dict[str, Any]] = {}

    def validate(self, plugin: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options as the constructor gets them (a fresh dict the caller may change)."""
        key = _cache_key(options)
        if key is not None:
            cached = self._validated.get(key)
            if cached is not None:
                return dict(cached)
        try:
            model = self.model.model_validate(dict(options))
        except ValidationError as exc:
            raise PluginOptionsError(self._explain(plugin, exc)) from None
        values = {k: getattr(model, k) for k in type(model).model_fields}
        values.update(model.model_extra or {})
        if key is not None and len(self._validated) < _CACHE_LIMIT and immutable_values(values):
            self._validated[key] = dict(values)
        return values

    def _explain(self, plugin: str, exc: ValidationError) -> str:
        accepted = (
            ", ".join(
                f"{n}{'' if f.is_required() else '?'}" for n, f in self.model.model_fields.items()
            )
            or "(none)"
        )
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "options"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown option {where!r}")
            elif err["type"] == "missing":
                problems.append(f"missing required option {where!r}")
            else:
                problems.append(f"option {where!r}={err.get('input')!r}: {err['msg']}")
        return (
            f"bad options for plugin {plugin!r} ({self.cls.__qualname__}): "
            f"{'; '.join(problems)}. It accepts: {accepted}"
        )


_signatures: dict[type, _Signature] = {}
_sig_lock = threading.Lock()


def plugin_signature(cls: type) -> _Signature:
    """The (cached) constructor signature of a plugin class."""
    sig = _signatures.get(cls)
    if sig is not None:
        return sig
    with _sig_lock:
        sig = _signatures.get(cls)
        if sig is None:
            sig = _signatures[cls] = _Signature(cls)
        return sig


class PluginFactory:
    """Creates plugin instances from a registry, injecting services from an environment."""

    def __init__(
        self, registry: PluginRegistry | None = None, environment: Environment | None = None
    ) -> None:
        self._registry = registry
        self._environment = environment

    @property
    def registry(self) -> PluginRegistry:
        return self._registry or self.environment.registry

    @property
    def environment(self) -> Environment:
        return self._environment or current_environment()

    def resolve(self, interface: type, name: str) -> type:
        return self.registry.get(interface, name)

    def validate(self, interface: type, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``options`` for plugin ``name`` without building it."""
        return plugin_signature(self.resolve(interface, name)).validate(name, options)

    def create(self, interface: type, name: str, /, **options: Any) -> Any:
        """Build plugin ``name`` of ``interface`` with ``options``."""
        cls = self.resolve(interface, name)
        return self.instantiate(cls, name, plugin_signature(cls).validate(name, options))

    def instantiate(self, cls: type, name: str, options: Mapping[str, Any]) -> Any:
        """Build ``cls`` from options already validated for it, injecting services."""
        build = self.recipe(cls, options)
        try:
            return build()
        except PluginOptionsError:
            raise
        except (TypeError, ValueError) as exc:
            raise rejected(cls, name, exc) from exc

    def recipe(self, cls: type, options: Mapping[str, Any]) -> Callable[[], Any]:
        """How to build ``cls`` from options already validated for it, with the services
        injected now, as a call without arguments: a compiled pipeline builds one instance
        per request this way. Its arguments are shared by every instance built so; give
        only options that :func:`immutable_values` accepts if it is used more than once.
        Convert a TypeError or ValueError raised by the constructor with
        :func:`rejected`."""
        kwargs = dict(options)
        env = self.environment
        for param, service in plugin_signature(cls).services.items():
            kwargs[param] = env if service is Environment else env.service(service)
        construct = constructor(cls)
        args = _by_position(cls, construct, kwargs)
        if args is not None:
            return functools.partial(construct, cls, *args)
        return functools.partial(construct, cls, **kwargs)


def _init_of(cls: type) -> Any:
    """The ``__init__`` that building ``cls`` calls (``object.__init__`` at the least)."""
    return next(vars(k)["__init__"] for k in cls.__mro__ if "__init__" in vars(k))


def _by_position(
    cls: type, construct: Callable[..., Any], kwargs: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """``kwargs`` as positional arguments, when passing them so binds them exactly as by
    keyword: a plain class (type's own call, object's ``__new__``) whose Python
    ``__init__`` takes these names first, none of them positional-only. A call by
    position costs about a third less, and a pipeline makes one per stage per request."""
    new: object = cls.__new__
    init = _init_of(cls)
    if construct is not type.__call__ or new is not object.__new__:
        return None
    if type(init) is not types.FunctionType:
        return None
    code = init.__code__
    names = code.co_varnames[1 : code.co_argcount][: len(kwargs)]
    if code.co_posonlyargcount > 1 or len(names) != len(kwargs) or set(names) != kwargs.keys():
        return None
    return tuple(kwargs[name] for name in names)


def rejected(cls: type, name: str, exc: Exception) -> PluginOptionsError:
    """The error for a constructor that refused its options with ``exc``."""
    return PluginOptionsError(f"plugin {name!r} ({cls.__qualname__}) rejected its options: {exc}")
