"""``memory`` job store: the job state machine in process, timestamps and TTLs on the
injected clock; the reference the Redis job store is tested against.

With a memory event bus (the same process: "the same server"), it is an
:class:`~dcore.services.jobs.AnnouncingJobStore`: state events go out right after their
move, and :meth:`MemoryJobStore.bury` appends the dead letter under the store's lock, so
burying is one atomic step as on Redis. The bus never calls back into the store, so the
nested lock cannot deadlock; subscribers are called after the store's lock is released.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from dcore._core.clock import Clock, SystemClock
from dcore._plugins.registry import register_plugin
from dcore.backends._shared import (
    DEFAULT_JOB_TTL,
    check_end,
    encode_result,
    exists_message,
    lease_lost_message,
    may_bury,
    merge_completed,
    not_found,
    plan_after_failure,
    positive,
    states,
)
from dcore.backends.memory_events import MemoryEventBus
from dcore.errors import IllegalTransitionError, LeaseLostError
from dcore.services.jobs import (
    LEASED,
    TERMINAL,
    Announcement,
    AnnouncingJobStore,
    Claim,
    ClaimStatus,
    DeadLetter,
    JobRecord,
    JobState,
    JobStorageInterface,
    Transition,
    check,
)

if TYPE_CHECKING:
    from dcore._core.environment import Environment
    from dcore.services.events import EventBusInterface

__all__ = ["MemoryJobStore"]


@dataclass
class _Job:
    job_id: str
    state: JobState
    attempts: int
    created_at: float
    updated_at: float
    result: str | None = None  # JSON text, as Redis stores it
    error: str | None = None
    message: str | None = None
    history: list[Transition] = field(default_factory=list)
    expires_at: float | None = None  # clock.time() after which the record is gone
    attempt: int = 0
    owner: str | None = None
    lease_until: float | None = None
    lost: int = 0
    plan: str | None = None
    retry_at: float | None = None
    completed: list[int] = field(default_factory=list)
    compensated: list[int] = field(default_factory=list)

    def record(self) -> JobRecord:
        return JobRecord(
            job_id=self.job_id,
            state=self.state,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            result=None if self.result is None else json.loads(self.result),
            error=self.error,
            message=self.message,
            history=[h.model_copy() for h in self.history],
            attempt=self.attempt,
            owner=self.owner,
            lease_until=self.lease_until,
            lost=self.lost,
            plan=self.plan,
            retry_at=self.retry_at,
            completed=list(self.completed),
            compensated=list(self.compensated),
        )


@register_plugin("in_memory")
@register_plugin("memory")
class MemoryJobStore(JobStorageInterface, AnnouncingJobStore):
    """Job records in a dict behind one lock; terminal records expire after ``ttl``
    seconds of the clock, like the Redis store's key TTL."""

    process_local = True

    def __init__(self, clock: Clock | None = None, *, ttl: float = DEFAULT_JOB_TTL) -> None:
        positive("ttl", ttl)
        self.clock = clock or SystemClock()
        self.ttl = ttl
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        options.setdefault("ttl", env.settings.job_ttl)
        return cls(clock=env.clock, **options)

    def _live(self, job_id: str) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.expires_at is not None and self.clock.time() >= job.expires_at:
            del self._jobs[job_id]
            return None
        return job

    def _move(self, job: _Job, to: JobState, now: float, note: str | None) -> None:
        if to is JobState.RUNNING:
            job.attempts += 1
        elif job.state in LEASED and to not in LEASED:  # leaving ends the lease
            job.owner = job.lease_until = None
        if job.state is JobState.FAILED and to is not JobState.FAILED:
            job.plan = job.retry_at = None
        job.state = to
        job.updated_at = now
        job.history.append(Transition(state=to, at=now, attempt=job.attempts, note=note))
        job.expires_at = now + self.ttl if to in TERMINAL else None

    def create(self, job_id: str, *, message: str | None = None) -> JobRecord:
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        with self._lock:
            now = self.clock.time()
            job = self._live(job_id)
            if job is None:
                job = _Job(job_id, JobState.PENDING, 0, now, now, message=message)
                job.history.append(Transition(state=JobState.PENDING, at=now, attempt=0))
                self._jobs[job_id] = job
            elif job.state in (JobState.FAILED, JobState.DEAD):
                self._move(job, JobState.PENDING, now, None)
                if message is not None:
                    job.message = message
            else:
                raise IllegalTransitionError(exists_message(job_id, job.state))
            return job.record()

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._live(job_id)
            if job is None:
                raise not_found(job_id)
            return job.record()

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: Collection[JobState] | None = None,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
    ) -> JobRecord:
        to = JobState(to)
        wanted = states(expect)
        raw = None if result is None else encode_result(result)
        with self._lock:
            job = self._live(job_id)
            if job is None:
                raise not_found(job_id)
            check(job_id, job.state, to, wanted)
            self._move(job, to, self.clock.time(), note)
            if raw is not None:
                job.result = raw
            if error is not None:
                job.error = error
            return job.record()

    # -- leases ---------------------------------------------------------------------
    def claim(
        self,
        job_id: str,
        *,
        attempt: int,
        owner: str,
        lease: float,
        note: str | None = None,
        announce: Announcement | None = None,
    ) -> Claim:
        self._can_announce(announce)
        with self._lock:
            job = self._live(job_id)
            if job is None:
                return Claim(ClaimStatus.MISSING)
            now = self.clock.time()
            lost = 0
            if job.state in TERMINAL:
                return Claim(ClaimStatus.FINISHED, job.state, job.attempt)
            if job.attempt > attempt or (job.state is JobState.FAILED and job.attempt >= attempt):
                return Claim(ClaimStatus.ENDED, job.state, job.attempt, plan=job.plan)
            if job.state in LEASED:
                until = job.lease_until
                if until is not None and until > now:
                    return Claim(ClaimStatus.BUSY, job.state, job.attempt, retry_in=until - now)
                lost = job.lost + 1 if job.attempt == attempt else 0
            if job.state is JobState.COMPENSATING:  # resume the interrupted compensation
                self._move(job, JobState.COMPENSATING, now, "compensation taken over")
                job.owner, job.lease_until, job.lost = owner, now + lease, lost
                return Claim(ClaimStatus.COMPENSATING, job.state, job.attempt, lost=lost)
            self._move(job, JobState.RUNNING, now, note)
            job.attempt, job.owner, job.lease_until, job.lost = attempt, owner, now + lease, lost
        self._publish(announce)
        return Claim(ClaimStatus.STARTED, JobState.RUNNING, attempt, lost=lost)

    def renew(self, job_id: str, *, owner: str, lease: float) -> bool:
        with self._lock:
            job = self._live(job_id)
            if job is None or job.state not in LEASED or job.owner != owner:
                return False
            job.lease_until = self.clock.time() + lease
            return True

    def _owned(self, job_id: str, owner: str | None,
               state: JobState = JobState.RUNNING) -> _Job:  # fmt: skip
        """The live record, in ``state`` and held by ``owner`` (when given); raises
        otherwise."""
        job = self._live(job_id)
        if job is None:
            raise not_found(job_id)
        if owner is not None and (job.state is not state or job.owner != owner):
            raise LeaseLostError(lease_lost_message(job_id, owner, job.state, job.owner))
        return job

    def compensate(
        self,
        job_id: str,
        *,
        owner: str,
        lease: float,
        announce: Announcement | None = None,
    ) -> Claim:
        self._can_announce(announce)
        with self._lock:
            job = self._live(job_id)
            if job is None:
                raise not_found(job_id)
            now = self.clock.time()
            if job.state in TERMINAL:
                return Claim(ClaimStatus.FINISHED, job.state, job.attempt)
            lost = 0
            if job.state is JobState.COMPENSATING:
                until = job.lease_until
                if until is not None and until > now:
                    return Claim(ClaimStatus.BUSY, job.state, job.attempt, retry_in=until - now)
                lost = job.lost + 1
            elif job.state is not JobState.FAILED or job.plan != "compensate":
                return Claim(ClaimStatus.ENDED, job.state, job.attempt, plan=job.plan)
            self._move(job, JobState.COMPENSATING, now, None)
            job.owner, job.lease_until, job.lost = owner, now + lease, lost
        self._publish(announce)
        return Claim(ClaimStatus.STARTED, JobState.COMPENSATING, job.attempt, lost=lost)

    def mark_completed(self, job_id: str, *, owner: str, index: int) -> None:
        with self._lock:
            job = self._owned(job_id, owner)
            job.completed = merge_completed(job.completed, (index,))

    def mark_compensated(self, job_id: str, *, owner: str, index: int) -> None:
        with self._lock:
            job = self._owned(job_id, owner, JobState.COMPENSATING)
            job.compensated = merge_completed(job.compensated, (index,))

    def end_attempt(
        self,
        job_id: str,
        to: JobState,
        *,
        owner: str,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
        retry_at: float | None = None,
        completed: Collection[int] = (),
        announce: Announcement | None = None,
    ) -> None:
        to = JobState(to)
        check_end(to)
        self._can_announce(announce)
        raw = None if result is None else encode_result(result)
        with self._lock:
            job = self._owned(job_id, owner)
            self._move(job, to, self.clock.time(), note)
            if raw is not None:
                job.result = raw
            if error is not None:
                job.error = error
            if to is JobState.FAILED:
                job.completed = merge_completed(job.completed, completed)
                job.plan, job.retry_at = (
                    ("retry", retry_at)
                    if retry_at is not None
                    else (plan_after_failure(job.completed, job.compensated), None)
                )
        self._publish(announce)

    # -- state events and dead letters on the memory bus (AnnouncingJobStore) -----------
    def announces_on(self, bus: EventBusInterface) -> bool:
        return isinstance(bus, MemoryEventBus)

    def _can_announce(self, announce: Announcement | None) -> None:
        if announce is not None and not self.announces_on(announce.bus):
            raise ValueError(
                f"the memory job store cannot publish on {announce.bus!r}: only on a memory "
                "event bus (check announces_on first)"
            )

    @staticmethod
    def _publish(announce: Announcement | None) -> None:
        if announce is not None:
            announce.bus.publish(announce.topic, announce.payload)

    def create_announced(
        self,
        job_id: str,
        bus: EventBusInterface,
        topic: str,
        payload: Mapping[str, Any],
        *,
        message: str | None = None,
    ) -> None:
        announce = Announcement(bus, topic, payload)
        self._can_announce(announce)
        self.create(job_id, message=message)
        self._publish(announce)

    def transition_announced(
        self,
        job_id: str,
        to: JobState,
        bus: EventBusInterface,
        topic: str,
        payload: Mapping[str, Any],
        *,
        expect: Collection[JobState] | None = None,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        announce = Announcement(bus, topic, payload)
        self._can_announce(announce)
        self.transition(job_id, to, expect=expect, result=result, error=error, note=note)
        self._publish(announce)

    def bury(
        self,
        job_id: str,
        *,
        owner: str | None,
        error: str,
        letter: DeadLetter,
        announce: Announcement,
    ) -> str | None:
        self._can_announce(announce)
        bus = announce.bus
        with self._lock:
            job = self._live(job_id)
            now = self.clock.time()
            if job is None:
                job = self._jobs[job_id] = _Job(job_id, JobState.PENDING, 0, now, now)
                job.history.append(Transition(state=JobState.PENDING, at=now, attempt=0))
            if job.state in TERMINAL:
                return None
            if job.state in LEASED:
                if not may_bury(owner, job.owner, job.lease_until, now):
                    raise LeaseLostError(lease_lost_message(job_id, owner, job.state, job.owner))
                if job.state is JobState.RUNNING:
                    self._move(job, JobState.FAILED, now, None)
            if job.message is None and isinstance(letter.payload.get("message"), str):
                job.message = letter.payload["message"]
            entry_id = bus.append(letter.topic, letter.payload, key=letter.key)
            job.error = error
            self._move(job, JobState.DEAD, now, "dead-lettered")
        bus.publish(announce.topic, {**announce.payload, "dlq_id": entry_id})
        return entry_id

    def list(self, state: JobState | None = None, *, limit: int = 100) -> list[JobRecord]:
        wanted = None if state is None else JobState(state)
        with self._lock:
            jobs = [self._live(i) for i in list(self._jobs)]
            live = [j for j in jobs if j is not None and wanted in (None, j.state)]
            # newest first; ties by id descending, as Redis's ZREVRANGE orders them
            live.sort(key=lambda j: (j.updated_at, j.job_id), reverse=True)
            return [j.record() for j in live[: max(limit, 0)]]

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._live(job_id) is not None and self._jobs.pop(job_id) is not None
