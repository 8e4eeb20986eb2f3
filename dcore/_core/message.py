"""``JobMessage``: the serializable form of "the rest of this pipeline, for this context".

::

    {"dcore": 1, "job_id", "attempt", "spec": [{"interface", "plugin", "options"}...],
     "resume_at", "core_fn": "pkg.mod:func",
     "context": {"type": "pkg.mod:Class", "version", "data"},
     "trace": {"traceparent": ...}, "shard"}

A worker never imports or walks what a message names: context types come from the
registered subclasses and ``core_fn`` from the registered core functions (by name).

A message is untrusted input. :meth:`JobMessage.parse` refuses one larger than
``DCORE_MESSAGE_MAX_BYTES`` or nested deeper than ``DCORE_MESSAGE_MAX_DEPTH`` (JSON
parsing itself stops at 200 levels), and every way parsing can fail, including
``RecursionError`` and ``MemoryError``, becomes a :class:`MessageError`.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from dcore._plugins import registry as plugins
from dcore._plugins.reprs import short_repr
from dcore.errors import ContextSerializationError, MessageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "ContextEnvelope",
    "JobMessage",
    "StageSpec",
    "TracePropagator",
    "core_function_name",
    "ensure_imports",
    "resolve_core_function",
    "set_trace_propagator",
    "short_repr",
    "trace_propagator",
]

#: Defaults of ``DCORE_MESSAGE_MAX_BYTES`` and ``DCORE_MESSAGE_MAX_DEPTH``.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_DEPTH = 32
#: Failures of parsing hostile input that are not ValueErrors.
_PARSE_FAILURES = (ValueError, TypeError, RecursionError, MemoryError)
_JOB_ID = re.compile(r'"job_id"\s*:\s*"([A-Za-z0-9_.:-]{1,200})"')


class StageSpec(BaseModel):
    """One stage as data: interface name, plugin name, JSON options, retry policy."""

    model_config = ConfigDict(frozen=True)

    interface: str
    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)
    retry: dict[str, Any] | None = None

    def __repr__(self) -> str:
        """``StageSpec('Execute', 'storage_write', prefix='uploads/', retry={...})``."""
        args = [
            repr(self.interface),
            repr(self.plugin),
            *(f"{k}={short_repr(v)}" for k, v in self.options.items()),
        ]
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
    core_fn: str = Field(max_length=plugins.CORE_NAME_MAX)
    context: ContextEnvelope
    trace: dict[str, str] = Field(default_factory=dict)
    shard: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def parse(
        cls,
        raw: JobMessage | str | bytes | dict[str, Any],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> JobMessage:
        """A JobMessage from itself, its JSON or a dict; MessageError when malformed, too
        large (``max_bytes`` of JSON) or too deeply nested (``max_depth`` levels below a
        field that holds free-form data: context data, stage options, trace)."""
        if isinstance(raw, JobMessage):
            return raw
        text = isinstance(raw, str | bytes | bytearray)
        if text and len(raw) > max_bytes:
            raise MessageError(
                f"job message is {len(raw)} bytes, over the limit of {max_bytes} "
                "(DCORE_MESSAGE_MAX_BYTES)"
            )
        try:
            message = (
                cls.model_validate_json(raw)  # type: ignore[arg-type]
                if text
                else cls.model_validate(raw)
            )
        except ValidationError as exc:
            raise MessageError(f"malformed job message: {summarise(exc)}") from None
        except _PARSE_FAILURES as exc:
            raise MessageError(f"malformed job message: {type(exc).__name__}") from None
        message._check_depth(max_depth)
        return message

    def _check_depth(self, limit: int) -> None:
        free_form: list[tuple[str, Any]] = [("context.data", self.context.data)]
        free_form += [(f"spec[{i}].options", s.options) for i, s in enumerate(self.spec)]
        free_form += [(f"spec[{i}].retry", s.retry) for i, s in enumerate(self.spec)]
        for where, value in free_form:
            if nesting(value, limit) > limit:
                raise MessageError(
                    f"malformed job message: {where} is nested more than {limit} levels "
                    "deep (DCORE_MESSAGE_MAX_DEPTH)"
                )

    def with_attempt(self, attempt: int) -> JobMessage:
        return self.model_copy(update={"attempt": attempt})

    @staticmethod
    def peek_job_id(raw: Any) -> str | None:
        """Best-effort job id from a message too broken to parse (for the DLQ entry).
        Never raises, whatever ``raw`` holds."""
        try:
            data = from_json(raw) if isinstance(raw, str | bytes | bytearray) else raw
            job_id = data.get("job_id") if isinstance(data, dict) else None
        except _PARSE_FAILURES:  # too broken (or too deep) to parse: the first job_id seen
            found = _JOB_ID.search(raw[:4096] if isinstance(raw, str) else "")
            job_id = found.group(1) if found else None
        return job_id if isinstance(job_id, str) and len(job_id) <= 200 else None


def nesting(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and dicts (a scalar: 0), counted without
    recursion and only up to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def summarise(exc: ValidationError) -> str:
    """A validation error on one line: ``field: problem; ...`` (the first five)."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def core_function_name(fn: Callable[..., Any]) -> str:
    """The name ``fn`` is registered under, for a message; ContextSerializationError
    saying how to register it otherwise."""
    name = plugins.core_function_name(fn)
    if name is None:
        qualname = getattr(fn, "__qualname__", None) or repr(fn)
        raise ContextSerializationError(
            f"core_fn {qualname!r} is not a registered core function, so no worker may run "
            "it: decorate it with @dcore.core_function in a module the workers import "
            "(DCORE_IMPORTS). Workers run registered core functions only, by name"
        )
    return name


def ensure_imports(modules: list[str]) -> None:
    """Import the worker's allow-listed modules (``DCORE_IMPORTS``)."""
    for name in modules:
        if name not in sys.modules:
            importlib.import_module(name)


def resolve_core_function(name: str) -> Callable[..., Any]:
    """The core function registered as ``name``; MessageError naming the registration to
    add otherwise. The name is looked up, never imported or walked."""
    fn = plugins.registered_core_function(name)
    if fn is None:
        raise MessageError(
            f"core_fn {name!r:.120} is not a registered core function on this worker: "
            "register it with @dcore.core_function in a module listed in DCORE_IMPORTS"
        )
    return fn


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
