"""Jobs shipped through a real Celery worker subprocess on the test Redis."""

from __future__ import annotations

import dcore_it_jobs as jobs
import pytest
from celery_support import HERE, unfinished, wait_terminal

from dcore import Environment, JobState, RetryPolicy, use_environment

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@pytest.fixture
def worker(dcore_celery_worker):
    return dcore_celery_worker(
        ["dcore_it_jobs"], pool="solo", pythonpath=[str(HERE)], celery_queues=2
    )


@pytest.fixture
def env(worker):
    environment = Environment(worker.settings)
    with use_environment(environment):
        yield environment
    environment.close()


def test_job_shipped_through_celery_succeeds_in_the_redis_job_store(env):
    handle = jobs.build(jobs.WorkContext(n=7)).run()

    assert handle.status == "scheduled"
    record = wait_terminal(env, [handle.job_id], TIMEOUT)[handle.job_id]
    assert record.state is JobState.SUCCEEDED, record
    assert record.result == {"n": 7, "runs": 1}
    assert [t.state for t in record.history][-2:] == [JobState.RUNNING, JobState.SUCCEEDED]


def test_failed_attempt_is_retried_after_its_countdown_and_then_succeeds(env):
    policy = RetryPolicy(attempts=3, initial=0.2, backoff=1.0)
    handle = jobs.build(jobs.WorkContext(n=1, fail_attempts=2), retry=policy).run()

    record = wait_terminal(env, [handle.job_id], TIMEOUT)[handle.job_id]
    assert record.state is JobState.SUCCEEDED, record
    assert record.attempts == 3
    assert record.result == {"n": 1, "runs": 3}


def test_job_failing_every_attempt_ends_dead_with_its_error_in_the_dlq(env):
    policy = RetryPolicy(attempts=2, initial=0.1)
    handle = jobs.build(jobs.WorkContext(n=1, fail_attempts=5), retry=policy).run()

    record = wait_terminal(env, [handle.job_id], TIMEOUT)[handle.job_id]
    assert record.state is JobState.DEAD, record
    assert record.attempts == 2
    assert "planned failure 2 of 5" in (record.error or "")
    letters = [e.payload for e in env.events.entries(env.settings.dlq_topic)]
    assert any(p["job_id"] == handle.job_id and p["attempt"] == 2 for p in letters)


def test_jobs_over_two_sharded_queues_all_succeed(env):
    contexts = [jobs.WorkContext(n=i) for i in range(20)]
    handles = [jobs.build(ctx).run() for ctx in contexts]
    queues = {ctx.shard_key % 2 for ctx in contexts}
    assert queues == {0, 1}  # both queues were used

    records = wait_terminal(env, [h.job_id for h in handles], TIMEOUT)
    assert not unfinished(records)
    assert {r.state for r in records.values()} == {JobState.SUCCEEDED}
