"""Stage retries (DESIGN §4): a stage's policy covers its own body only, sleeps go through
env.clock, and an exhausted job is dead-lettered exactly once."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

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
    register_plugin,
    use_environment,
)
from dcore._core.pipeline import origin_of
from dcore._core.retry import NO_RETRY, call_with_retry, resolve_policy
from dcore_testing import ManualClock


class Ctx(PipelineContext):
    pass


class Flaky(Exception):
    pass


@core_function
def core(ctx: Ctx) -> str:
    return "done"


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    return dcore_manual_env


def flaky_stage(registry: PluginRegistry, name: str, failures: int, calls: dict[str, int]) -> None:
    """Register Execute ``name`` whose body fails ``failures`` times, then passes."""

    class FlakyStage(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] <= failures:
                raise Flaky(f"{name} failure {calls[name]}")
            return next_fn(context)

    registry.register(name, FlakyStage, replace=True)


policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 5),
    backoff=st.sampled_from([1.0, 1.5, 2.0, 10.0]),
    initial=st.sampled_from([0.0, 0.1, 1.0, 60.0]),
    max_delay=st.sampled_from([0.5, 30.0, 3600.0]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=st.lists(st.tuples(st.integers(0, 6), policies), min_size=1, max_size=4))
def test_each_stage_body_runs_min_failures_plus_one_or_attempts_and_sleeps_follow_backoff(
    tmp_path: Path, dcore_registry: PluginRegistry, plan: list[tuple[int, RetryPolicy]]
) -> None:
    clock = ManualClock()
    env = Environment(DcoreSettings(storage_root=tmp_path), clock=clock, registry=dcore_registry)
    calls: dict[str, int] = {}
    with use_environment(env):
        pipeline = Ctx().create_pipeline(core)
        pipeline.chain(Dispatch("inline", raise_errors=False))
        for i, (failures, policy) in enumerate(plan):
            flaky_stage(dcore_registry, f"s{i}", failures, calls)
            pipeline.chain(Execute(f"s{i}"), retry=policy)
        handle = pipeline.run()

        expected_calls: dict[str, int] = {}
        expected_sleeps: list[float] = []
        exhausted = False
        for i, (failures, policy) in enumerate(plan):
            runs = min(failures + 1, policy.attempts)
            expected_calls[f"s{i}"] = runs
            retries = min(failures, policy.attempts - 1)
            expected_sleeps += [policy.delay(n) for n in range(1, retries + 1)]
            if failures >= policy.attempts:
                exhausted = True
                break
        assert calls == expected_calls
        assert clock.sleeps == expected_sleeps
        dlq = [
            e
            for e in env.events.entries(env.settings.dlq_topic)
            if e.payload["job_id"] == handle.job_id
        ]
        state = env.jobs.get(handle.job_id).state
        if exhausted:
            assert len(dlq) == 1
            assert state is JobState.DEAD
        else:
            assert dlq == []
            assert state is JobState.SUCCEEDED
    env.close()


def test_five_attempts_with_an_hour_of_backoff_run_on_the_fake_clock(
    dcore_manual_clock: ManualClock,
) -> None:
    policy = RetryPolicy(attempts=5, initial=600.0, backoff=10.0, max_delay=3600.0)
    attempts = 0

    def always() -> None:
        nonlocal attempts
        attempts += 1
        raise TimeoutError("still down")

    with pytest.raises(TimeoutError, match="still down"):
        call_with_retry(always, policy, dcore_manual_clock)
    assert attempts == 5
    # 4 waits totalling ~3 h of virtual time; none of it was real sleeping
    assert dcore_manual_clock.sleeps == [600.0, 3600.0, 3600.0, 3600.0]


def test_a_stage_retry_does_not_rerun_a_later_stage_that_failed(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    calls: dict[str, int] = {}
    flaky_stage(dcore_registry, "outer", 0, calls)
    flaky_stage(dcore_registry, "inner", 99, calls)
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("outer"), retry=RetryPolicy(attempts=4, initial=1.0))
    pipeline.chain(Execute("inner"))
    with pytest.raises(Flaky) as info:
        pipeline.run()
    assert calls == {"outer": 1, "inner": 1}
    assert origin_of(info.value) == "inner#1"
    assert dcore_manual_clock.sleeps == []


def test_a_stage_that_wraps_a_later_failure_in_its_own_error_is_not_retried(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    calls: dict[str, int] = {}
    flaky_stage(dcore_registry, "inner", 99, calls)

    @register_plugin("wrapper", registry=dcore_registry)
    class Wrapper(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            try:
                return next_fn(context)
            except Flaky as exc:
                raise RuntimeError("wrapped") from exc

    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("wrapper"), retry=RetryPolicy(attempts=3, initial=1.0))
    pipeline.chain(Execute("inner"))
    with pytest.raises(RuntimeError, match="wrapped"):
        pipeline.run()
    assert calls == {"inner": 1}


def test_retry_keeps_the_exception_type_and_only_retries_retry_on(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    calls: dict[str, int] = {}
    flaky_stage(dcore_registry, "s", 99, calls)
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("s"), retry=RetryPolicy(attempts=5, retry_on=[ConnectionError]))
    with pytest.raises(Flaky):
        pipeline.run()
    assert calls == {"s": 1}


class _PolicyStage(Execute[Any]):
    retry_policy: ClassVar[RetryPolicy | None] = RetryPolicy(attempts=7)

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        return next_fn(context)


def test_policy_resolution_prefers_chain_then_plugin_then_interface_then_one_attempt() -> None:
    explicit = RetryPolicy(attempts=2)
    assert resolve_policy(explicit, _PolicyStage) is explicit
    assert resolve_policy(None, _PolicyStage).attempts == 7

    class Plain(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            return next_fn(context)

    assert resolve_policy(None, Plain) is NO_RETRY
    assert NO_RETRY.attempts == 1


def test_jitter_draws_from_the_given_random_within_its_bound() -> None:
    policy = RetryPolicy(attempts=4, initial=10.0, backoff=2.0, jitter=0.5)
    first = list(policy.delays(random.Random(7)))
    assert first == list(policy.delays(random.Random(7)))
    for n, delay in enumerate(first, start=1):
        base = 10.0 * 2.0 ** (n - 1)
        assert base <= delay <= base * 1.5


def test_stage_jitter_comes_from_the_environment_random(
    tmp_path: Path, dcore_registry: PluginRegistry
) -> None:
    def run(seed: int) -> list[float]:
        clock = ManualClock()
        env = Environment(
            DcoreSettings(storage_root=tmp_path),
            clock=clock,
            registry=dcore_registry,
            rng=random.Random(seed),
        )
        calls: dict[str, int] = {}
        flaky_stage(dcore_registry, "j", 3, calls)
        with use_environment(env):
            p = Ctx().create_pipeline(core)
            p.chain(Execute("j"), retry=RetryPolicy(attempts=4, initial=1.0, jitter=1.0))
            assert p.run() == "done"
        env.close()
        return clock.sleeps

    sleeps = run(3)
    assert sleeps == run(3)
    assert sleeps != [1.0, 2.0, 4.0]  # jitter is applied, not silently dropped


def test_a_bad_retry_on_names_the_offending_value() -> None:
    with pytest.raises(ValueError, match=r"retry_on[\s\S]*BaseException[\s\S]*'oops'"):
        RetryPolicy(retry_on=["oops"])
