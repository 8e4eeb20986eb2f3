"""A background job's life: PENDING → RUNNING → SUCCEEDED, or FAILED → (retry | DEAD + DLQ).

Every engine delivers a job through :func:`deliver`: claim the attempt (taking the job's
lease), run it while the lease is kept alive, then record how it ended; what follows
(ack, retry, dead-letter, requeue, defer, skip) is decided by :mod:`dcore._core.delivery`
and returned for the engine to carry out. So a job's record, its state events and its
dead letter look the same whichever engine ran it, and the simulator runs this code too.

Only ``Exception`` marks an attempt failed. A ``BaseException`` (a worker being killed,
a simulated crash) leaves the record RUNNING, exactly as a dead process would: its lease
runs out and the job comes back by redelivery.

Dead-lettering is :func:`dead_letter`: where the job store can write on the event bus
(the same Redis server, or both in memory) it is one atomic step; elsewhere the failure
is recorded first, then the entry is appended with an idempotency key, then the job
moves DEAD, so a crash in between is finished by the next delivery. Either way a job is
never DEAD without its dead letter, and never has two.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from pydantic_core import to_jsonable_python

from dcore._core import events
from dcore._core.delivery import (
    MAX_LOST_DELIVERIES,
    Action,
    Ended,
    LeaseLost,
    Outcome,
    Raised,
    StoreUnreachable,
    Succeeded,
    after_attempt,
    after_claim,
)
from dcore._core.saga import CompensationFailed, Saga, mark_compensated, tracking
from dcore.errors import (
    IllegalTransitionError,
    JobNotFoundError,
    JobStateError,
    LeaseLostError,
    ServiceUnavailableError,
)
from dcore.services.jobs import (
    Announcement,
    Claim,
    ClaimStatus,
    DeadLetter,
    JobState,
)

if TYPE_CHECKING:
    from dcore._core.environment import Environment
    from dcore._core.retry import RetryPolicy
    from dcore.services.jobs import AnnouncingJobStore

__all__ = [
    "CurrentJob",
    "Delivered",
    "SkippedDuplicate",
    "current_job",
    "dead_letter",
    "deliver",
    "describe_error",
    "give_up",
    "is_given_up",
    "malformed_key",
    "schedule",
]

_log = logging.getLogger("dcore.jobs")


class SkippedDuplicate(Exception):
    """A delivery that did not run: the job already finished, the attempt already
    ended, or another delivery of the job is running it."""

    def __init__(self, job_id: str, reason: str | None) -> None:
        super().__init__(f"job {job_id}: {reason or 'duplicate delivery skipped'}")
        self.job_id = job_id


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
    """The job store, if it publishes state events on this environment's bus itself
    (asked by duck typing: a wrapper whose class forwards ``announces_on`` counts)."""
    jobs = env.jobs
    if callable(getattr(type(jobs), "announces_on", None)) and jobs.announces_on(  # type: ignore[attr-defined]
        env.events
    ):
        return cast("AnnouncingJobStore", jobs)
    return None


Message = str | Callable[[], str | None] | None


@dataclass
class Delivered:
    """One delivery's report: what to do next, and what the attempt returned or raised
    (``error``: its own failure, for a caller that re-raises it)."""

    outcome: Outcome
    result: Any = None
    error: BaseException | None = None

    def value(self, job_id: str) -> Any:
        """The attempt's result, or raise: its own failure, SkippedDuplicate for a
        delivery that did not run, ServiceUnavailableError when nothing could be
        recorded."""
        if self.error is not None:
            raise self.error
        action, reason = self.outcome.action, self.outcome.reason
        if action is Action.ACK:
            return self.result
        if action in (Action.SKIP, Action.DEFER):
            raise SkippedDuplicate(job_id, reason)
        if action is Action.REQUEUE:
            raise ServiceUnavailableError(f"job {job_id} was not run: {reason}")
        raise JobStateError(f"job {job_id} was dead-lettered: {reason}")


def deliver(
    env: Environment,
    job_id: str,
    fn: Callable[[], Any],
    *,
    attempt: int,
    policy: RetryPolicy,
    message: Message = None,
    saga: Saga | None = None,
) -> Delivered:
    """Deliver attempt ``attempt`` of job ``job_id``: claim it, run ``fn`` while keeping
    the lease, record how it ended, and return what the engine must do next.

    ``message`` (the job's message JSON, or a function building it) is only needed when
    the record is missing or the job is dead-lettered, so it may be built lazily. A
    ``BaseException`` from ``fn`` (a dying worker) propagates with the record RUNNING.
    With ``saga`` (the pipeline's compensations), a job that ends DEAD first undoes the
    stages that completed (see :mod:`dcore._core.saga`)."""
    owner = env.new_delivery_id()
    lease = env.settings.lease_ttl
    claim = _claim(env, job_id, attempt, owner, lease, message)
    outcome = after_claim(attempt, claim)
    claimed = isinstance(claim, Claim) and claim.status in (
        ClaimStatus.STARTED,
        ClaimStatus.COMPENSATING,
    )
    if outcome.action is Action.COMPENSATE:
        if claimed:  # the claim took over an interrupted compensation
            return Delivered(_compensated(env, job_id, owner, attempt, saga, message, policy))
        return Delivered(_start_compensation(env, job_id, owner, outcome, saga, message,
                                             policy))  # fmt: skip
    if outcome.action is Action.DEAD:
        if claimed and saga is not None:  # its workers kept dying: undo, then bury
            return Delivered(
                _fail_and_compensate(
                    env, job_id, owner, outcome, saga.assumed(), saga, message, policy
                )
            )
        holder = owner if claimed else None
        return Delivered(_record(env, job_id, holder, outcome, None, message, policy))
    if outcome.action is not Action.RUN:
        return Delivered(outcome)
    heartbeat = env.keep_lease(job_id, owner, lease)
    token = _current_job.set(CurrentJob(job_id, attempt))
    result: Any = None
    error: BaseException | None = None
    try:
        with tracking(None if saga is None else _recorder(env, job_id, owner)) as done:
            result = fn()
        ended: Ended = Succeeded()
    except Exception as exc:
        error = exc
        ended = Raised(exc, describe_error(exc), is_given_up(exc))
    finally:
        heartbeat.stop()
        _current_job.reset(token)
    outcome = after_attempt(policy, attempt, ended, env.random)
    if outcome.action is Action.DEAD and saga is not None:
        if error is not None:
            mark_compensated(error)  # undone here: the caller must not undo it again
        undone = _fail_and_compensate(env, job_id, owner, outcome, [*saga.assumed(), *done],
                                      saga, message, policy)  # fmt: skip
        return Delivered(undone, result, error)
    completed = done if saga is None else [*saga.assumed(), *done]
    return Delivered(_record(env, job_id, owner, outcome, result, message, policy, completed),
                     result, error)  # fmt: skip


def _recorder(env: Environment, job_id: str, owner: str) -> Callable[[int], None]:
    """Records a stage's completion in the job record as it happens."""

    def record(index: int) -> None:
        env.jobs.mark_completed(job_id, owner=owner, index=index)

    return record


def _fail_and_compensate(
    env: Environment,
    job_id: str,
    owner: str,
    outcome: Outcome,
    completed: list[int],
    saga: Saga,
    message: Message,
    policy: RetryPolicy,
) -> Outcome:
    """The attempt failed for good: record the failure with the stages that completed
    (``completed``: those of this delivery, on top of what the record holds), then undo
    every completed stage and dead-letter the job."""
    attempt = outcome.attempt
    try:
        env.jobs.end_attempt(job_id, JobState.FAILED, owner=owner, error=outcome.reason,
                             note=f"attempt {attempt}", completed=completed)  # fmt: skip
    except LeaseLostError as exc:
        return after_attempt(policy, attempt, LeaseLost(str(exc)))
    except ServiceUnavailableError as exc:
        return after_attempt(policy, attempt, StoreUnreachable(describe_error(exc)))
    return _start_compensation(env, job_id, owner, outcome, saga, message, policy)


def _start_compensation(
    env: Environment,
    job_id: str,
    owner: str,
    outcome: Outcome,
    saga: Saga | None,
    message: Message,
    policy: RetryPolicy,
) -> Outcome:
    """Take the FAILED job into COMPENSATING and undo its completed stages, or, when it
    has none left to undo, dead-letter it as it is."""
    attempt = outcome.attempt
    payload = {"job_id": job_id, "attempt": attempt}
    try:
        announce = _announcement(env, events.JOB_COMPENSATING, payload)
        claim = env.jobs.compensate(job_id, owner=owner, lease=env.settings.lease_ttl,
                                    announce=announce)  # fmt: skip
    except ServiceUnavailableError as exc:
        return after_attempt(policy, attempt, StoreUnreachable(describe_error(exc)))
    if claim.status is ClaimStatus.ENDED and claim.plan == "dead":  # nothing to undo
        return _record(env, job_id, None, Outcome(Action.DEAD, attempt, reason=outcome.reason),
                       None, message, policy)  # fmt: skip
    if claim.status is not ClaimStatus.STARTED:
        return after_claim(attempt, claim)  # another delivery is at it, or it is over
    if announce is None:
        events.emit(env, events.JOB_COMPENSATING, **payload)
    return _compensated(env, job_id, owner, attempt, saga, message, policy)


def _compensated(
    env: Environment,
    job_id: str,
    owner: str,
    attempt: int,
    saga: Saga | None,
    message: Message,
    policy: RetryPolicy,
) -> Outcome:
    """Undo what the job's record says completed and is not compensated yet (``owner``
    holds the COMPENSATING job), then dead-letter it: with both errors if a compensation
    failed for good."""
    jobs = env.jobs
    try:
        record = jobs.get(job_id)
    except ServiceUnavailableError as exc:
        return after_attempt(policy, attempt, StoreUnreachable(describe_error(exc)))
    error = record.error or "failed"
    failure: CompensationFailed | None = None
    if saga is None:
        failure = CompensationFailed("(unknown)", RuntimeError("no stages to compensate with"))
    elif record.lost >= MAX_LOST_DELIVERIES:
        failure = CompensationFailed(
            "(any)", RuntimeError(f"the worker compensating this job died {record.lost} times")
        )
    else:

        def done(index: int) -> None:
            jobs.mark_compensated(job_id, owner=owner, index=index)
            events.emit(env, events.STAGE_COMPENSATED, job_id=job_id,
                        stage=saga.stages[index].origin)  # fmt: skip

        heartbeat = env.keep_lease(job_id, owner, env.settings.lease_ttl)
        token = _current_job.set(CurrentJob(job_id, attempt))
        try:
            saga.compensate(record.completed, record.compensated, error, done)
        except CompensationFailed as exc:
            failure = exc
        except LeaseLostError as exc:
            return after_attempt(policy, attempt, LeaseLost(str(exc)))
        except ServiceUnavailableError as exc:
            return after_attempt(policy, attempt, StoreUnreachable(describe_error(exc)))
        finally:
            _current_job.reset(token)
            heartbeat.stop()
    if failure is None:
        events.emit(
            env,
            events.JOB_COMPENSATED,
            job_id=job_id,
            stages=[saga.stages[i].origin for i in record.completed] if saga else [],
        )
    reason = error if failure is None else f"{error}; and {failure}"
    details = {
        "compensated": failure is None,
        "compensation_error": None if failure is None else str(failure),
    }
    outcome = Outcome(Action.DEAD, attempt, reason=reason)
    try:
        dead_letter(env, job_id, error=reason, message=_built(message), attempt=attempt,
                    owner=owner, details=details)  # fmt: skip
    except LeaseLostError as exc:
        return after_attempt(policy, attempt, LeaseLost(str(exc)))
    except ServiceUnavailableError as exc:
        return after_attempt(policy, attempt, StoreUnreachable(describe_error(exc)))
    return outcome


def _claim(
    env: Environment, job_id: str, attempt: int, owner: str, lease: float, message: Message
) -> Claim | StoreUnreachable:
    note = f"attempt {attempt}"
    announce = _announcement(env, events.JOB_STARTED, {"job_id": job_id, "attempt": attempt})
    try:
        claim = env.jobs.claim(job_id, attempt=attempt, owner=owner, lease=lease, note=note,
                               announce=announce)  # fmt: skip
        if claim.status is ClaimStatus.MISSING:
            # the job store of the process that scheduled it was not this one's (or was
            # cleared): start the record here rather than drop the work
            with contextlib.suppress(IllegalTransitionError):  # a racing delivery made it
                env.jobs.create(job_id, message=_built(message))
            claim = env.jobs.claim(job_id, attempt=attempt, owner=owner, lease=lease,
                                   note=note, announce=announce)  # fmt: skip
    except ServiceUnavailableError as exc:
        _log.warning("job %s: job store unreachable at the start: %s", job_id, exc)
        return StoreUnreachable(describe_error(exc))
    if announce is None and claim.status is ClaimStatus.STARTED:
        events.emit(env, events.JOB_STARTED, job_id=job_id, attempt=attempt)
    return claim


def _record(
    env: Environment,
    job_id: str,
    owner: str | None,
    outcome: Outcome,
    result: Any,
    message: Message,
    policy: RetryPolicy,
    completed: Collection[int] = (),
) -> Outcome:
    """Record ``outcome`` in the job store (fenced by ``owner``'s lease); the outcome to
    carry out, which is REQUEUE (of this delivery's attempt: nothing was recorded) when
    the store is unreachable and SKIP when the lease was lost meanwhile."""
    action = outcome.action
    attempt = outcome.attempt - 1 if action is Action.RETRY else outcome.attempt
    try:
        if action is Action.ACK:
            payload = {"job_id": job_id, "attempt": attempt}
            _end(env, job_id, owner, JobState.SUCCEEDED, events.JOB_SUCCEEDED, payload,
                 result=_jsonable(result))  # fmt: skip
        elif action is Action.RETRY:
            env.jobs.end_attempt(job_id, JobState.FAILED, owner=_owner(owner),
                                 error=outcome.reason, note=f"attempt {attempt}",
                                 retry_at=env.clock.time() + outcome.delay,
                                 completed=completed)  # fmt: skip
            events.emit(env, events.JOB_RETRYING, job_id=job_id, attempt=attempt,
                        error=outcome.reason)  # fmt: skip
        elif action is Action.DEAD:
            error = outcome.reason or "dead"
            if owner is not None:  # the failure first, so the dead letter's history has it
                env.jobs.end_attempt(job_id, JobState.FAILED, owner=owner, error=error,
                                     note=f"attempt {attempt}")  # fmt: skip
            dead_letter(env, job_id, error=error, message=_built(message), attempt=attempt)
    except LeaseLostError as exc:
        _log.warning("%s", exc)
        return after_attempt(policy, attempt, LeaseLost(str(exc)))
    except ServiceUnavailableError as exc:
        _log.warning("job %s: job store unreachable, delivery put back: %s", job_id, exc)
        return after_attempt(policy, attempt, StoreUnreachable(describe_error(exc)))
    return outcome


def _owner(owner: str | None) -> str:
    assert owner is not None, "only a delivery that holds the lease ends its attempt"
    return owner


def _end(
    env: Environment,
    job_id: str,
    owner: str | None,
    to: JobState,
    topic: str,
    payload: dict[str, Any],
    *,
    result: Any = None,
) -> None:
    """End the attempt and publish its event: in one atomic step where the store can
    publish on the bus itself, else one after the other (a bus that is down does not
    fail the job)."""
    announce = _announcement(env, topic, payload)
    env.jobs.end_attempt(job_id, to, owner=_owner(owner), result=result, announce=announce)
    if announce is None:
        events.emit(env, topic, **payload)


def _announcement(env: Environment, topic: str, payload: dict[str, Any]) -> Announcement | None:
    announcer = _announcer(env)
    return None if announcer is None else Announcement(env.events, topic, payload)


def _built(message: Message) -> str | None:
    return message() if callable(message) else message


def dead_letter(
    env: Environment,
    job_id: str,
    *,
    error: str,
    message: str | None = None,
    attempt: int | None = None,
    owner: str | None = None,
    key: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> str | None:
    """Mark the job DEAD with its message, error and history on the durable DLQ, exactly
    once; returns the entry id (None if the job had already finished: nothing appended).

    ``owner`` is the delivery holding the job's lease (its move is fenced); ``key``
    makes the entry idempotent (default: the job and attempt); ``details`` are added to
    the entry (whether its stages were compensated)."""
    try:
        record = env.jobs.get(job_id)
        history = [t.model_dump(mode="json") for t in record.history]
        stored_message = message or record.message
    except JobNotFoundError:
        history, stored_message = [], message
    letter = DeadLetter(env.settings.dlq_topic, {
        "job_id": job_id,
        "error": error,
        "message": stored_message,
        "attempt": attempt,
        "history": history,
        "at": env.clock.time(),
        **(details or {}),
    }, key or f"{job_id}:{attempt}")  # fmt: skip
    dead = {"job_id": job_id, "error": error}
    announcer = _announcer(env)
    if announcer is not None:
        return announcer.bury(
            job_id,
            owner=owner,
            error=error,
            letter=letter,
            announce=Announcement(env.events, events.JOB_DEAD, dead),
        )
    return _bury_in_steps(env, job_id, owner, error, letter, dead)


def _bury_in_steps(
    env: Environment,
    job_id: str,
    owner: str | None,
    error: str,
    letter: DeadLetter,
    dead: dict[str, Any],
) -> str | None:
    """Dead-lettering where the job store cannot write on the bus: FAILED (planning
    death), then the keyed append, then DEAD. A crash in between leaves the job FAILED
    with plan "dead", which the next delivery finishes (the append adds nothing twice)."""
    jobs = env.jobs
    try:
        record = jobs.get(job_id)
    except JobNotFoundError:
        record = jobs.create(job_id, message=letter.payload.get("message"))
    if record.state in (JobState.SUCCEEDED, JobState.DEAD):
        return None
    if record.state is JobState.RUNNING:
        if owner is None:
            raise LeaseLostError(f"job {job_id} is RUNNING under another delivery's lease")
        jobs.end_attempt(job_id, JobState.FAILED, owner=owner, error=error)
    elif record.state is JobState.COMPENSATING and owner != record.owner:
        raise LeaseLostError(f"job {job_id} is COMPENSATING under another delivery's lease")
    entry_id = env.events.append(letter.topic, letter.payload, key=letter.key)
    try:
        jobs.transition(
            job_id,
            JobState.DEAD,
            error=error,
            note="dead-lettered",
            expect={JobState.PENDING, JobState.FAILED, JobState.COMPENSATING},
        )
    except IllegalTransitionError:  # another delivery finished the burial meanwhile
        _log.info("job %s was dead-lettered by another delivery", job_id)
        return entry_id
    events.emit(env, events.JOB_DEAD, **dead, dlq_id=entry_id)
    return entry_id


def malformed_key(raw: str | bytes) -> str:
    """The idempotency key of a malformed message's dead letter: the same bytes
    delivered twice are dead-lettered once."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    return "malformed:" + hashlib.blake2b(data, digest_size=12).hexdigest()


def _jsonable(value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except Exception:
        return repr(value)
