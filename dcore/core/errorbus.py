"""``context.error_bus.report(exc)``: record an error on the context and announce it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dcore.core import events
from dcore.core.context import ErrorRecord

if TYPE_CHECKING:
    from dcore.core.context import PipelineContext
    from dcore.core.environment import Environment

__all__ = ["ErrorBus"]


class ErrorBus:
    """Bound to one context; publishes on the environment's ``errors`` topic."""

    def __init__(self, context: PipelineContext, environment: Environment | None = None) -> None:
        self.context = context
        self._environment = environment

    def report(self, exc: BaseException, *, stage: str | None = None) -> ErrorRecord:
        """Append the error to ``context.errors`` (so ``failed`` turns True) and publish it."""
        from dcore.core.environment import current_environment
        from dcore.core.pipeline import origin_of

        env = self._environment or current_environment()
        record = ErrorRecord.from_exception(exc, stage=stage or origin_of(exc), at=env.clock.time())
        self.context.errors.append(record)
        events.emit(
            env,
            events.ERRORS_TOPIC,
            job_id=self.context.job_id,
            type=record.type,
            message=record.message,
            stage=record.stage,
            at=record.at,
        )
        return record
