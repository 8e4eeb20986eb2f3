"""The worker's entry point: run the remainder of a pipeline from a ``JobMessage``.

A malformed message (bad JSON, unknown context type, missing migration, unknown plugin,
core function not imported) cannot succeed on any retry: the job is marked DEAD and the
raw message goes to the dead-letter queue with the reason, then ``MessageError`` is
raised for the caller to log. The worker lives on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from pydantic import TypeAdapter

from dcore.core.context import PipelineContext
from dcore.core.environment import Environment, current_environment
from dcore.core.lifecycle import dead_letter
from dcore.core.message import (
    JobMessage,
    StageSpec,
    ensure_imports,
    resolve_core_function,
    trace_propagator,
)
from dcore.core.pipeline import Pipeline
from dcore.core.plugins import core_generation
from dcore.errors import MessageError, ServiceUnavailableError

__all__ = ["load_message", "run_message"]


def load_message(
    raw: JobMessage | str | bytes, environment: Environment | None = None
) -> tuple[JobMessage, PipelineContext, Pipeline[Any]]:
    """Parse and resolve a message without running it; MessageError if it cannot run.

    Whatever goes wrong before the job starts (a plugin constructor that raises on the
    message's options, say) is a MessageError naming it: it would fail the same way on
    every delivery. Only an unreachable service is left as it is, to be retried."""
    env = environment or current_environment()
    try:
        return _load(raw, env)
    except (MessageError, ServiceUnavailableError):
        raise
    except Exception as exc:
        raise MessageError(f"the job cannot be loaded: {type(exc).__name__}: {exc}") from exc


def _load(
    raw: JobMessage | str | bytes, env: Environment
) -> tuple[JobMessage, PipelineContext, Pipeline[Any]]:
    ensure_imports(env.settings.imports)
    settings = env.settings
    message = JobMessage.parse(
        raw, max_bytes=settings.message_max_bytes, max_depth=settings.message_max_depth
    )
    context = PipelineContext.from_envelope(message.context.model_dump())
    if context.job_id != message.job_id:
        raise MessageError(
            f"message job_id {message.job_id!r} differs from its context's {context.job_id!r}"
        )
    pipeline = _pipelines(env).get(message)
    if message.resume_at > len(message.spec):
        raise MessageError(
            f"resume_at={message.resume_at} is past the end of a {len(message.spec)}-stage spec"
        )
    return message, context, pipeline


_SPEC = TypeAdapter(list[StageSpec])


class PipelineCache:
    """Pipelines rebuilt from messages, by spec and core function, most recent kept.

    A worker sees the same few pipelines over and over; building one validates every
    stage's options and constructs its plugins, which is most of a short job's cost. A
    built pipeline is frozen and runs any number of contexts, so it can be shared. A
    change to the plugin registry (a plugin replaced) or to the core functions makes
    older entries unreachable."""

    def __init__(self, env: Environment, size: int = 256) -> None:
        self._env = env
        self._size = size
        self._cache: OrderedDict[tuple[int, int, int, str, bytes], Pipeline[Any]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, message: JobMessage) -> Pipeline[Any]:
        registry = self._env.registry
        spec = _SPEC.dump_json(message.spec)
        key = (id(registry), registry.generation, core_generation.value, message.core_fn, spec)
        with self._lock:
            pipeline = self._cache.get(key)
            if pipeline is not None:
                self._cache.move_to_end(key)
                return pipeline
        core_fn = resolve_core_function(message.core_fn)
        pipeline = Pipeline.from_spec(message.spec, core_fn, environment=self._env)
        with self._lock:
            self._cache[key] = pipeline
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return pipeline


def _pipelines(env: Environment) -> PipelineCache:
    return env.resource("dcore.pipeline_cache", lambda: PipelineCache(env))


def run_message(
    raw: JobMessage | str | bytes,
    *,
    environment: Environment | None = None,
    final: bool = True,
) -> Any:
    """Run a message's remainder as its ``attempt``; returns core_fn's value.

    ``final`` says no further delivery will follow a failure (then the job goes DEAD and
    to the DLQ); a dispatcher that will retry passes False."""
    env = environment or current_environment()
    try:
        message, context, pipeline = load_message(raw, env)
    except MessageError as exc:
        job_id = JobMessage.peek_job_id(raw.to_json() if isinstance(raw, JobMessage) else raw)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(
            raw.to_json() if isinstance(raw, JobMessage) else raw
        )
        dead_letter(env, job_id or "unknown", error=f"MessageError: {exc}", message=text)
        raise
    continuation = pipeline.continuation(message.resume_at)
    with trace_propagator().extract(message.trace):
        # the dead letter must hold the message as delivered, never one rebuilt from the
        # context the failed run has changed; serialized only if it is needed
        raw_json = raw if isinstance(raw, str) else message.to_json
        return continuation.run(context, attempt=message.attempt, final=final, message=raw_json)
