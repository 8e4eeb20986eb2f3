"""The worker's entry point: run the remainder of a pipeline from a ``JobMessage``.

A malformed message (bad JSON, too large or deep, unknown context type, missing
migration, unknown plugin, unregistered core function) cannot succeed on any retry: the
job is marked DEAD and the raw message goes to the dead-letter queue with the reason
(once, however often the same bytes are delivered). The worker lives on.

:func:`deliver_message` is what an engine calls (it returns what to do next);
:func:`run_message` runs a message once and returns its value or raises.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from pydantic import TypeAdapter

from dcore._core.context import PipelineContext
from dcore._core.delivery import Action, Outcome, StoreUnreachable, after_claim
from dcore._core.environment import Environment, current_environment
from dcore._core.lifecycle import Delivered, dead_letter, describe_error, malformed_key
from dcore._core.message import (
    JobMessage,
    StageSpec,
    ensure_imports,
    resolve_core_function,
    trace_propagator,
)
from dcore._core.pipeline import Pipeline
from dcore._plugins.registry import core_generation
from dcore.errors import LeaseLostError, MessageError, ServiceUnavailableError

__all__ = ["deliver_message", "load_message", "run_message"]

_log = logging.getLogger("dcore.runtime")


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
    pipeline.continuation(message.resume_at)  # builds its plugins: a refusal is raised here
    return message, context, pipeline


_SPEC = TypeAdapter(list[StageSpec])


class PipelineCache:
    """Pipelines rebuilt from messages, by spec and core function, most recent kept.

    A worker sees the same few pipelines over and over; checking a message's stages
    (plugin names, options) is most of the cost of rebuilding one, so the checked
    pipeline is kept and each delivery gets a copy: a delivery runs with plugin
    instances of its own (unless a plugin declares itself shareable), as a request
    does, while the compiled chain behind them is shared. A change to the plugin
    registry (a plugin replaced) or to the core functions makes older entries
    unreachable."""

    def __init__(self, env: Environment, size: int = 256) -> None:
        self._env = env
        self._size = size
        self._cache: OrderedDict[tuple[int, int, int, str, bytes], Pipeline[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, message: JobMessage) -> Pipeline[Any]:
        registry = self._env.registry
        spec = _SPEC.dump_json(message.spec)
        key = (id(registry), registry.generation, core_generation.value, message.core_fn, spec)
        with self._lock:
            pipeline = self._cache.get(key)
            if pipeline is not None:
                self._cache.move_to_end(key)
                return pipeline.copy()
        core_fn = resolve_core_function(message.core_fn)
        pipeline = Pipeline.from_spec(message.spec, core_fn, environment=self._env)
        with self._lock:
            self._cache[key] = pipeline
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return pipeline.copy()


def _pipelines(env: Environment) -> PipelineCache:
    return env.resource("dcore.pipeline_cache", lambda: PipelineCache(env))


def deliver_message(
    raw: JobMessage | str | bytes,
    *,
    environment: Environment | None = None,
    final: bool = False,
) -> Delivered:
    """One delivery of a job message on a worker: load it, then claim, run and record
    its attempt (:func:`dcore._core.lifecycle.deliver`); the report says what the engine
    does next. A malformed message is dead-lettered here, once for the same bytes, and
    its report is DEAD with the MessageError as its error."""
    env = environment or current_environment()
    try:
        message, context, pipeline = load_message(raw, env)
    except MessageError as exc:
        return _malformed(env, raw, exc)
    except ServiceUnavailableError as exc:
        return Delivered(after_claim(1, StoreUnreachable(describe_error(exc))))
    continuation = pipeline.continuation(message.resume_at)
    with trace_propagator().extract(message.trace):
        # the dead letter must hold the message as delivered, never one rebuilt from the
        # context the failed run has changed; serialized only if it is needed
        raw_json = raw if isinstance(raw, str) else message.to_json
        return continuation.deliver(context, attempt=message.attempt, final=final, message=raw_json)


def _malformed(env: Environment, raw: JobMessage | str | bytes, exc: MessageError) -> Delivered:
    if isinstance(raw, JobMessage):
        text = raw.to_json()
    else:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    job_id = JobMessage.peek_job_id(text) or "unknown"
    reason = f"MessageError: {exc}"
    _log.error("job %s: malformed message dead-lettered: %s", job_id, exc)
    try:
        dead_letter(env, job_id, error=reason, message=text, key=malformed_key(text))
    except ServiceUnavailableError as down:
        return Delivered(after_claim(1, StoreUnreachable(describe_error(down))))
    except LeaseLostError:  # a malformed copy of a job another delivery is running
        return Delivered(Outcome(Action.SKIP, 1, reason=reason), error=exc)
    return Delivered(Outcome(Action.DEAD, 1, reason=reason), error=exc)


def run_message(
    raw: JobMessage | str | bytes,
    *,
    environment: Environment | None = None,
    final: bool = True,
) -> Any:
    """Run a message's remainder as its ``attempt``; returns core_fn's value and raises
    the attempt's failure (a malformed message: MessageError, after dead-lettering it).

    ``final`` says no further delivery will follow a failure (then the job goes DEAD and
    to the DLQ); a dispatcher that will retry passes False."""
    env = environment or current_environment()
    delivered = deliver_message(raw, environment=env, final=final)
    job_id = raw.job_id if isinstance(raw, JobMessage) else JobMessage.peek_job_id(raw)
    return delivered.value(job_id or "unknown")
