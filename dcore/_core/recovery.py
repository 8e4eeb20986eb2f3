"""Finding jobs whose delivery was lost, so they can be sent again without an operator.

A broker can lose a delivery: a whole worker killed takes its unacknowledged messages
with it until the broker's visibility timeout, a connection cut at the wrong instant
loses a popped message for good, a worker dying between recording a failure and sending
the retry loses the retry. The job store knows better than the broker, so a periodic
sweep reads it:

- RUNNING (or COMPENSATING) whose lease ran out: its worker stopped renewing (it died);
  send the attempt again, and the new delivery takes the job over (or resumes undoing
  its completed stages);
- FAILED with a retry due longer than ``grace`` ago: the retry was never sent (or lost);
- FAILED planning its death: a dead-lettering was interrupted; it is finished here;
- FAILED planning its compensation for longer than ``grace``: its worker died before
  undoing the completed stages; send it again, and the new delivery undoes them;
- PENDING for longer than ``pending_after`` while its queue is empty: the message is
  nowhere (a job waiting behind a backlog is left alone).

Sending twice is harmless: a duplicate delivery is deferred while the lease is live and
skipped once the attempt ended (:mod:`dcore._core.delivery`). Jobs recorded without a
message (in-process dispatchers carrying closures) cannot be sent and are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dcore._core.lifecycle import dead_letter
from dcore._core.message import JobMessage
from dcore.errors import DcoreError, JobStateError, MessageError
from dcore.services.jobs import JobRecord, JobState

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["Lost", "lost_jobs", "recover"]


@dataclass(frozen=True)
class Lost:
    """A job to send again: its ``message`` (JSON, at the attempt to deliver)."""

    job_id: str
    message: str
    shard: int | None
    reason: str


def lost_jobs(
    env: Environment,
    *,
    pending_after: float,
    grace: float,
    queue_empty: Callable[[int | None], bool] = lambda shard: True,
    limit: int = 1000,
) -> list[Lost]:
    """The jobs whose delivery looks lost now (see the module docstring); a FAILED job
    whose dead-lettering was interrupted is dead-lettered on the way."""
    now = env.clock.time()
    found: list[Lost] = []
    for state in (JobState.RUNNING, JobState.COMPENSATING):
        for record in env.jobs.list(state, limit=limit):
            if record.lease_until is None or record.lease_until < now:
                found += _resend(
                    record, record.attempt or 1, "its worker stopped renewing the lease"
                )
    for record in env.jobs.list(JobState.FAILED, limit=limit):
        if record.plan == "dead":
            _finish_burial(env, record)
        elif record.plan == "retry" and (record.retry_at or 0) + grace < now:
            found += _resend(record, record.attempt + 1, "its retry was due and never came")
        elif record.plan == "compensate" and record.updated_at + grace < now:
            found += _resend(record, record.attempt, "its compensation never started")
    for record in env.jobs.list(JobState.PENDING, limit=limit):
        if record.updated_at + pending_after < now:
            lost = _resend(record, record.attempt + 1, "it was never started")
            found += [job for job in lost if queue_empty(job.shard)]
    return found


def _resend(record: JobRecord, attempt: int, reason: str) -> list[Lost]:
    if not record.message:
        return []
    try:
        message = JobMessage.parse(record.message)
    except MessageError:
        return []  # a worker dead-letters it if it is ever delivered
    text = message.with_attempt(max(attempt, 1)).to_json()
    return [Lost(record.job_id, text, message.shard, reason)]


def _finish_burial(env: Environment, record: JobRecord) -> None:
    with contextlib.suppress(JobStateError):  # another sweep or delivery finished it
        dead_letter(env, record.job_id, error=record.error or "dead", attempt=record.attempt)


def recover(
    env: Environment,
    send: Callable[[Lost], None],
    *,
    queue_empty: Callable[[int | None], bool] = lambda shard: True,
    limit: int = 1000,
) -> list[Lost]:
    """Send every lost job again with ``send``; returns what was sent. Uses the
    environment's ``DCORE_RECOVERY_PENDING_AFTER`` and a grace of one lease."""
    settings = env.settings
    lost = lost_jobs(env, pending_after=settings.recovery_pending_after,
                     grace=settings.lease_ttl, queue_empty=queue_empty, limit=limit)  # fmt: skip
    sent = []
    for job in lost:
        try:
            send(job)
        except DcoreError:
            continue
        sent.append(job)
    return sent
