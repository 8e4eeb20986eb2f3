"""A background job's life: PENDING → RUNNING → SUCCEEDED, or FAILED → (retry | DEAD + DLQ).

Dispatchers and the worker entry point share this one path, so a job's record, its
state events and its dead letter look the same whichever engine ran it.

Only ``Exception`` marks a job FAILED. A ``BaseException`` (a worker being killed, a
simulated crash) leaves the record RUNNING, exactly as a dead process would, and the
job comes back by redelivery.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from pydantic_core import to_jsonable_python

from dcore.core import events
from dcore.errors import IllegalTransitionError, JobNotFoundError
from dcore.services.jobs import AnnouncingJobStore, JobState

if TYPE_CHECKING:
    from dcore.core.environment import Environment

__all__ = [
    "CurrentJob",
    "SkippedDuplicate",
    "current_job",
    "dead_letter",
    "describe_error",
    "give_up",
    "is_given_up",
    "run_job",
    "schedule",
]

T = TypeVar("T")
_log = logging.getLogger("dcore.jobs")


class SkippedDuplicate(Exception):
    """A delivery of a job that already finished; nothing was run."""

    def __init__(self, job_id: str, state: JobState, result: Any) -> None:
        super().__init__(f"job {job_id} is already {state}; duplicate delivery skipped")
        self.job_id = job_id
        self.state = state
        self.result = result


class CurrentJob(NamedTuple):
    job_id: str
    attempt: int


_current_job: ContextVar[CurrentJob | None] = ContextVar("dcore_current_job", default=None)
_GIVE_UP = "__dcore_give_up__"


def current_job() -> CurrentJob | None:
    """The job (id, attempt) whose background part is running in this thread, if any:
    stages read it to label spans and to know whether a job record owns their failure."""
    return _current_job.get()


def give_up(exc: BaseException) -> BaseException:
    """Mark ``exc`` as not worth another delivery: the job goes DEAD and to the DLQ now,
    whatever attempts its policy has left. Returns ``exc`` for ``raise give_up(e)``."""
    with contextlib.suppress(AttributeError, TypeError):  # exceptions with __slots__
        setattr(exc, _GIVE_UP, True)
    return exc


def is_given_up(exc: BaseException) -> bool:
    return bool(getattr(exc, _GIVE_UP, False))


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def schedule(env: Environment, job_id: str, *, message: str | None = None) -> None:
    """Record a new PENDING job (or re-schedule a DEAD/FAILED one) and announce it."""
    payload = {"job_id": job_id}
    announcer = _announcer(env)
    if announcer is not None:
        announcer.create_announced(job_id, env.events, events.JOB_SCHEDULED, payload,
                                   message=message)  # fmt: skip
        return
    env.jobs.create(job_id, message=message)
    events.emit(env, events.JOB_SCHEDULED, **payload)


def _announcer(env: Environment) -> AnnouncingJobStore | None:
    """The job store, if it publishes state events on this environment's bus itself."""
    jobs = env.jobs
    return jobs if isinstance(jobs, AnnouncingJobStore) and jobs.announces_on(env.events) else None


def _move(
    env: Environment,
    job_id: str,
    to: JobState,
    topic: str,
    payload: dict[str, Any],
    *,
    result: Any = None,
    note: str | None = None,
) -> None:
    """Move the job and publish the state event: in one atomic step where the store can
    publish on the bus itself (see AnnouncingJobStore), else one after the other (and a
    bus that is down does not fail the job)."""
    announcer = _announcer(env)
    if announcer is not None:
        announcer.transition_announced(job_id, to, env.events, topic, payload, result=result,
                                       note=note)  # fmt: skip
        return
    env.jobs.transition(job_id, to, result=result, note=note)
    events.emit(env, topic, **payload)


def _start(
    env: Environment, job_id: str, attempt: int, message: Callable[[], str | None]
) -> None:
    # one round trip on the hot path: the state machine itself refuses to start a job
    # that already finished (SUCCEEDED and DEAD cannot move to RUNNING)
    note = f"attempt {attempt}"
    started = {"job_id": job_id, "attempt": attempt}
    try:
        _move(env, job_id, JobState.RUNNING, events.JOB_STARTED, started, note=note)
    except JobNotFoundError:
        # the job store of the process that scheduled it was not this one's (or was
        # cleared): start the record here rather than drop the work
        env.jobs.create(job_id, message=message())
        _move(env, job_id, JobState.RUNNING, events.JOB_STARTED, started, note=note)
    except IllegalTransitionError:
        record = env.jobs.get(job_id)
        raise SkippedDuplicate(job_id, record.state, record.result) from None


def run_job(
    env: Environment,
    job_id: str,
    fn: Callable[[], T],
    *,
    attempt: int = 1,
    final: bool = True,
    message: str | Callable[[], str | None] | None = None,
) -> T:
    """Run ``fn`` as attempt ``attempt`` of job ``job_id``, recording every transition.

    ``message`` (the job's message JSON, or a function building it) is only needed when
    the record is missing or the job is dead-lettered, so it may be built lazily.

    A failure is re-raised after it is recorded. With ``final`` (nobody will deliver the
    job again) or an error marked by :func:`give_up`, the job goes DEAD and to the
    dead-letter queue; otherwise it stays FAILED and ``job.retrying`` announces the next
    delivery."""
    def message_json() -> str | None:
        return message() if callable(message) else message

    _start(env, job_id, attempt, message_json)
    token = _current_job.set(CurrentJob(job_id, attempt))
    try:
        result = fn()
    except Exception as exc:
        error = describe_error(exc)
        env.jobs.transition(job_id, JobState.FAILED, error=error, note=f"attempt {attempt}")
        if final or is_given_up(exc):
            dead_letter(env, job_id, error=error, message=message_json(), attempt=attempt)
        else:
            events.emit(env, events.JOB_RETRYING, job_id=job_id, attempt=attempt, error=error)
        raise
    finally:
        _current_job.reset(token)
    succeeded = {"job_id": job_id, "attempt": attempt}
    _move(env, job_id, JobState.SUCCEEDED, events.JOB_SUCCEEDED, succeeded,
          result=_jsonable(result))
    return result


def dead_letter(
    env: Environment,
    job_id: str,
    *,
    error: str,
    message: str | None = None,
    attempt: int | None = None,
) -> str:
    """Mark the job DEAD and put its message, error and history on the durable DLQ.

    The DLQ entry is written before the state changes, so a crash in between leaves the
    job FAILED with a dead letter (replayable), never DEAD without one."""
    try:
        record = env.jobs.get(job_id)
        history = [t.model_dump(mode="json") for t in record.history]
        stored_message = message or record.message
    except JobNotFoundError:
        record, history, stored_message = None, [], message
    entry_id = env.events.append(
        env.settings.dlq_topic,
        {
            "job_id": job_id,
            "error": error,
            "message": stored_message,
            "attempt": attempt,
            "history": history,
            "at": env.clock.time(),
        },
    )
    if record is None:
        env.jobs.create(job_id, message=stored_message)
    try:
        env.jobs.transition(job_id, JobState.DEAD, error=error, note="dead-lettered")
    except IllegalTransitionError:
        _log.warning("job %s could not be marked DEAD", job_id, exc_info=True)
    events.emit(env, events.JOB_DEAD, job_id=job_id, error=error, dlq_id=entry_id)
    return entry_id


def _jsonable(value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except Exception:
        return repr(value)
