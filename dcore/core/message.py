"""``JobMessage``: the serializable form of "the rest of this pipeline, for this context".

::

    {"dcore": 1, "job_id", "attempt", "spec": [{"interface", "plugin", "options"}...],
     "resume_at", "core_fn": "pkg.mod:func",
     "context": {"type": "pkg.mod:Class", "version", "data"},
     "trace": {"traceparent": ...}, "shard"}

A worker never imports what a message names: context types come from the registered
subclasses and ``core_fn`` from modules already imported (``DCORE_IMPORTS``).
"""

from __future__ import annotations

import importlib
import json
import re
import reprlib
import sys
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcore.errors import ContextSerializationError, MessageError

__all__ = [
    "ContextEnvelope",
    "JobMessage",
    "StageSpec",
    "TracePropagator",
    "callable_path",
    "ensure_imports",
    "imported_attr",
    "resolve_callable",
    "set_trace_propagator",
    "short_repr",
    "trace_propagator",
]


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


class _ShortRepr(reprlib.Repr):
    """reprlib's cut-down repr, minus memory addresses: ``<app.Gateway object at
    0x7f...>`` is shown as ``<app.Gateway>``, the same in every run."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 40
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 6
        self.maxlevel = 1  # a nested container shows as [...]

    def repr_instance(self, obj: Any, level: int) -> str:
        text = _ADDRESS.sub("", repr(obj))
        if len(text) <= self.maxother:
            return text
        head = (self.maxother - 3) // 2
        return text[:head] + "..." + text[len(text) - (self.maxother - 3 - head):]


_REPR = _ShortRepr()


def short_repr(value: Any) -> str:
    """A short, deterministic repr for option values in reprs (Hypothesis reports print
    them): long strings and containers are cut with ``...``; a class or function shows
    as ``module:qualname``, never ``<function f at 0x...>``."""
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    return _REPR.repr(value)


class StageSpec(BaseModel):
    """One stage as data: interface name, plugin name, JSON options, retry policy."""

    model_config = ConfigDict(frozen=True)

    interface: str
    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)
    retry: dict[str, Any] | None = None

    def __repr__(self) -> str:
        """``StageSpec('Execute', 'storage_write', prefix='uploads/', retry={...})``."""
        args = [repr(self.interface), repr(self.plugin),
                *(f"{k}={short_repr(v)}" for k, v in self.options.items())]
        if self.retry is not None:
            args.append(f"retry={short_repr(self.retry)}")
        return f"StageSpec({', '.join(args)})"


class ContextEnvelope(BaseModel):
    type: str
    version: str
    data: dict[str, Any]


class JobMessage(BaseModel):
    """Everything a worker needs to run the remainder of a pipeline."""

    dcore: Literal[1] = 1
    job_id: str
    attempt: int = Field(default=1, ge=1)
    spec: list[StageSpec]
    resume_at: int = Field(ge=0)
    core_fn: str
    context: ContextEnvelope
    trace: dict[str, str] = Field(default_factory=dict)
    shard: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def parse(cls, raw: JobMessage | str | bytes | dict[str, Any]) -> JobMessage:
        """A JobMessage from itself, its JSON or a dict; MessageError when malformed."""
        if isinstance(raw, JobMessage):
            return raw
        try:
            if isinstance(raw, str | bytes | bytearray):
                return cls.model_validate_json(raw)
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise MessageError(f"malformed job message: {summarise(exc)}") from None

    def with_attempt(self, attempt: int) -> JobMessage:
        return self.model_copy(update={"attempt": attempt})

    @staticmethod
    def peek_job_id(raw: Any) -> str | None:
        """Best-effort job id from a message too broken to parse (for the DLQ entry)."""
        try:
            data = json.loads(raw) if isinstance(raw, str | bytes | bytearray) else raw
            job_id = data.get("job_id") if isinstance(data, dict) else None
            return job_id if isinstance(job_id, str) else None
        except (ValueError, TypeError):
            return None


def summarise(exc: ValidationError) -> str:
    """A validation error on one line: ``field: problem; ...`` (the first five)."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def imported_attr(module_name: str, qualname: str) -> Any:
    """The object named ``qualname`` in module ``module_name`` if that module is already
    imported, else None. Never imports: what a message names cannot run code."""
    target: Any = sys.modules.get(module_name)
    for part in qualname.split(".") if qualname else ():
        if target is None:
            return None
        target = getattr(target, part, None)
    return target


def callable_path(fn: Callable[..., Any]) -> str:
    """``pkg.mod:func`` for a module-level function; ContextSerializationError otherwise."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    fix = (
        "define it at the top level of an importable module so a worker can import it "
        "as 'pkg.mod:func'"
    )
    if not module or not getattr(fn, "__qualname__", None) or "<locals>" in qualname:
        raise ContextSerializationError(f"core_fn {qualname!r} is not importable: {fix}")
    if module == "__main__":
        raise ContextSerializationError(
            f"core_fn {qualname!r} lives in __main__, which a worker cannot import: {fix}"
        )
    if imported_attr(module, qualname) is not fn:
        raise ContextSerializationError(
            f"core_fn {module}:{qualname} does not resolve back to the same object: {fix}"
        )
    return f"{module}:{qualname}"


def ensure_imports(modules: list[str]) -> None:
    """Import the worker's allow-listed modules (``DCORE_IMPORTS``)."""
    for name in modules:
        if name not in sys.modules:
            importlib.import_module(name)


def resolve_callable(path: str) -> Callable[..., Any]:
    """``pkg.mod:func`` from an already-imported module; MessageError otherwise."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise MessageError(f"core_fn {path!r} is not of the form 'pkg.mod:func'")
    if module_name not in sys.modules:
        raise MessageError(
            f"core_fn {path!r}: module {module_name!r} is not imported on this worker; "
            "add it to DCORE_IMPORTS"
        )
    target = imported_attr(module_name, qualname)
    if not callable(target):
        raise MessageError(f"core_fn {path!r} does not name a callable")
    return target  # type: ignore[no-any-return]


class TracePropagator:
    """How trace context crosses a hand-off. The default carries nothing; the tracing
    stage installs an OpenTelemetry one."""

    def inject(self) -> dict[str, str]:
        return {}

    def extract(self, carrier: dict[str, str]) -> Any:
        """A context manager that makes ``carrier`` the current trace context."""
        from contextlib import nullcontext

        return nullcontext()


_propagator = TracePropagator()


def set_trace_propagator(propagator: TracePropagator) -> None:
    global _propagator
    _propagator = propagator


def trace_propagator() -> TracePropagator:
    return _propagator
