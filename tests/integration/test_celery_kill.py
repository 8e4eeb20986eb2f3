"""``kill -9`` of Celery workers in the middle of jobs: nothing is lost.

A killed pool child returns its message at once (``reject_on_worker_lost``); a killed
worker (main process and children) gets its unacknowledged messages back after the
broker's visibility timeout (5 s here, swept every second). A message the broker lost
outright (popped by a worker killed before it recorded it) is re-sent from its job record
with ``resend_stale``. Every job must end SUCCEEDED (or DEAD for a stated reason); the
test records how many ran twice and how many had to be re-sent.
"""

from __future__ import annotations

import time

import dcore_it_jobs as jobs
import pytest
from celery_support import HERE, unfinished, wait_terminal

from dcore import Environment, JobState, use_environment
from dcore.celery import resend_stale

pytestmark = pytest.mark.integration

JOBS = 200
DEADLINE = 80.0
#: after this many more jobs have succeeded, kill a busy pool child ...
CHILD_KILL_EVERY = 20
#: ... and at these counts, kill the whole worker (then start a new one)
WORKER_KILLS_AT = (70, 140)
#: a job still PENDING this long after it was sent was lost by the broker (the visibility
#: timeout is 5 s); re-sending one that was merely slow only makes a skipped duplicate
RESEND_AFTER = 10.0
RESEND_DEADLINE = 30.0


def _succeeded(env: Environment) -> int:
    return len(env.jobs.list(JobState.SUCCEEDED, limit=JOBS + 10))


def test_jobs_survive_repeated_kill_9_of_pool_children_and_whole_workers(
    celery_worker, record_property
):
    worker = celery_worker(["dcore_it_jobs"], pool="prefork", concurrency=2,
                           pythonpath=[str(HERE)], celery_visibility_timeout=5.0)
    env = Environment(worker.settings)
    with use_environment(env):
        handles = [jobs.build(jobs.WorkContext(n=i, work_seconds=0.05)).run()
                   for i in range(JOBS)]
        job_ids = [h.job_id for h in handles]

        child_kills = worker_kills = 0
        next_child_kill = CHILD_KILL_EVERY
        worker_kill_points = list(WORKER_KILLS_AT)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            done = _succeeded(env)
            if done >= JOBS:
                break
            if worker_kill_points and done >= worker_kill_points[0]:
                worker_kill_points.pop(0)
                worker.restart()  # SIGKILL to the process group, then a fresh worker
                worker_kills += 1
            elif done >= next_child_kill:
                next_child_kill += CHILD_KILL_EVERY
                if worker.kill_pool_child() is not None:
                    child_kills += 1
            time.sleep(0.02)  # polling another process's progress

        records = wait_terminal(env, job_ids, min(25.0, max(1.0, deadline - time.monotonic())))
        # kombu's Redis transport pops a message before the worker records it as
        # unacknowledged: a worker SIGKILLed in that instant loses it while its job stays
        # PENDING with the whole message. dcore's recovery for exactly that case:
        resent = resend_stale(env, older_than=RESEND_AFTER) if unfinished(records) else []
        if resent:
            records = wait_terminal(env, job_ids, RESEND_DEADLINE)
        runs = jobs.runs_per_job(job_ids)
    env.close()

    started_twice = sum(1 for r in records.values() if r.attempts > 1)
    ran_twice = sum(1 for n in runs.values() if n > 1)
    dead = [r for r in records.values() if r.state is JobState.DEAD]
    summary = (f"{JOBS} jobs, {child_kills} pool-child kills, {worker_kills} worker kills: "
               f"{started_twice} started more than once, {ran_twice} completed twice, "
               f"{len(dead)} dead, {len(resent)} re-sent after the broker lost them")
    print(summary)
    record_property("celery_kill_summary", summary)
    record_property("jobs_started_twice", started_twice)
    record_property("jobs_completed_twice", ran_twice)
    record_property("jobs_resent", len(resent))

    assert not unfinished(records), f"lost jobs ({summary}):\n{worker.log_tail()}"
    assert worker_kills == len(WORKER_KILLS_AT)
    assert child_kills >= 3
    assert started_twice >= 1  # the kills did land in the middle of jobs
    assert all("WorkerLost" in (r.error or "") for r in dead)
    assert all(n >= 1 for job_id, n in runs.items()
               if records[job_id].state is JobState.SUCCEEDED)
