"""A remote hand-off refuses the in-memory job store before any stage runs: the worker
would record the job in its own memory and the caller would see it PENDING for ever.
An environment whose in-memory services its workers share (the simulator's) may."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobState,
    PipelineContext,
    PluginRegistry,
    core_function,
    use_environment,
)
from dcore.backends.memory_jobs import MemoryJobStore
from dcore.backends.redis_jobs import RedisJobStore
from dcore.errors import DispatchError, JobNotFoundError
from dcore_testing.sim import SimEnvironment
from tests.core.dcore_roundtrip_support import rt


class Shipped(PipelineContext):
    n: int = 0


@core_function
def shipped_core(ctx: Shipped) -> int:
    return ctx.n


def remote_pipeline(ctx: Any) -> Any:
    pipeline = ctx.create_pipeline(rt.summarize)
    return pipeline.chain(Execute("rt_mark", tag="before")).chain(Dispatch("rt_capture"))


@pytest.fixture(autouse=True)
def _clear_captured() -> None:
    rt.Capture.captured.clear()


def test_a_remote_dispatch_over_the_memory_job_store_fails_before_any_stage(
    dcore_env: Environment,
) -> None:
    ctx = rt.RoundTripContext(name="x")

    with pytest.raises(DispatchError) as info:
        remote_pipeline(ctx).run()

    message = str(info.value)
    assert "in-memory job store (DcoreSettings(job_store='memory'))" in message
    assert "PENDING for ever" in message
    assert "DCORE_JOB_STORE=redis" in message
    assert ctx.steps == []  # the stage before the Dispatch never ran
    assert rt.Capture.captured == []
    with pytest.raises(JobNotFoundError):
        dcore_env.jobs.get(ctx.job_id)


def test_the_error_names_the_variable_when_the_setting_came_from_one(
    monkeypatch: pytest.MonkeyPatch, dcore_registry: PluginRegistry, tmp_path: Any
) -> None:
    monkeypatch.setenv("DCORE_DISPATCHER", "celery")
    monkeypatch.delenv("DCORE_JOB_STORE", raising=False)
    env = Environment(DcoreSettings(storage_root=tmp_path), registry=dcore_registry)

    with (
        env,
        use_environment(env),
        pytest.raises(DispatchError, match=(r"in-memory job store \(DCORE_JOB_STORE='memory'\)")),
    ):
        Shipped().create_pipeline(shipped_core).chain(Dispatch("schedule_job")).run()


def test_a_memory_store_passed_in_is_named_as_passed_in(
    dcore_registry: PluginRegistry, tmp_path: Any
) -> None:
    env = Environment(DcoreSettings(storage_root=tmp_path, job_store="redis"),
                      registry=dcore_registry, jobs=MemoryJobStore())  # fmt: skip

    with (
        env,
        use_environment(env),
        pytest.raises(
            DispatchError, match=(r"in-memory job store \(given as Environment\(jobs=...\)\)")
        ),
    ):
        remote_pipeline(rt.RoundTripContext(name="x")).run()


def test_a_shared_job_store_hands_off(
    dcore_registry: PluginRegistry, dcore_fake_redis: Any, tmp_path: Any
) -> None:
    jobs = RedisJobStore(client=dcore_fake_redis)
    env = Environment(DcoreSettings(storage_root=tmp_path), registry=dcore_registry, jobs=jobs)
    ctx = rt.RoundTripContext(name="x")

    with env, use_environment(env):
        remote_pipeline(ctx).run()

        assert ctx.steps == ["before"]
        assert len(rt.Capture.captured) == 1
        assert env.jobs.get(ctx.job_id).state is JobState.PENDING


def test_an_environment_whose_memory_services_are_shared_hands_off(
    dcore_env: Environment,
) -> None:
    dcore_env.memory_services_shared = True  # type: ignore[attr-defined]
    ctx = rt.RoundTripContext(name="x")

    remote_pipeline(ctx).run()

    assert len(rt.Capture.captured) == 1
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.PENDING


def test_the_simulator_hands_off_remotely_over_its_in_memory_services(
    dcore_registry: PluginRegistry,
) -> None:
    sim = SimEnvironment(seed=1, registry=dcore_registry)

    with sim:
        Shipped(n=3).create_pipeline(shipped_core).chain(Dispatch("celery")).run()
        sim.run_until_idle()

    assert SimEnvironment.memory_services_shared is True
    assert list(sim.job_states().values()) == [JobState.SUCCEEDED]
