"""Async stages on a real Celery worker with real Redis.

- The async report example: its lookup awaited in the request (``arun()``), its async
  renderer run by the worker; every job SUCCEEDED with its report stored.
- A prefork worker runs the async stages of its jobs on one event loop per pool process.
- An async stage that fails for good is retried by the job policy, then the job is
  dead-lettered and its async stages' async compensations undo what they did.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from celery_support import HERE, wait_terminal

from dcore import Dispatch, Environment, Execute, JobState, use_environment

pytestmark = pytest.mark.integration

REPO = HERE.parent.parent
TIMEOUT = 30.0


def test_the_async_report_example_runs_its_background_part_on_the_worker(
    dcore_celery_worker, monkeypatch
):
    monkeypatch.syspath_prepend(str(REPO))
    from examples.async_stages.app import ReportContext, report_key, report_pipeline

    worker = dcore_celery_worker(["examples.async_stages.app"], pythonpath=[str(REPO)])
    env = Environment(worker.settings)

    async def requests() -> list[str]:
        contexts = [ReportContext(user=u) for u in ("ada", "bob", "cy")]
        handles = await asyncio.gather(*(report_pipeline(c, "celery").arun() for c in contexts))
        return [h.job_id for h in handles]

    with use_environment(env):
        job_ids = asyncio.run(requests())
        records = wait_terminal(env, job_ids, TIMEOUT)
        assert {r.state for r in records.values()} == {JobState.SUCCEEDED}, worker.log_tail()
        assert env.storage.get("reports/bob.txt") == b"Report for Bob"
        assert {r.result["report"] for r in records.values()} == {
            report_key(ReportContext(user=u)) for u in ("ada", "bob", "cy")
        }
    env.close()


def test_a_prefork_worker_keeps_one_event_loop_per_pool_process(dcore_celery_worker):
    import dcore_it_async as it

    worker = dcore_celery_worker(["dcore_it_async"], pythonpath=[str(HERE)], concurrency=2)
    env = Environment(worker.settings)
    names = [f"job{i}" for i in range(12)]
    with use_environment(env):
        job_ids = []
        for name in names:
            p = it.AsyncJob(name=name).create_pipeline(it.finished)
            p.chain(Dispatch, plugin="celery").chain(Execute, plugin="it_loop_probe")
            job_ids.append(p.run().job_id)  # only the background part is async
        records = wait_terminal(env, job_ids, TIMEOUT)
        assert {r.state for r in records.values()} == {JobState.SUCCEEDED}, worker.log_tail()
        probes = [json.loads(env.storage.get(f"probes/{n}")) for n in names]
    env.close()
    loops: dict[int, set[str]] = {}
    for probe in probes:
        loops.setdefault(probe["pid"], set()).add(probe["loop"])
    assert all(len(ids) == 1 for ids in loops.values()), loops


def test_a_failing_async_stage_is_retried_then_dead_lettered_and_undone(dcore_celery_worker):
    import dcore_it_async as it

    worker = dcore_celery_worker(
        ["dcore_it_async"], pythonpath=[str(HERE)], job_attempts=2, job_initial_delay=0.1
    )
    env = Environment(worker.settings)
    with use_environment(env):
        p = it.AsyncJob(name="doomed").create_pipeline(it.finished)
        p.chain(Execute, plugin="it_async_undo").chain(Dispatch, plugin="celery")
        p.chain(Execute, plugin="it_async_undo").chain(Execute, plugin="it_async_fail")
        handle = asyncio.run(p.arun())
        record = wait_terminal(env, [handle.job_id], TIMEOUT)[handle.job_id]
        assert record.state is JobState.DEAD, worker.log_tail()
        assert record.attempts == 2
        assert record.compensated == [0, 2]  # the stage in the request and the worker's
        [letter] = [e.payload for e in env.events.entries(env.settings.dlq_topic)]
        assert letter["job_id"] == handle.job_id
        assert letter["compensated"] is True
        assert "ConnectionError: doomed: the service refused" in letter["error"]
        assert b"the service refused" in env.storage.get("undone/doomed")
    env.close()
