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
def worker(dcore_celery_worker):
    return dcore_celery_worker(["dcore_it_jobs"], pool="solo", pythonpath=[str(HERE)])


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


def test_malformed_messages_are_dead_lettered_with_the_reason_and_the_worker_serves_on(worker, env):
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


SECRET = "s3cr3t-value-the-worker-must-never-hand-out"

SMUGGLED = [
    "os:getenv",  # read the worker's environment
    "os:environ.copy",  # the same through an attribute path
    "dcore._core.message:set_trace_propagator",  # a process-wide setter
    "subprocess:Popen",
    "builtins:eval",
    "dcore_it_jobs:do_work.__globals__",  # walking off a registered function
]


def test_messages_naming_unregistered_callables_are_refused_and_the_worker_serves_on(
    dcore_celery_worker,
):
    worker = dcore_celery_worker(
        ["dcore_it_jobs"], pool="solo", pythonpath=[str(HERE)], env={"IT_SECRET": SECRET}
    )
    environment = Environment(worker.settings)
    with use_environment(environment):
        smuggled = []
        for name in SMUGGLED:
            message = _valid_message(len(smuggled))
            message["core_fn"] = name
            # the "second message" of a chain would read the first one's result: there
            # is none to read, as no smuggled message ever runs
            _send(worker, json.dumps(message))
            smuggled.append(message["job_id"])
        good = [jobs.build(jobs.WorkContext(n=n)).run().job_id for n in range(10)]

        records = wait_terminal(environment, smuggled + good, TIMEOUT)
        letters = _dead_letters(environment)
    environment.close()

    assert {records[j].state for j in good} == {JobState.SUCCEEDED}, worker.log_tail()
    for job_id, name in zip(smuggled, SMUGGLED, strict=True):
        record = records[job_id]
        assert record.state is JobState.DEAD, (name, record)
        assert "not a registered core function" in (record.error or ""), (name, record.error)
        assert record.result is None
    assert sorted(p["job_id"] for p in letters) == sorted(smuggled)
    everything = json.dumps([r.model_dump(mode="json") for r in records.values()] + letters)
    assert SECRET not in everything
    assert worker.proc is not None
    assert worker.proc.poll() is None


def test_a_message_nested_a_thousand_levels_deep_is_dead_lettered(worker, env):
    message = _valid_message(1)
    raw = json.dumps(message).replace('"n": 1', '"n": ' + "[" * 1000 + "]" * 1000)
    assert raw.count("[") >= 1000
    _send(worker, raw)
    good = jobs.build(jobs.WorkContext(n=2)).run()

    records = wait_terminal(env, [message["job_id"], good.job_id], TIMEOUT)
    assert records[good.job_id].state is JobState.SUCCEEDED, worker.log_tail()
    assert records[message["job_id"]].state is JobState.DEAD
    [letter] = [p for p in _dead_letters(env) if p["job_id"] == message["job_id"]]
    assert "malformed job message" in letter["error"]
