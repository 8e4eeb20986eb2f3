"""``memory`` job store: the job state machine in process, timestamps and TTLs on the
injected clock; the reference the Redis job store is tested against."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from dcore.backends._shared import (
    DEFAULT_JOB_TTL,
    encode_result,
    exists_message,
    not_found,
    positive,
    states,
)
from dcore.core.clock import Clock, SystemClock
from dcore.core.plugins import register_plugin
from dcore.errors import IllegalTransitionError
from dcore.services.jobs import (
    TERMINAL,
    JobRecord,
    JobState,
    JobStorageInterface,
    Transition,
    check,
)

if TYPE_CHECKING:
    from dcore.core.environment import Environment

__all__ = ['MemoryJobStore']

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
        )




@register_plugin("in_memory")
@register_plugin("memory")
class MemoryJobStore(JobStorageInterface):
    """Job records in a dict behind one lock; terminal records expire after ``ttl``
    seconds of the clock, like the Redis store's key TTL."""

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
