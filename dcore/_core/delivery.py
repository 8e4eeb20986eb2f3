"""What follows one delivery of a job: the one decision every engine carries out.

A delivery first claims its attempt (see :meth:`JobStorageInterface.claim
<dcore.services.jobs.JobStorageInterface.claim>`), then runs it; what the claim found or
how the attempt ended goes in, an :class:`Outcome` comes out::

    claim found                              → outcome
    STARTED, lost < MAX_LOST_DELIVERIES      → RUN
    STARTED, lost ≥ MAX_LOST_DELIVERIES      → DEAD  (its worker keeps dying)
    COMPENSATING (its lease ran out)         → COMPENSATE (resume undoing its stages)
    BUSY (another delivery's lease is live)  → DEFER until the lease would run out
    FINISHED (SUCCEEDED or DEAD)             → SKIP  (a duplicate)
    ENDED (this attempt failed, or is older) → SKIP; DEAD if the record says the failure
                                                was being dead-lettered (finish that)
    the job store unreachable                → REQUEUE

    attempt ended                            → outcome
    succeeded                                → ACK
    raised, marked give_up()                 → DEAD
    raised, not in the policy's retry_on     → DEAD
    raised, last attempt of the policy       → DEAD
    raised, otherwise                        → RETRY attempt + 1 after the policy's delay
    message malformed                        → DEAD
    the job store unreachable                → REQUEUE (the delivery goes back as it was)
    its lease lost to another delivery       → SKIP  (the newer delivery owns the job)

The thread engine, the Celery task and the simulated broker each only carry the outcome
out (schedule the retry, put the delivery back, ack); none of them decides anything, so a
simulated run takes every branch production takes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from dcore._core.retry import RetryPolicy
from dcore.services.jobs import Claim, ClaimStatus

__all__ = [
    "MAX_LOST_DELIVERIES",
    "REQUEUE_DELAY",
    "Action",
    "Ended",
    "LeaseLost",
    "Malformed",
    "Outcome",
    "Raised",
    "StoreUnreachable",
    "Succeeded",
    "after_attempt",
    "after_claim",
]

#: A job whose deliveries keep dying with their worker (out of memory, a crash in native
#: code) is dead-lettered after this many lost deliveries instead of looping forever.
MAX_LOST_DELIVERIES = 5
#: How long a delivery put back because the job store was unreachable waits to come back.
REQUEUE_DELAY = 1.0


class Action(StrEnum):
    RUN = "run"  # the claim succeeded: run the attempt
    ACK = "ack"  # the job succeeded
    RETRY = "retry"  # deliver ``attempt`` (the next one) after ``delay``
    DEAD = "dead"  # dead-letter the job now
    REQUEUE = "requeue"  # nothing could be recorded: put this delivery back after ``delay``
    DEFER = "defer"  # another delivery holds the job: try this one again after ``delay``
    SKIP = "skip"  # nothing to do: a duplicate, or the job belongs to a newer delivery
    COMPENSATE = "compensate"  # undo the completed stages of a job that failed for good


@dataclass(frozen=True)
class Outcome:
    """What to do next. ``attempt`` is the attempt the action concerns: for RETRY the
    next one, else this delivery's own."""

    action: Action
    attempt: int
    delay: float = 0.0
    reason: str | None = None


@dataclass(frozen=True)
class Succeeded:
    pass


@dataclass(frozen=True)
class Raised:
    """The attempt raised ``error`` (described as ``reason``); ``given_up`` if it was
    marked with :func:`~dcore.give_up`."""

    error: BaseException
    reason: str
    given_up: bool = False


@dataclass(frozen=True)
class Malformed:
    reason: str


@dataclass(frozen=True)
class StoreUnreachable:
    reason: str


@dataclass(frozen=True)
class LeaseLost:
    reason: str


Ended = Succeeded | Raised | Malformed | StoreUnreachable | LeaseLost


def after_claim(attempt: int, claim: Claim | StoreUnreachable) -> Outcome:
    """Whether a delivery of ``attempt`` runs, given what its claim found."""
    if isinstance(claim, StoreUnreachable):
        return Outcome(Action.REQUEUE, attempt, REQUEUE_DELAY, claim.reason)
    status = claim.status
    if status is ClaimStatus.COMPENSATING:
        return Outcome(Action.COMPENSATE, attempt, reason="resuming an interrupted compensation")
    if status is ClaimStatus.STARTED:
        if claim.lost >= MAX_LOST_DELIVERIES:
            return Outcome(Action.DEAD, attempt, reason=(
                f"WorkerLost: the worker running this job died {claim.lost} times (limit "
                f"{MAX_LOST_DELIVERIES}); not delivering it again"))  # fmt: skip
        return Outcome(Action.RUN, attempt)
    if status is ClaimStatus.BUSY:
        return Outcome(Action.DEFER, attempt, max(claim.retry_in, 0.0),
                       "another delivery of this job is running")  # fmt: skip
    if status is ClaimStatus.ENDED and claim.plan == "compensate":
        return Outcome(
            Action.COMPENSATE,
            attempt,
            reason="starting the compensation its failed delivery never began",
        )
    if status is ClaimStatus.ENDED and claim.plan == "dead":
        return Outcome(Action.DEAD, attempt, reason="finishing an interrupted dead-lettering")
    if status is ClaimStatus.FINISHED:
        what = f"the job is {claim.state}"
    else:
        what = (
            f"attempt {attempt} already ended "
            f"(the job is at attempt {claim.attempt}, {claim.state})"
        )
    return Outcome(Action.SKIP, attempt, reason=f"duplicate delivery skipped: {what}")


def after_attempt(
    policy: RetryPolicy, attempt: int, ended: Ended, rng: random.Random | None = None
) -> Outcome:
    """What follows attempt ``attempt`` of a job under ``policy``, given how it ended."""
    if isinstance(ended, Succeeded):
        return Outcome(Action.ACK, attempt)
    if isinstance(ended, StoreUnreachable):
        return Outcome(Action.REQUEUE, attempt, REQUEUE_DELAY, ended.reason)
    if isinstance(ended, LeaseLost):
        return Outcome(Action.SKIP, attempt, reason=ended.reason)
    if isinstance(ended, Malformed):
        return Outcome(Action.DEAD, attempt, reason=ended.reason)
    if ended.given_up or not policy.should_retry(ended.error) or attempt >= policy.attempts:
        return Outcome(Action.DEAD, attempt, reason=ended.reason)
    return Outcome(Action.RETRY, attempt + 1, policy.delay(attempt, rng), ended.reason)
