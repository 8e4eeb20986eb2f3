"""Compensation: a pipeline as a distributed transaction (a saga).

An ``Execute`` stage may define ``compensate(context, error)``: how to undo what it did
(release the reserved seat, refund the charge, delete the stored file). A stage has
*completed* once it handed over to the rest of the pipeline (called ``next_fn``) or
returned; a stage that raised on its own has nothing to undo.

- When a job's background part ends DEAD (attempts used up, ``give_up()``, an error the
  policy does not retry), the compensations of every stage of the pipeline that
  completed, in any attempt, run in reverse order, each at most once, each with its
  own retry policy (the class attribute ``compensation_retry``, default
  :data:`DEFAULT_COMPENSATION_RETRY`). Stages before the Dispatch count as completed:
  the hand-off happened after them. Progress is kept in the job record: each stage's
  completion as it happens (so a job whose worker died, and which then fails for good,
  still undoes it) and each compensation, so a worker that dies while compensating is
  taken over by the next delivery, which compensates only what is left. Then the job is DEAD and
  dead-lettered; if a compensation itself fails for good, the dead letter carries both
  errors.
- When the synchronous part (the stages before the Dispatch, in the caller) raises, the
  stages of it that completed compensate the same way, in the caller, and the error is
  re-raised.

The runner marks completions (:func:`completed`) into the list of the run in progress
(:func:`tracking`), for stages that compensate only, so a pipeline without
compensations pays nothing.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dcore._core.retry import RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from dcore._core.environment import Environment
    from dcore._core.runner import Stage

__all__ = [
    "DEFAULT_COMPENSATION_RETRY",
    "CompensationFailed",
    "Saga",
    "compensates",
    "completed",
    "tracking",
    "undo_failed_run",
]

#: A compensation is retried unless its stage says otherwise: undoing must not give up
#: at the first blip.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(attempts=3, initial=1.0, backoff=2.0)

_COMPLETED: ContextVar[_Tracker | None] = ContextVar("dcore_completed", default=None)
_COMPENSATED = "__dcore_compensated__"


def compensates(cls: type) -> bool:
    """Whether a stage class can undo its work (defines ``compensate``)."""
    return callable(getattr(cls, "compensate", None))


class _Tracker:
    __slots__ = ("done", "record")

    def __init__(self, record: Callable[[int], None] | None) -> None:
        self.done: list[int] = []
        self.record = record


def completed(index: int) -> None:
    """Stage ``index`` completed its work in the run in progress (if one is tracked)."""
    tracker = _COMPLETED.get()
    if tracker is not None and index not in tracker.done:
        # in this run's list first: if recording it fails (the job store unreachable),
        # the error ends the attempt, and this run's own failure handling must still
        # know the stage did its work (the record of the failure carries the list)
        tracker.done.append(index)
        if tracker.record is not None:
            tracker.record(index)  # then durably: a run that dies later still knows


@contextlib.contextmanager
def tracking(record: Callable[[int], None] | None = None) -> Iterator[list[int]]:
    """Collect the indexes of the stages that complete inside the block, and pass each
    to ``record`` as it completes (a job records them in its job record)."""
    tracker = _Tracker(record)
    token = _COMPLETED.set(tracker)
    try:
        yield tracker.done
    finally:
        _COMPLETED.reset(token)


def mark_compensated(exc: BaseException) -> None:
    """``exc`` ended a job whose stages were compensated already (by the job's delivery):
    the caller must not compensate them again."""
    with contextlib.suppress(AttributeError, TypeError):  # exceptions with __slots__
        setattr(exc, _COMPENSATED, True)


def was_compensated(exc: BaseException) -> bool:
    return bool(getattr(exc, _COMPENSATED, False))


def undo_failed_run(saga: Saga, done: Sequence[int], exc: Exception) -> None:
    """The synchronous part of a run raised ``exc`` after stages ``done`` completed: undo
    them (unless the job's delivery already did, for a job that ended DEAD), noting on
    ``exc`` a compensation that failed for good. The caller re-raises ``exc``."""
    if done and not was_compensated(exc):
        try:
            saga.compensate(done, (), exc)
        except CompensationFailed as failed:
            exc.add_note(f"and {failed}")


class CompensationFailed(Exception):
    """A stage's compensation failed for good (after its retries)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"compensation of stage {stage} failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


@dataclass
class Saga:
    """The compensations of one pipeline's stages (its plugin instances), for a run or
    a job of it over ``context``."""

    stages: Sequence[Stage]
    instances: Sequence[Any]
    context: Any
    env: Environment
    #: stages run before the hand-off (they completed, or the job would not exist)
    before: int = 0

    @property
    def compensable(self) -> bool:
        return any(s.compensates for s in self.stages)

    def assumed(self) -> list[int]:
        """The stages before the hand-off that can compensate: they all completed."""
        return [s.index for s in self.stages[: self.before] if s.compensates]

    def compensate(
        self,
        done: Sequence[int],
        skip: Sequence[int],
        error: BaseException | str,
        on_compensated: Callable[[int], None] | None = None,
    ) -> None:
        """Run the compensations of the stages in ``done`` not in ``skip``, in reverse
        order, each under its retry policy; ``on_compensated(index)`` after each.
        CompensationFailed names the first that failed for good (the rest do not run:
        they may depend on it)."""
        env, ctx = self.env, self.context
        reason = error if isinstance(error, BaseException) else RuntimeError(error)
        for index in sorted(set(done) - set(skip), reverse=True):
            stage = self.stages[index]
            instance = self.instances[index]
            if instance is None:  # a pooled plugin: built for this compensation
                from dcore._core.factory import PluginFactory

                instance = PluginFactory(environment=env).create(
                    stage.ref.interface, stage.ref.plugin, **stage.ref.options
                )
            policy = getattr(stage.cls, "compensation_retry", None) or (DEFAULT_COMPENSATION_RETRY)
            try:
                call_with_retry(
                    _undo(instance, ctx, reason, env), policy, env.clock, rng=env.random
                )
            except Exception as exc:
                raise CompensationFailed(stage.origin, exc) from exc
            if on_compensated is not None:
                on_compensated(index)


def _undo(instance: Any, ctx: Any, reason: BaseException, env: Environment) -> Callable[[], Any]:
    def undo() -> Any:
        result = instance.compensate(ctx, reason)
        if inspect.iscoroutine(result):  # an ``async def compensate``
            from dcore._core.loops import run_awaitable

            return run_awaitable(env, result)
        return result

    return undo
