"""Malformed messages on the Celery queue: dead-lettered with the reason; the worker
keeps serving."""

from __future__ import annotations

import json

import dcore_it_jobs as jobs
import pytest
from celery_support import HERE, wait_terminal

from dcore import Environment, JobState, use_environment
from dcore.celery import TASK_NAME, queue_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@pytest.fixture
def worker(celery_worker):
    return celery_worker(["dcore_it_jobs"], pool="solo", pythonpath=[str(HERE)])


@pytest.fixture
def env(worker):
    environment = Environment(worker.settings)
    with use_environment(environment):
        yield environment
    environment.close()


def _valid_message(n: int) -> dict:
    ctx = jobs.WorkContext(n=n)
    return json.loads(jobs.build(ctx).continuation(1).to_message(ctx).to_json())


def _send(worker, payload: str) -> None:
    worker.client.send_task(TASK_NAME, args=[payload], queue=queue_for(0, worker.settings))


def _dead_letters(env: Environment) -> list[dict]:
    return [e.payload for e in env.events.entries(env.settings.dlq_topic)]


def test_malformed_messages_are_dead_lettered_with_the_reason_and_the_worker_serves_on(
    worker, env
):
    unknown_type = _valid_message(1)
    unknown_type["context"]["type"] = "nowhere.module:NoSuchContext"
    unknown_plugin = _valid_message(2)
    unknown_plugin["spec"][1]["plugin"] = "no_such_plugin"
    _send(worker, "{this is not json")
    _send(worker, json.dumps(unknown_type))
    _send(worker, json.dumps(unknown_plugin))
    good = jobs.build(jobs.WorkContext(n=3)).run()  # sent after the three bad ones

    records = wait_terminal(
        env, [unknown_type["job_id"], unknown_plugin["job_id"], good.job_id], TIMEOUT
    )
    assert records[good.job_id].state is JobState.SUCCEEDED, worker.log_tail()
    bad_type = records[unknown_type["job_id"]]
    assert bad_type.state is JobState.DEAD
    assert "nowhere.module:NoSuchContext" in (bad_type.error or "")
    bad_plugin = records[unknown_plugin["job_id"]]
    assert bad_plugin.state is JobState.DEAD
    assert "no_such_plugin" in (bad_plugin.error or "")

    letters = _dead_letters(env)
    bad_json = [p for p in letters if p["job_id"] == "unknown"]
    assert len(bad_json) == 1
    assert "malformed job message" in bad_json[0]["error"]
    assert bad_json[0]["message"] == "{this is not json"
    assert {p["job_id"] for p in letters} >= {unknown_type["job_id"], unknown_plugin["job_id"]}
    assert worker.proc is not None
    assert worker.proc.poll() is None

