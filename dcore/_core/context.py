"""``PipelineContext``: the data one pipeline run carries, and how it crosses processes.

A context is a Pydantic v2 model. Fields annotated ``Runtime[T]`` hold request-scoped
objects (FastAPI's ``BackgroundTasks``, a DB session) that are never serialized and are
``None`` on a worker; a field typed plainly as ``BackgroundTasks`` is treated the same.
Everything else travels in a versioned JSON envelope
``{"type": "pkg.mod:Class", "version": "1.0", "data": {...}}``; only registered
subclasses (every subclass registers itself) can be rebuilt from one, and
``@migration`` class methods upgrade old payloads so jobs in flight survive a deploy.

Envelope data with a key the current class does not know (after its migrations ran) is
malformed: it is what a field renamed or removed without a version bump leaves behind,
and Pydantic would drop it silently. A context opts out by setting
``model_config = ConfigDict(extra="ignore")`` (or ``"allow"``) itself; contexts built in
code keep Pydantic's default either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple, Self, TypeVar

from pydantic import AliasChoices, AliasPath, ConfigDict, Field, SkipValidation
from pydantic.fields import FieldInfo
from pydantic_core import to_json

from dcore._core.contextbase import ContextBase
from dcore._core.errorbus import ErrorBus, ErrorRecord
from dcore._core.hashing import stable_hash
from dcore._core.ids import new_job_id
from dcore._core.pipeline import Pipeline
from dcore.errors import ContextSerializationError, MessageError

__all__ = [
    "SHARD_COUNT",
    "ErrorRecord",
    "PipelineContext",
    "Runtime",
    "context_type",
    "context_type_name",
    "migration",
    "registered_context_types",
]

T = TypeVar("T")

#: Default shard space for ``shard_key``; dispatchers map shards onto queues.
SHARD_COUNT = 1024


class _RuntimeOnly:
    """Marker found in a field's metadata: never serialize, ``None`` when rebuilt."""

    def __repr__(self) -> str:
        return "RuntimeOnly"


RUNTIME_ONLY = _RuntimeOnly()

if TYPE_CHECKING:
    # what type checkers see: the value is None on a worker (and when not passed), so
    # declare ``session: Runtime[Session] = None`` to make it optional for them too
    Runtime = Annotated[T | None, RUNTIME_ONLY]
else:

    class Runtime:
        """``Runtime[T]``: a request-scoped field, excluded from every serialization."""

        def __class_getitem__(cls, item: Any) -> Any:
            return Annotated[SkipValidation[item], Field(default=None, exclude=True), RUNTIME_ONLY]


_CONTEXT_TYPES: dict[str, type[PipelineContext]] = {}


def context_type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def registered_context_types() -> dict[str, type[PipelineContext]]:
    return dict(_CONTEXT_TYPES)


def context_type(name: str) -> type[PipelineContext]:
    """Resolve a registered context class by ``pkg.mod:Class``; never imports anything."""
    try:
        return _CONTEXT_TYPES[name]
    except KeyError:
        raise MessageError(
            f"unknown context type {name!r}: no PipelineContext subclass of that name is "
            "imported on this worker; list its module in DCORE_IMPORTS so the worker "
            "imports it at start-up"
        ) from None


Migration = Callable[[type, dict[str, Any]], dict[str, Any]]


def migration(from_version: str, *, to: str | None = None) -> Callable[[Any], Any]:
    """Mark a classmethod that upgrades payload ``data`` from ``from_version``.

    ``to`` defaults to the class's current ``__version__``; chains of migrations are
    applied in order (1.0 → 1.1 → 2.0)."""

    def decorate(fn: Any) -> Any:
        target: Any = fn.__func__ if isinstance(fn, classmethod) else fn
        target.__dcore_migration__ = (from_version, to)
        return fn if isinstance(fn, classmethod) else classmethod(fn)

    return decorate


class PipelineContext(ContextBase):
    """Base for the data a pipeline carries. Subclass it; ``__version__`` tags payloads."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
        validate_assignment=False,
    )

    __version__: ClassVar[str] = "1.0"

    job_id: str = Field(default_factory=new_job_id)
    errors: list[ErrorRecord] = Field(default_factory=list)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A request-scoped object declared as a plain field (the seed's
        # ``background_tasks: BackgroundTasks``) is treated as ``Runtime[...]``: it must
        # never be shipped to a worker, and a worker must be able to rebuild the context.
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - mutated
        for name, annotation in list(annotations.items()):
            if _is_request_scoped(annotation):
                kind: Any = annotation if isinstance(annotation, type) else Any
                annotations[name] = Runtime[kind]  # type: ignore[misc]
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _CONTEXT_TYPES[context_type_name(cls)] = cls

    # -- derived -------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        """True once any error has been reported on this context."""
        return bool(self.errors)

    @property
    def shard_key(self) -> int:
        """Stable shard in ``range(SHARD_COUNT)``; override to shard by a business key,
        e.g. ``stable_hash(self.file_path) % SHARD_COUNT``."""
        return stable_hash(self.job_id) % SHARD_COUNT

    @property
    def error_bus(self) -> ErrorBus:
        """Report errors: recorded on this context and published on the ``errors`` topic."""
        return ErrorBus(self)

    # -- pipelines -----------------------------------------------------------------------
    def create_pipeline(self, core_fn: Callable[[Self], Any]) -> Pipeline[Self]:
        """A pipeline over this context whose last step is ``core_fn``."""
        return Pipeline(self, core_fn)

    # -- runtime-only fields -----------------------------------------------------------------
    @classmethod
    def runtime_fields(cls) -> list[str]:
        return [n for n, f in cls.model_fields.items() if _is_runtime(f)]

    # -- envelope ------------------------------------------------------------------------
    def to_envelope(self) -> dict[str, Any]:
        """``{"type", "version", "data"}`` with runtime-only fields left out.

        Raises ContextSerializationError naming the field that cannot be serialized."""
        try:
            data = self.model_dump(mode="json")
        except Exception as exc:
            raise ContextSerializationError(self._explain_serialization(exc)) from exc
        return {"type": context_type_name(type(self)), "version": self.__version__, "data": data}

    def _explain_serialization(self, exc: Exception) -> str:
        name = type(self).__name__
        for field_name in type(self).model_fields:
            try:
                self.model_dump(mode="json", include={field_name})
            except Exception:
                value = getattr(self, field_name, None)
                return (
                    f"{name}.{field_name} ({type(value).__name__}) cannot be serialized for "
                    f"a remote hand-off: {exc}. Annotate it `Runtime[...]` if it is "
                    "request-scoped, or give it a JSON-serializable type"
                )
        return f"{name} cannot be serialized for a remote hand-off: {exc}"

    @classmethod
    def from_envelope(cls, envelope: dict[str, Any]) -> PipelineContext:
        """Rebuild a context (of the registered type the envelope names), migrating old data.

        Raises MessageError for an unknown type, a missing migration, data keys the class
        does not know (after migrations) or invalid data. Runtime-only fields are never
        read from an envelope: they are ``None`` (their default) on a worker."""
        if not isinstance(envelope, dict) or not {"type", "version", "data"} <= envelope.keys():
            raise MessageError("context envelope must have 'type', 'version' and 'data'")
        target = context_type(str(envelope["type"]))
        if cls is not PipelineContext and not issubclass(target, cls):
            raise MessageError(f"envelope holds a {target.__name__}, not a {cls.__name__}")
        version = str(envelope["version"])
        data = target._check_keys(version, target._migrate(version, envelope["data"]))
        try:
            # JSON mode, so bytes come back from base64 exactly as they were sent
            return target.model_validate_json(to_json(data))
        except Exception as exc:
            raise MessageError(f"invalid {target.__name__} data: {exc}") from exc

    @classmethod
    def _check_keys(cls, version: str, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` without runtime-only fields (never read from a message); MessageError
        naming the keys the class does not know, unless it opted in to ignoring or
        keeping them (``extra="ignore"`` or ``"allow"`` set on the class: PipelineContext
        sets no ``extra``, so Pydantic's "ignore" default never counts as a choice)."""
        keys = _KEYS.get(cls) or _keys_of(cls)
        if keys.runtime and not keys.runtime.isdisjoint(data.keys()):
            data = {k: v for k, v in data.items() if k not in keys.runtime}
        if keys.checked and not keys.known.issuperset(data.keys()):
            unknown = sorted(str(k) for k in data.keys() - keys.known)
            raise MessageError(_unknown_keys_message(cls, version, unknown))
        return data

    @classmethod
    def _migrations(cls) -> dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]]:
        found: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                fn: Any = attr.__func__ if isinstance(attr, classmethod) else None
                mark = getattr(fn, "__dcore_migration__", None)
                if mark is not None:
                    source, target = mark
                    found[source] = (target or cls.__version__, getattr(cls, fn.__name__))
        return found

    @classmethod
    def _migrate(cls, version: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise MessageError(f"{cls.__name__} data must be a JSON object")
        if version == cls.__version__:  # the common case: no class walk needed
            return data
        migrations = cls._migrations()
        seen: set[str] = set()
        while version != cls.__version__:
            if version in seen or version not in migrations:
                raise MessageError(
                    f"{cls.__name__} payload has version {version!r} but the class is at "
                    f"{cls.__version__!r} and no @migration({version!r}) upgrades it: add a "
                    f"@migration({version!r}) classmethod to {cls.__name__} that maps "
                    f"{version} data to the current fields"
                )
            seen.add(version)
            source = version
            version, upgrade = migrations[source]
            try:
                data = upgrade(dict(data))
            except MessageError:
                raise
            except Exception as exc:  # it would fail the same way on every delivery
                raise MessageError(
                    f"{cls.__name__} migration from {source!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(data, dict):
                raise MessageError(
                    f"{cls.__name__} migration from {source!r} must return a dict of data"
                )
        return data


#: Types that only make sense inside one request; always runtime-only.
REQUEST_SCOPED_TYPES = {("starlette", "BackgroundTasks"), ("fastapi", "BackgroundTasks")}


# the base class carries a pipeline too (e.g. ``PipelineContext().create_pipeline(fn)``),
# so a worker must be able to rebuild it like any subclass
_CONTEXT_TYPES[context_type_name(PipelineContext)] = PipelineContext


def _is_request_scoped(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "BackgroundTasks"
    if isinstance(annotation, type):
        root = annotation.__module__.split(".", 1)[0]
        return (root, annotation.__name__) in REQUEST_SCOPED_TYPES
    return False


def _is_runtime(info: FieldInfo) -> bool:
    return any(m is RUNTIME_ONLY for m in info.metadata)


class _Keys(NamedTuple):
    """What ``_check_keys`` needs of a class, worked out once (it runs per message)."""

    known: frozenset[str]  # field names and aliases, computed fields
    runtime: frozenset[str]  # runtime-only fields: never read from a message
    checked: bool  # False when the class set extra="ignore" or "allow"


_KEYS: dict[type[PipelineContext], _Keys] = {}


def _keys_of(cls: type[PipelineContext]) -> _Keys:
    """Every key envelope data of ``cls`` may hold: field names and their aliases, and
    computed fields (``model_dump`` writes them, validation ignores them)."""
    fields = cls.model_fields
    known = set(fields) | set(cls.model_computed_fields)
    for info in fields.values():
        for alias in (info.alias, info.validation_alias):
            known.update(_alias_names(alias))
    checked = cls.model_config.get("extra") not in ("ignore", "allow")
    keys = _Keys(frozenset(known), frozenset(cls.runtime_fields()), checked)
    _KEYS[cls] = keys
    return keys


def _alias_names(alias: str | AliasPath | AliasChoices | None) -> list[str]:
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    if isinstance(alias, AliasChoices):
        return [name for choice in alias.choices for name in _alias_names(choice)]
    return []


def _unknown_keys_message(cls: type[PipelineContext], version: str, unknown: list[str]) -> str:
    shown = ", ".join(repr(k[:60]) for k in unknown[:5])
    if len(unknown) > 5:
        shown += f" and {len(unknown) - 5} more"
    name = cls.__name__
    if version == cls.__version__:
        cause = (
            f"a field was renamed or removed without a migration: bump {name}.__version__ "
            f"and add @migration({version!r}) to {name} to map or drop them"
        )
    else:
        cause = (
            f"the migrations from version {version!r} leave them: make @migration"
            f"({version!r}) (or a later step) map or drop them"
        )
    return (
        f"{name} data has keys it does not know: {shown}; {cause}, or set "
        f"model_config = ConfigDict(extra='ignore') on {name} to drop unknown keys on purpose"
    )
