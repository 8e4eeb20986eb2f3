"""The job store: one record per job, moved through a small state machine.

::

    PENDING ──► RUNNING ──► SUCCEEDED
       │          │ ▲ (redelivered after a crash)
       │          ▼ │
       │        FAILED ──► PENDING (retry scheduled) / RUNNING (retry started)
       ▼          │
      DEAD ◄──────┘          DEAD ──► PENDING (replayed from the DLQ)

Every transition is atomic and checked against this table; ``expect=`` turns it into a
compare-and-set, so two workers racing to start one PENDING job cannot both win.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from dcore.core.plugins import define_interface
from dcore.errors import IllegalTransitionError
from dcore.services.base import ServiceInterface

if TYPE_CHECKING:
    from dcore.services.events import EventBusInterface

__all__ = [
    "ALLOWED",
    "AnnouncingJobStore",
    "JobRecord",
    "JobState",
    "JobStorageInterface",
    "Transition",
    "check",
]


class JobState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    DEAD = "DEAD"


ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.DEAD}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.PENDING, JobState.RUNNING, JobState.DEAD}),
    JobState.DEAD: frozenset({JobState.PENDING}),
    JobState.SUCCEEDED: frozenset(),
}

TERMINAL = frozenset({JobState.SUCCEEDED, JobState.DEAD})


class Transition(BaseModel):
    """One entry of a job's history."""

    state: JobState
    at: float
    attempt: int
    note: str | None = None


class JobRecord(BaseModel):
    job_id: str
    state: JobState = JobState.PENDING
    attempts: int = 0
    created_at: float
    updated_at: float
    result: Any = None
    error: str | None = None
    message: str | None = None
    history: list[Transition] = Field(default_factory=list)


def check(
    job_id: str, current: JobState, to: JobState, expect: Collection[JobState] | None
) -> None:
    """Raise IllegalTransitionError unless ``current → to`` is allowed (and expected)."""
    if expect is not None and current not in expect:
        wanted = "/".join(sorted(expect))
        raise IllegalTransitionError(
            f"job {job_id} is {current}, expected {wanted} for the move to {to}"
        )
    if to not in ALLOWED[current]:
        allowed = ", ".join(sorted(ALLOWED[current])) or "nothing (final state)"
        raise IllegalTransitionError(
            f"job {job_id} cannot go from {current} to {to}; from {current} it can go to "
            f"{allowed}"
        )


@define_interface
class JobStorageInterface(ServiceInterface):
    """Timestamps come from the environment's clock; results are stored as JSON."""

    service_name: ClassVar[str] = "jobs"

    @abstractmethod
    def create(self, job_id: str, *, message: str | None = None) -> JobRecord:
        """A new PENDING record. An existing id raises IllegalTransitionError, unless the
        job is DEAD or FAILED, in which case it moves back to PENDING (a re-schedule)."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """Raises JobNotFoundError for an unknown id."""

    @abstractmethod
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
        """Atomically move the job to ``to``. Moving to RUNNING counts an attempt."""

    @abstractmethod
    def list(self, state: JobState | None = None, *, limit: int = 100) -> list[JobRecord]:
        """Records (optionally only in ``state``), newest first."""

    @abstractmethod
    def delete(self, job_id: str) -> bool: ...


class AnnouncingJobStore(ABC):
    """A job store that can publish a move's state event itself, in the same atomic step.

    Where the store and the event bus live on one server (the Redis store and bus), the
    event goes out exactly when the move is made (never for a refused move, never lost
    between the two), and the pair costs one round trip instead of two: on a short job
    that is a large part of what a worker spends per job. :mod:`dcore.core.lifecycle`
    uses it when :meth:`announces_on` says so, else it moves, then publishes.

    These methods return nothing: the record is not read back."""

    @abstractmethod
    def announces_on(self, bus: EventBusInterface) -> bool:
        """Whether this store can publish on ``bus`` itself (it shares its server)."""

    @abstractmethod
    def create_announced(
        self,
        job_id: str,
        bus: EventBusInterface,
        topic: str,
        payload: Mapping[str, Any],
        *,
        message: str | None = None,
    ) -> None:
        """:meth:`JobStorageInterface.create`, publishing ``payload`` on ``topic``."""

    @abstractmethod
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
        """:meth:`JobStorageInterface.transition`, publishing ``payload`` on ``topic``."""
