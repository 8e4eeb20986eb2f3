"""``context.error_bus.report(exc)``: record an error on the context and announce it."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

from pydantic import BaseModel

from dcore._core import events

if TYPE_CHECKING:
    from dcore._core.context import PipelineContext
    from dcore._core.environment import Environment

__all__ = ["ErrorBus", "ErrorRecord"]


class ErrorRecord(BaseModel):
    """An error reported on a context: what, where, and when (clock time)."""

    type: str
    message: str
    stage: str | None = None
    at: float | None = None
    traceback: str | None = None

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, stage: str | None = None, at: float | None = None
    ) -> ErrorRecord:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(
            type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc),
            stage=stage,
            at=at,
            traceback=tb[-4000:],
        )


class ErrorBus:
    """Bound to one context; publishes on the environment's ``errors`` topic."""

    def __init__(self, context: PipelineContext, environment: Environment | None = None) -> None:
        self.context = context
        self._environment = environment

    def report(self, exc: BaseException, *, stage: str | None = None) -> ErrorRecord:
        """Append the error to ``context.errors`` (so ``failed`` turns True) and publish it."""
        from dcore._core.environment import current_environment
        from dcore._core.runner import origin_of

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
