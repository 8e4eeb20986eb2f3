"""``dead_letter``: send a failed run to the dead-letter queue now, instead of retrying it.

It watches the rest of the pipeline. A run has failed when the rest raises, or returns
with errors reported on the context (an ``error_handler`` further down that swallowed
them: ``context.failed``). Then:

- **in a background job**: the failure is marked as not worth another delivery
  (:func:`dcore.give_up`) and raised, so the job goes ``DEAD`` and its
  message, error and history land on the DLQ exactly once, ready for ``dcore dlq
  replay`` — whatever attempts the job policy had left. A context that only reported
  errors fails as :class:`FailedContextError`, naming them.
- **before any Dispatch** (no job record owns the run): an entry with the context, its
  errors and the error is appended to the DLQ directly, for ``dcore dlq show``; there is
  no message to replay. The error is then re-raised (``reraise=False`` swallows it and
  returns ``None``).
"""

from __future__ import annotations

from typing import Any

from dcore._core.environment import Environment
from dcore._core.lifecycle import current_job, describe_error, give_up
from dcore._core.pipeline import origin_of
from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import DcoreError

__all__ = ["DeadLetterStage", "FailedContextError"]


class FailedContextError(DcoreError):
    """A run returned normally but with errors reported on its context."""


def _summary(context: Any) -> str:
    errors = list(getattr(context, "errors", []))
    shown = "; ".join(
        f"{e.type.rsplit('.', 1)[-1]}: {e.message}" + (f" (stage {e.stage})" if e.stage else "")
        for e in errors[:3]
    )
    more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
    return f"job {context.job_id} finished with {len(errors)} reported error(s): {shown}{more}"


@register_plugin("dead_letter", registry=default_registry())
class DeadLetterStage(Execute[Any]):
    shareable = True  # holds only its option and the environment

    def __init__(self, env: Environment, reraise: bool = True) -> None:
        self.env = env
        self.reraise = reraise

    def _in_job(self, context: Any) -> bool:
        job = current_job()
        return job is not None and job.job_id == context.job_id

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        try:
            result = next_fn(context)
        except Exception as exc:
            if self._in_job(context):
                give_up(exc)
                raise
            self._append(context, describe_error(exc), origin_of(exc))
            if self.reraise:
                raise
            return None
        if not getattr(context, "failed", False):
            return result
        error = FailedContextError(_summary(context))
        if self._in_job(context):
            raise give_up(error)
        self._append(context, f"FailedContextError: {error}", None)
        if self.reraise:
            raise error
        return None

    def _append(self, context: Any, error: str, stage: str | None) -> str:
        try:
            envelope: dict[str, Any] | None = context.to_envelope()
        except Exception:
            envelope = None  # a context with runtime objects: the errors still go
        return self.env.events.append(
            self.env.settings.dlq_topic,
            {
                "job_id": context.job_id,
                "error": error,
                "stage": stage,
                "message": None,
                "attempt": None,
                "history": [],
                "context": envelope,
                "errors": [
                    e.model_dump(mode="json", exclude={"traceback"})
                    for e in getattr(context, "errors", [])
                ],
                "at": self.env.clock.time(),
                "source": "dead_letter stage",
            },
        )
