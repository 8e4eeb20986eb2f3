"""Every message published twice to a pair of real Celery workers: a job never runs twice
at the same time, and a failing job never runs more often than its policy allows.

The second copy finds the first one's lease on the job record and waits (the task sends
it again with a countdown of what is left of the lease); once the first copy finished,
the second is skipped. A copy of a failed attempt is skipped as well, so each retry chain
is the job's one chain and the job gets one dead letter."""

from __future__ import annotations

import dcore_it_jobs as jobs
import pytest
from celery_support import HERE, wait_terminal

from dcore import Environment, JobState, RetryPolicy, use_environment
from dcore.celery import TASK_NAME, queue_for

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


@pytest.fixture
def pair(dcore_celery_worker):
    """Two worker processes (two pool children each) on one queue."""
    first = dcore_celery_worker(
        ["dcore_it_jobs"], pool="prefork", concurrency=2, pythonpath=[str(HERE)], lease_ttl=3.0
    )
    second = dcore_celery_worker(
        ["dcore_it_jobs"], pool="prefork", concurrency=2, pythonpath=[str(HERE)], **_same_as(first)
    )
    return first, second


def _same_as(worker) -> dict:
    s = worker.settings
    return {"key_prefix": s.key_prefix, "celery_queue": s.celery_queue, "lease_ttl": 3.0}


def _publish_twice(worker, env: Environment, contexts, retry=None) -> list[str]:
    ids = []
    for ctx in contexts:
        handle = jobs.build(ctx, retry=retry).run()
        message = env.jobs.get(handle.job_id).message
        worker.client.send_task(
            TASK_NAME, args=[message], queue=queue_for(ctx.shard_key, worker.settings)
        )
        ids.append(handle.job_id)
    return ids


def test_a_job_published_twice_runs_once_and_never_alongside_itself(pair):
    first, _ = pair
    with Environment(first.settings) as env, use_environment(env):
        ids = _publish_twice(
            first, env, [jobs.WorkContext(n=i, work_seconds=0.8) for i in range(10)]
        )
        records = wait_terminal(env, ids, TIMEOUT)
        assert {r.state for r in records.values()} == {JobState.SUCCEEDED}
        assert jobs.runs_per_job(ids) == dict.fromkeys(ids, 1)
        assert jobs.runs_per_job(ids, "overlaps") == dict.fromkeys(ids, 0)


def test_a_failing_job_published_twice_runs_at_most_its_attempts_and_dies_once(pair):
    first, _ = pair
    policy = RetryPolicy(attempts=3, initial=0.3, backoff=1.0)
    with Environment(first.settings) as env, use_environment(env):
        ids = _publish_twice(
            first,
            env,
            [jobs.WorkContext(n=i, fail_attempts=99, work_seconds=0.2) for i in range(10)],
            retry=policy,
        )
        records = wait_terminal(env, ids, TIMEOUT)
        assert {r.state for r in records.values()} == {JobState.DEAD}
        assert {r.attempt for r in records.values()} == {3}
        assert jobs.runs_per_job(ids) == dict.fromkeys(ids, 3)
        assert jobs.runs_per_job(ids, "overlaps") == dict.fromkeys(ids, 0)
        letters = [e.payload["job_id"] for e in env.events.entries(env.settings.dlq_topic)]
        assert sorted(letters) == sorted(ids)  # exactly one dead letter each
