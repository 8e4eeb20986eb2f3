"""The job store: one record per job, moved through a small state machine.

::

    PENDING ──► RUNNING ──► SUCCEEDED
       │          │ ▲ (redelivered after a crash)
       │          ▼ │
       │        FAILED ──► PENDING (retry scheduled) / RUNNING (retry started)
       ▼          │  │
      DEAD ◄──────┘  └──► COMPENSATING ──► DEAD   (its completed stages undone first)
                                           DEAD ──► PENDING (replayed from the DLQ)

Every transition is atomic and checked against this table; ``expect=`` turns it into a
compare-and-set, so two workers racing to start one PENDING job cannot both win.

**Leases.** A delivery starts its attempt with :meth:`~JobStorageInterface.claim`, which
gives it the job's lease (its delivery id as ``owner``, until ``lease_until``); it renews
the lease while it runs (:meth:`~JobStorageInterface.renew`) and ends the attempt with
:meth:`~JobStorageInterface.end_attempt`, fenced by its id: a delivery that lost the
lease (another took over after it expired) can no longer move the record. A claim of an
attempt that already ended, or is older than the record's, is refused, so a duplicate
delivery never adds an attempt; a claim while another delivery's lease is live is refused
as busy. Which of these outcomes leads to what is decided in :mod:`dcore._core.delivery`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from pydantic import BaseModel, Field

from dcore._plugins.registry import define_interface
from dcore.errors import IllegalTransitionError
from dcore.services.base import ServiceInterface

if TYPE_CHECKING:
    from dcore.services.events import EventBusInterface

__all__ = [
    "ALLOWED",
    "LEASED",
    "Announcement",
    "AnnouncingJobStore",
    "Claim",
    "ClaimStatus",
    "DeadLetter",
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
    COMPENSATING = "COMPENSATING"
    DEAD = "DEAD"


ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.DEAD}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.RUNNING}),
    JobState.FAILED: frozenset(
        {JobState.PENDING, JobState.RUNNING, JobState.DEAD, JobState.COMPENSATING}
    ),
    JobState.COMPENSATING: frozenset({JobState.COMPENSATING, JobState.DEAD}),
    JobState.DEAD: frozenset({JobState.PENDING}),
    JobState.SUCCEEDED: frozenset(),
}
#: states a delivery holds a lease in
LEASED = frozenset({JobState.RUNNING, JobState.COMPENSATING})

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
    #: how many times the job was started (every claim that started it)
    attempts: int = 0
    created_at: float
    updated_at: float
    result: Any = None
    error: str | None = None
    message: str | None = None
    history: list[Transition] = Field(default_factory=list)
    #: the attempt (the message's attempt number) last started
    attempt: int = 0
    #: the delivery holding the job's lease while it is RUNNING, and until when
    owner: str | None = None
    lease_until: float | None = None
    #: deliveries of the current attempt lost with their worker (taken over after expiry)
    lost: int = 0
    #: with FAILED: what follows, "retry" (at ``retry_at``) or "dead" (being dead-lettered)
    plan: str | None = None
    retry_at: float | None = None
    #: stages (by index) that completed in some attempt and can compensate, and those
    #: whose compensation has run (see dcore._core.saga)
    completed: list[int] = Field(default_factory=list)
    compensated: list[int] = Field(default_factory=list)


class ClaimStatus(StrEnum):
    STARTED = "started"  # this delivery holds the job now
    BUSY = "busy"  # another delivery's lease is live
    FINISHED = "finished"  # the job is SUCCEEDED or DEAD
    ENDED = "ended"  # this attempt ended (FAILED), or the record is at a newer one
    MISSING = "missing"  # no record (the job was scheduled through another job store)
    COMPENSATING = "compensating"  # this delivery took over an interrupted compensation


class Claim(NamedTuple):
    """What :meth:`JobStorageInterface.claim` found (and did)."""

    status: ClaimStatus
    state: JobState | None = None
    #: the record's attempt after the claim
    attempt: int = 0
    #: STARTED: deliveries of this attempt lost before this one (a takeover counts one)
    lost: int = 0
    #: BUSY: seconds until the live lease runs out
    retry_in: float = 0.0
    #: ENDED on a FAILED record: its plan ("retry" or "dead")
    plan: str | None = None


class Announcement(NamedTuple):
    """A state event a store publishes on ``bus`` in the same step as the move."""

    bus: EventBusInterface
    topic: str
    payload: Mapping[str, Any]


class DeadLetter(NamedTuple):
    """An entry for the durable dead-letter ``topic``; ``key`` makes the append
    idempotent (a second append with the same key adds nothing)."""

    topic: str
    payload: Mapping[str, Any]
    key: str


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
            f"job {job_id} cannot go from {current} to {to}; from {current} it can go to {allowed}"
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
        """Atomically start ``attempt`` for delivery ``owner`` holding a ``lease`` of that
        many seconds, unless the job is finished, the attempt ended or is older than the
        record's (ENDED), or another delivery's lease is live (BUSY). A RUNNING record whose
        lease ran out is taken over (its delivery was lost: ``lost`` counts it).
        ``announce`` is published only when the attempt started."""

    @abstractmethod
    def renew(self, job_id: str, *, owner: str, lease: float) -> bool:
        """Extend ``owner``'s lease to ``lease`` seconds from now; False if it holds none."""

    @abstractmethod
    def compensate(
        self,
        job_id: str,
        *,
        owner: str,
        lease: float,
        announce: Announcement | None = None,
    ) -> Claim:
        """Start (from FAILED whose plan is "compensate") or take over (from COMPENSATING
        whose lease ran out) the job's compensation, for delivery ``owner``: the job is
        COMPENSATING under its lease (STARTED). BUSY while another delivery's lease is
        live, FINISHED when the job is DEAD or SUCCEEDED, ENDED from any other state
        (with the plan of a FAILED one)."""

    @abstractmethod
    def mark_completed(self, job_id: str, *, owner: str, index: int) -> None:
        """Record that stage ``index`` (one that can compensate) completed, as it happens
        (fenced by ``owner``'s RUNNING lease): a job that dies later still knows what to
        undo."""

    @abstractmethod
    def mark_compensated(self, job_id: str, *, owner: str, index: int) -> None:
        """Record that stage ``index`` was compensated (fenced by ``owner``'s lease)."""

    @abstractmethod
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
        """Move ``owner``'s RUNNING attempt to SUCCEEDED or FAILED and drop its lease;
        LeaseLostError if ``owner`` no longer holds it. FAILED adds ``completed`` (the
        indexes of stages that completed and can compensate) to the record's and records
        its plan: "retry" at ``retry_at``; without one, "compensate" while a completed
        stage is not compensated, else "dead". ``announce`` (see
        AnnouncingJobStore) publishes in the same step."""

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
    that is a large part of what a worker spends per job. :mod:`dcore._core.lifecycle`
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

    @abstractmethod
    def bury(
        self,
        job_id: str,
        *,
        owner: str | None,
        error: str,
        letter: DeadLetter,
        announce: Announcement,
    ) -> str | None:
        """Dead-letter the job in one atomic step: (fenced by ``owner`` when given) record
        a RUNNING attempt FAILED (a COMPENSATING job goes straight on), append ``letter``
        to the bus's durable topic unless its key was
        appended before, move the job DEAD and publish ``announce`` (its payload gets the
        entry id as ``dlq_id``). Returns the entry id.
        A job already SUCCEEDED or DEAD is left as it is (None: nothing appended); a
        missing record is made. Without ``owner``, a RUNNING job whose lease is live is
        refused (LeaseLostError). So a job is never DEAD without its dead letter, and
        never has two."""
