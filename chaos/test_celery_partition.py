"""A 3 s Redis partition in the middle of 500 jobs through Celery: none is lost.

The producer (this test), the broker connection, the job store and a real Celery worker
subprocess all reach Redis through one proxy. After 150 jobs are enqueued the proxy is
disabled for 3 s (a ChaosPlan in the background) while the worker is busy with the
backlog and the producer keeps enqueueing. During the partition:

- an enqueue fails with a dcore error raised to the caller (the job store or the broker
  is unreachable): nothing is dropped silently. The producer retries that work item
  with backoff until an enqueue is acknowledged (``run()`` returned a handle);
- the worker loses its broker and job-store connections; jobs it had taken stay
  unacknowledged and come back after the broker's visibility timeout (5 s here).

Two things below dcore can go wrong here, and the scenario shows what dcore's records
make of them (it found both):

- kombu's Redis transport takes a message with ``BRPOP``. If the connection is cut
  after Redis popped the message and before the worker read the reply, the message is
  gone from the broker (kombu #1733, reverted in #2154). The job's record still holds
  its whole ``JobMessage`` (``PENDING``), so it is recoverable: once the backlog is
  quiet and the message is neither queued nor unacknowledged, the scenario re-sends
  the stored message, as an operator (or a sweeper) would;
- the worker can die of the connection loss (kombu: ``Unrecoverable error:
  AttributeError ... 'hostname'`` while restoring a rejected message). Workers run
  under a supervisor in production; the scenario restarts a dead worker the same way.

Both are counted and reported. The invariant after the heal: every acknowledged job
ends SUCCEEDED or DEAD (a job re-sent from its record counts only if the broker really
had lost it), and every one of the 500 work items has an acknowledged job.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import chaos_jobs
import pytest

from dcore import DcoreError, Environment, JobMessage, JobState, RetryPolicy, use_environment
from dcore._core.retry import call_with_retry
from dcore.celery import TASK_NAME, queue_for
from dcore.dispatchers.celery import celery_app
from dcore.errors import JobNotFoundError
from dcore.services.jobs import TERMINAL
from dcore_testing.chaos import ChaosPlan
from dcore_testing.chaos.services import ChaosRedis

pytestmark = pytest.mark.chaos

HERE = Path(__file__).parent
JOBS = 500
PARTITION_AFTER = 150
PARTITION_SECONDS = 3.0
WORK_SECONDS = 0.01
VISIBILITY_TIMEOUT = 5.0
#: no job finished for this long: the backlog is done or stuck (visibility timeout,
#: kombu's restore sweep and a reconnect back-off fit in it)
QUIET = VISIBILITY_TIMEOUT + 7.0
#: bound for every acknowledged job to finish after the last enqueue
SETTLE_DEADLINE = 60.0
#: the producer's retry of one work item: 0.05 s doubling to 0.25 s, well past 3 s
ENQUEUE_RETRY = RetryPolicy(
    attempts=60, initial=0.05, backoff=2.0, max_delay=0.25, retry_on=DcoreError
)


class Supervisor:
    """Restarts the worker if it died (exited, or logged an unrecoverable error), as
    systemd or Kubernetes would; counts the restarts."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.restarts = 0
        self._log_offset = 0

    def _crashed(self) -> bool:
        if self.worker.proc is None or self.worker.proc.poll() is not None:
            return True
        try:
            with self.worker.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return b"Unrecoverable error" in log.read()
        except OSError:
            return False

    def check(self) -> None:
        if self._crashed():
            self.restarts += 1
            self._log_offset = self.worker.log_path.stat().st_size
            self.worker.restart()


def states(env: Environment, job_ids: Iterable[str]) -> dict[str, JobState | None]:
    """Each job's state (None: no record)."""
    found: dict[str, JobState | None] = {}
    for job_id in job_ids:
        try:
            found[job_id] = env.jobs.get(job_id).state
        except JobNotFoundError:
            found[job_id] = None
    return found


def wait_quiet(
    env: Environment, job_ids: list[str], supervisor: Supervisor, deadline: float
) -> dict[str, JobState | None]:
    """Poll until every job is terminal, no job has finished for QUIET seconds, or the
    deadline passes; the supervisor restarts a dead worker meanwhile."""
    last_done, last_change = -1, time.monotonic()
    while True:
        seen = states(env, job_ids)
        done = sum(state in TERMINAL for state in seen.values())
        now = time.monotonic()
        if done != last_done:
            last_done, last_change = done, now
        if done == len(job_ids) or now - last_change > QUIET or now > deadline:
            return seen
        supervisor.check()
        time.sleep(0.1)  # polling another process's progress: nothing to wait on here


def held_by_broker(direct: Any, job_id: str) -> bool:
    """Whether the broker still holds a message for ``job_id``: in a queue (any list
    key) or unacknowledged (kombu's ``unacked`` hash, restored after the visibility
    timeout)."""
    needle = job_id.encode()
    for key in direct.scan_iter(_type="LIST"):
        if any(needle in item for item in direct.lrange(key, 0, -1)):
            return True
    return any(needle in value for value in direct.hvals("unacked"))


def test_no_job_lost_when_redis_is_partitioned_for_3s_in_the_middle_of_500_celery_jobs(
    dcore_chaos_redis: ChaosRedis, dcore_celery_worker: Any, record_property: Any
) -> None:
    """Invariant: every acknowledged enqueue ends SUCCEEDED or DEAD after the heal; every
    failed enqueue surfaced as a DcoreError to the producer, whose retry then got each of
    the 500 work items acknowledged; a job is re-sent from its record only when its
    message is gone from the broker while its record is PENDING with the message kept;
    no failed enqueue left a job running or failed."""
    worker = dcore_celery_worker(
        ["chaos_jobs"], pool="prefork", concurrency=2, pythonpath=[str(HERE)],
        redis_url=dcore_chaos_redis.url, celery_broker_url=dcore_chaos_redis.url,
        celery_visibility_timeout=VISIBILITY_TIMEOUT,
    )  # fmt: skip
    supervisor = Supervisor(worker)
    producer = Environment(worker.settings)
    acked: dict[int, str] = {}  # work item -> job id of its acknowledged enqueue
    refused: list[str] = []  # job ids whose enqueue raised
    errors: list[BaseException] = []
    plan = ChaosPlan(seed=3)
    plan.at(0).partition(dcore_chaos_redis.proxy, for_=PARTITION_SECONDS)
    run = None

    def enqueue(n: int) -> str:
        ctx = chaos_jobs.ChaosWork(n=n, work_seconds=WORK_SECONDS)
        try:
            return str(chaos_jobs.build(ctx).run().job_id)
        except BaseException:
            refused.append(ctx.job_id)
            raise

    direct = dcore_chaos_redis.direct_url
    checker = Environment(worker.settings.model_copy(update={"redis_url": direct}))
    try:
        with use_environment(producer):
            for n in range(JOBS):
                if n == PARTITION_AFTER:
                    run = plan.run_in_background()
                acked[n] = call_with_retry(
                    lambda n=n: enqueue(n),  # type: ignore[misc]
                    ENQUEUE_RETRY,
                    producer.clock,
                    before_sleep=lambda _attempt, exc, _delay: errors.append(exc),
                )
        assert run is not None
        run.join(PARTITION_SECONDS + 10)
        assert run.done, "the chaos plan did not finish"

        job_ids = list(acked.values())
        deadline = time.monotonic() + SETTLE_DEADLINE
        seen = wait_quiet(checker, job_ids, supervisor, deadline)
        unfinished = [j for j, state in seen.items() if state not in TERMINAL]
        dropped = [j for j in unfinished if not held_by_broker(dcore_chaos_redis.direct, j)]
        records = {j: checker.jobs.get(j) for j in dropped}
        app = celery_app(checker)
        for job_id, record in records.items():
            if record.state is JobState.PENDING and record.message:
                shard = JobMessage.parse(record.message).shard
                app.send_task(TASK_NAME, args=[record.message], task_id=job_id,
                              queue=queue_for(shard, checker.settings))  # fmt: skip
        final = wait_quiet(checker, job_ids, supervisor, deadline)
        leftovers = states(checker, refused)
        attempts = {j: checker.jobs.get(j).attempts for j, s in final.items() if s is not None}
    finally:
        if run is not None:
            run.stop()
        producer.close()
        checker.close()

    summary = (
        f"{JOBS} jobs, {len(errors)} enqueue failures surfaced and retried, "
        f"{sum(s is JobState.SUCCEEDED for s in final.values())} succeeded, "
        f"{sum(s is JobState.DEAD for s in final.values())} dead, "
        f"{sum(n > 1 for n in attempts.values())} started more than once, "
        f"{len(dropped)} dropped by the broker and re-sent from the job record, "
        f"{supervisor.restarts} worker restarts; failed enqueues left: "
        f"{sorted(Counter(str(s) for s in leftovers.values()).items())}"
    )
    print(summary)
    record_property("celery_partition_summary", summary)

    assert [(e.event, e.error) for e in run.log] == [
        ("apply", None), ("revert", None)
    ], run.log  # fmt: skip
    assert errors, "the partition surfaced no enqueue failure: did it land mid-run?"
    assert all(isinstance(e, DcoreError) for e in errors)
    assert sorted(acked) == list(range(JOBS))
    unrecoverable = {j: str(r.state) for j, r in records.items()
                     if r.state is not JobState.PENDING or not r.message}  # fmt: skip
    assert not unrecoverable, f"gone from the broker and not recoverable: {unrecoverable}"
    lost = {job_id: str(state) for job_id, state in final.items() if state not in TERMINAL}
    assert not lost, f"lost jobs ({summary}): {lost}\n{worker.log_tail()}"
    stuck = {j: s for j, s in leftovers.items() if s in (JobState.RUNNING, JobState.FAILED)}
    assert not stuck, f"failed enqueues left jobs in flight: {stuck}"
