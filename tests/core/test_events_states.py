"""Every job state transition is an event on the bus (DESIGN §4)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dcore import (
    Dispatch,
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PluginRegistry,
    RetryPolicy,
    core_function,
)
from dcore._core import events
from dcore.dispatchers.thread import ThreadDispatcher
from dcore.services.events import Event

STATE_TOPICS = [
    events.JOB_SCHEDULED,
    events.JOB_STARTED,
    events.STAGE_FAILED,
    events.JOB_RETRYING,
    events.JOB_SUCCEEDED,
    events.JOB_DEAD,
]


class Ctx(PipelineContext):
    pass


@core_function
def core(ctx: Ctx) -> str:
    return "ok"


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    return dcore_manual_env


@pytest.fixture
def seen(env: Environment) -> Iterator[list[Event]]:
    got: list[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            got.append(event)

    subs = [env.events.subscribe(t, record) for t in STATE_TOPICS]
    yield got
    for s in subs:
        s.close()


def failing_first(registry: PluginRegistry, failures: int) -> None:
    count = {"n": 0}

    class Step(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            count["n"] += 1
            if count["n"] <= failures:
                raise OSError(f"disk hiccup {count['n']}")
            return next_fn(context)

    registry.register("step", Step, replace=True)


def run_job(env: Environment, attempts: int) -> str:
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Dispatch("thread"), retry=RetryPolicy(attempts=attempts, initial=5.0))
    pipeline.chain(Execute("step"))
    pipeline.run()
    ThreadDispatcher.drain(10)
    return ctx.job_id


def test_a_job_that_fails_once_then_succeeds_emits_its_transitions_in_order(
    env: Environment, dcore_registry: PluginRegistry, seen: list[Event]
) -> None:
    failing_first(dcore_registry, 1)
    job_id = run_job(env, attempts=2)
    assert [e.topic for e in seen] == [
        "job.scheduled",
        "job.started",
        "stage.failed",
        "job.retrying",
        "job.started",
        "job.succeeded",
    ]
    assert {e.payload["job_id"] for e in seen} == {job_id}
    assert seen[2].payload["stage"] == "step#1"
    assert seen[2].payload["error"] == "OSError: disk hiccup 1"
    assert [e.payload.get("attempt") for e in seen if e.topic == "job.started"] == [1, 2]


def test_a_job_that_runs_out_of_attempts_ends_with_job_dead(
    env: Environment, dcore_registry: PluginRegistry, seen: list[Event]
) -> None:
    failing_first(dcore_registry, 99)
    run_job(env, attempts=2)
    assert [e.topic for e in seen] == [
        "job.scheduled",
        "job.started",
        "stage.failed",
        "job.retrying",
        "job.started",
        "stage.failed",
        "job.dead",
    ]
    dead = seen[-1].payload
    assert dead["error"] == "OSError: disk hiccup 2"
    assert env.events.entry(env.settings.dlq_topic, dead["dlq_id"]) is not None


def test_stage_retries_announce_each_failure_with_the_wait(
    env: Environment, dcore_registry: PluginRegistry, seen: list[Event]
) -> None:
    failing_first(dcore_registry, 2)
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Execute("step"), retry=RetryPolicy(attempts=3, initial=2.0, backoff=2.0))
    assert pipeline.run() == "ok"
    failed = [e.payload for e in seen if e.topic == "stage.failed"]
    assert [(p["attempt"], p["retry_in"]) for p in failed] == [(1, 2.0), (2, 4.0)]
