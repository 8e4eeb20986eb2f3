"""``kill -9`` of Celery workers in the middle of 500 jobs, on default settings: nothing
is lost, and nobody has to run a command.

Ten times the whole worker (main process and pool children) is SIGKILLed and a new one
started, as a supervisor would; between those, busy pool children are killed. A killed
pool child returns its message at once (``reject_on_worker_lost``) and the delivery
waits for the dead child's lease to run out before it takes the job over. A killed
worker's jobs come back through the recovery sweep of the next worker: RUNNING jobs once
their lease ran out (``DCORE_LEASE_TTL``, 15 s), jobs it had taken but not started once
they were PENDING ``DCORE_RECOVERY_PENDING_AFTER`` (30 s) with an empty queue, and any
message kombu lost when the worker died in the middle of taking it. The broker's own
visibility timeout (300 s) never has to come into play.
"""

from __future__ import annotations

import time

import dcore_it_jobs as jobs
import pytest
from celery_support import HERE, unfinished, wait_terminal

from dcore import Environment, JobState, use_environment

pytestmark = pytest.mark.integration

JOBS = 500
WORKER_KILLS = 10
#: kill the whole worker after every this many more jobs succeeded ...
WORKER_KILL_EVERY = 40
#: ... and a busy pool child in between
CHILD_KILL_EVERY = 20
#: the README states this bound: a lease, a pending cut-off and two sweeps after the
#: last kill, on top of the work itself
SETTLE = 120.0
#: only a safety net: the kills come every WORKER_KILL_EVERY jobs, however slow the
#: machine is
KILLING = 600.0


def _succeeded(env: Environment) -> int:
    return len(env.jobs.list(JobState.SUCCEEDED, limit=JOBS + 10))


def test_500_jobs_survive_10_whole_worker_kills_on_default_settings(
    dcore_celery_worker, record_property
):
    worker = dcore_celery_worker(
        ["dcore_it_jobs"], pool="prefork", concurrency=2, pythonpath=[str(HERE)]
    )
    defaults = worker.settings
    assert (defaults.lease_ttl, defaults.recovery_interval, defaults.celery_visibility_timeout) == (
        15.0,
        10.0,
        300.0,
    )
    env = Environment(worker.settings)
    started = time.monotonic()
    with use_environment(env):
        job_ids = [
            jobs.build(jobs.WorkContext(n=i, work_seconds=0.05)).run().job_id for i in range(JOBS)
        ]
        worker_kills = child_kills = 0
        next_worker_kill, next_child_kill = WORKER_KILL_EVERY, CHILD_KILL_EVERY // 2
        last_kill = time.monotonic()
        while worker_kills < WORKER_KILLS and time.monotonic() - started < KILLING:
            done = _succeeded(env)
            if done >= next_worker_kill:
                worker.restart()  # SIGKILL to the process group, then a fresh worker
                worker_kills += 1
                next_worker_kill = done + WORKER_KILL_EVERY
                last_kill = time.monotonic()
            elif done >= next_child_kill:
                next_child_kill = done + CHILD_KILL_EVERY
                if worker.kill_pool_child() is not None:
                    child_kills += 1
            time.sleep(0.02)  # polling another process's progress
        records = wait_terminal(env, job_ids, SETTLE)
        recovered_in = time.monotonic() - last_kill
        runs = jobs.runs_per_job(job_ids)
    env.close()

    states = {state: sum(1 for r in records.values() if r.state is state) for state in JobState}
    started_twice = sum(1 for r in records.values() if r.attempts > 1)
    summary = (
        f"{JOBS} jobs, {worker_kills} worker kills, {child_kills} pool-child kills: "
        f"{states[JobState.SUCCEEDED]} succeeded, {started_twice} started more than "
        f"once, all done {recovered_in:.0f} s after the last kill, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    print(summary)
    record_property("celery_kill_summary", summary)

    assert worker_kills == WORKER_KILLS, summary
    assert not unfinished(records), f"lost jobs ({summary}):\n{worker.log_tail()}"
    assert states[JobState.SUCCEEDED] == JOBS, summary
    assert started_twice >= WORKER_KILLS  # the kills did land in the middle of jobs
    assert all(runs[job_id] >= 1 for job_id in job_ids)
