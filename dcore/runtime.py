"""The worker's entry point: run the remainder of a pipeline from a ``JobMessage``.

A malformed message (bad JSON, unknown context type, missing migration, unknown plugin,
core function not imported) cannot succeed on any retry: the job is marked DEAD and the
raw message goes to the dead-letter queue with the reason, then ``MessageError`` is
raised for the caller to log. The worker lives on.
"""

from __future__ import annotations

from typing import Any

from dcore.core.context import PipelineContext
from dcore.core.environment import Environment, current_environment
from dcore.core.lifecycle import dead_letter
from dcore.core.message import JobMessage, ensure_imports, resolve_callable, trace_propagator
from dcore.core.pipeline import Pipeline
from dcore.errors import MessageError

__all__ = ["load_message", "run_message"]


def load_message(
    raw: JobMessage | str | bytes, environment: Environment | None = None
) -> tuple[JobMessage, PipelineContext, Pipeline[Any]]:
    """Parse and resolve a message without running it; MessageError if it cannot run."""
    env = environment or current_environment()
    ensure_imports(env.settings.imports)
    message = JobMessage.parse(raw)
    context = PipelineContext.from_envelope(message.context.model_dump())
    if context.job_id != message.job_id:
        raise MessageError(
            f"message job_id {message.job_id!r} differs from its context's {context.job_id!r}"
        )
    core_fn = resolve_callable(message.core_fn)
    pipeline = Pipeline.from_spec(message.spec, core_fn, environment=env)
    if message.resume_at > len(message.spec):
        raise MessageError(
            f"resume_at={message.resume_at} is past the end of a {len(message.spec)}-stage spec"
        )
    return message, context, pipeline


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
        return continuation.run(context, attempt=message.attempt, final=final)
