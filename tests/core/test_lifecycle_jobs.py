"""Job-level retries and dead letters (DESIGN §4): re-delivery with backoff on the clock,
DEAD + one DLQ entry when the attempts are used up, ``give_up`` ends a job at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
    RetryPolicy,
    core_function,
    use_environment,
)
from dcore._core.lifecycle import current_job, give_up
from dcore.dispatchers.thread import ThreadDispatcher
from dcore_testing import ManualClock


class Ctx(PipelineContext):
    pass


class Broken(Exception):
    pass


@core_function
def core(ctx: Ctx) -> str:
    return "ok"


def failing(registry: PluginRegistry, failures: int, calls: list[Any]) -> None:
    class Failing(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            calls.append(current_job())
            if len(calls) <= failures:
                raise Broken(f"delivery {len(calls)} broke")
            return next_fn(context)

    registry.register("failing", Failing, replace=True)


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    return dcore_manual_env


def dlq_of(env: Environment, job_id: str) -> list[Any]:
    return [e for e in env.events.entries(env.settings.dlq_topic) if e.payload["job_id"] == job_id]


def test_a_failed_inline_job_is_dead_lettered_once_even_when_the_error_is_raised(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    failing(dcore_registry, 99, [])
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core).chain(Dispatch("inline")).chain(Execute("failing"))
    with pytest.raises(Broken, match="delivery 1 broke"):
        pipeline.run()
    entries = dlq_of(env, ctx.job_id)
    assert len(entries) == 1
    assert entries[0].payload["error"] == "Broken: delivery 1 broke"
    assert env.jobs.get(ctx.job_id).state is JobState.DEAD


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    failures=st.integers(0, 5),
    attempts=st.integers(1, 4),
    initial=st.sampled_from([0.5, 30.0]),
    max_delay=st.sampled_from([1.0, 3600.0]),
)
def test_thread_jobs_are_redelivered_with_backoff_and_dead_lettered_once_when_exhausted(
    tmp_path: Path,
    dcore_registry: PluginRegistry,
    failures: int,
    attempts: int,
    initial: float,
    max_delay: float,
) -> None:
    clock = ManualClock()
    env = Environment(DcoreSettings(storage_root=tmp_path), clock=clock, registry=dcore_registry)
    policy = RetryPolicy(attempts=attempts, initial=initial, backoff=3.0, max_delay=max_delay)
    calls: list[Any] = []
    failing(dcore_registry, failures, calls)
    with use_environment(env):
        ctx = Ctx()
        pipeline = ctx.create_pipeline(core)
        pipeline.chain(Dispatch("thread"), retry=policy).chain(Execute("failing"))
        pipeline.run()
        ThreadDispatcher.drain(10)
        runs = min(failures + 1, attempts)
        assert [c.attempt for c in calls] == list(range(1, runs + 1))
        assert clock.sleeps == [policy.delay(n) for n in range(1, runs)]
        record = env.jobs.get(ctx.job_id)
        assert record.attempts == runs
        if failures >= attempts:
            assert record.state is JobState.DEAD
            assert len(dlq_of(env, ctx.job_id)) == 1
        else:
            assert record.state is JobState.SUCCEEDED
            assert dlq_of(env, ctx.job_id) == []
    env.close()


def test_give_up_dead_letters_at_once_whatever_attempts_are_left(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    calls: list[Any] = []

    class Hopeless(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            calls.append(1)
            raise give_up(ValueError("bad input, retrying cannot help"))

    dcore_registry.register("hopeless", Hopeless)
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Dispatch("thread"), retry=RetryPolicy(attempts=5)).chain(Execute("hopeless"))
    pipeline.run()
    ThreadDispatcher.drain(10)
    assert calls == [1]
    assert dcore_manual_clock.sleeps == []
    assert env.jobs.get(ctx.job_id).state is JobState.DEAD
    assert len(dlq_of(env, ctx.job_id)) == 1


def test_the_dead_letter_holds_message_error_and_attempt_history(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    failing(dcore_registry, 99, [])
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Dispatch("thread"), retry=RetryPolicy(attempts=2, initial=1.0))
    pipeline.chain(Execute("failing"))
    pipeline.run()
    ThreadDispatcher.drain(10)
    (entry,) = dlq_of(env, ctx.job_id)
    payload = entry.payload
    assert payload["error"] == "Broken: delivery 2 broke"
    assert payload["attempt"] == 2
    assert f'"job_id":"{ctx.job_id}"' in payload["message"]
    assert [h["state"] for h in payload["history"]] == [
        "PENDING",
        "RUNNING",
        "FAILED",
        "RUNNING",
        "FAILED",
    ]
    assert current_job() is None  # only set while a job's background part runs
