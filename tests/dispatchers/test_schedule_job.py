# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""``schedule_job``: one setting (DCORE_DISPATCHER or ``using``) picks the engine;
``auto`` takes fastapi when the context carries BackgroundTasks, else thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import BackgroundTasks

from dcore import (
    ContextSerializationError,
    Dispatch,
    Environment,
    JobHandle,
    JobState,
    PipelineContext,
    PluginNotFoundError,
    PluginRegistry,
    Runtime,
    use_environment,
)
from dcore.dispatchers.fastapi import FastAPIDispatcher
from dcore.dispatchers.inline import InlineDispatcher
from dcore.dispatchers.schedule_job import ScheduleJob
from dcore.dispatchers.thread import ThreadDispatcher


class Ctx(PipelineContext):
    tasks: Runtime[BackgroundTasks] = None


class FakeRemote(Dispatch[Any]):
    remote = True

    def dispatch(self, next_fn: Any, context: Any) -> JobHandle:
        return JobHandle(job_id=context.job_id)


def core(ctx: Ctx) -> str:
    return "done"


@pytest.fixture
def env_from_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dcore_registry: PluginRegistry
) -> Iterator[Any]:
    """Build an environment from DCORE_* variables the test sets first."""
    made: list[Environment] = []

    def make(**variables: str) -> Environment:
        monkeypatch.setenv("DCORE_STORAGE_ROOT", str(tmp_path))
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        env = Environment.from_env()
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def test_auto_picks_fastapi_with_background_tasks_else_thread(env_from_variables: Any) -> None:
    env = env_from_variables(DCORE_DISPATCHER="auto")
    with use_environment(env):
        chooser = ScheduleJob(env)
        assert isinstance(chooser.resolve(Ctx(tasks=BackgroundTasks())), FastAPIDispatcher)
        assert isinstance(chooser.resolve(Ctx()), ThreadDispatcher)
        assert chooser.is_remote() is False


def test_auto_with_background_tasks_schedules_into_them(env_from_variables: Any) -> None:
    env = env_from_variables()
    tasks = BackgroundTasks()
    with use_environment(env):
        ctx = Ctx(tasks=tasks)
        handle = ctx.create_pipeline(core).chain(Dispatch("schedule_job")).run()
    assert handle == JobHandle(job_id=ctx.job_id, status="scheduled")
    assert len(tasks.tasks) == 1


def test_auto_without_background_tasks_runs_on_threads(env_from_variables: Any) -> None:
    env = env_from_variables()
    with use_environment(env):
        ctx = Ctx()
        ctx.create_pipeline(core).chain(Dispatch("schedule_job")).run()
        ThreadDispatcher.drain(30, environment=env)
        assert env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED


def test_dcore_dispatcher_variable_selects_inline(env_from_variables: Any) -> None:
    env = env_from_variables(DCORE_DISPATCHER="inline")
    with use_environment(env):
        ctx = Ctx(tasks=BackgroundTasks())  # ignored: the setting is explicit
        handle = ctx.create_pipeline(core).chain(Dispatch("schedule_job")).run()
        assert isinstance(ScheduleJob(env).resolve(ctx), InlineDispatcher)
    assert handle.status == "succeeded"


def test_using_option_overrides_the_setting(env_from_variables: Any) -> None:
    env = env_from_variables(DCORE_DISPATCHER="thread")
    with use_environment(env):
        ctx = Ctx()
        handle = ctx.create_pipeline(core).chain(Dispatch("schedule_job", using="inline")).run()
    assert handle.status == "succeeded"


def test_unknown_dispatcher_name_fails_before_any_stage(env_from_variables: Any) -> None:
    env = env_from_variables(DCORE_DISPATCHER="threads")
    with use_environment(env):
        ctx = Ctx()
        pipeline = ctx.create_pipeline(core).chain(Dispatch("schedule_job"))
        with pytest.raises(PluginNotFoundError, match=r"'threads'.*Did you mean 'thread'"):
            pipeline.run()


def test_remote_choice_makes_schedule_job_check_the_hand_off(
    env_from_variables: Any, dcore_registry: PluginRegistry
) -> None:
    dcore_registry.register("fake_remote", FakeRemote)
    env = env_from_variables(DCORE_DISPATCHER="fake_remote")
    env.memory_services_shared = True  # its worker is this process

    def local_core(ctx: Ctx) -> str:
        return "never"

    with use_environment(env):
        assert ScheduleJob(env).is_remote() is True
        pipeline = Ctx().create_pipeline(local_core).chain(Dispatch("schedule_job"))
        with pytest.raises(ContextSerializationError, match="local_core"):
            pipeline.run()
