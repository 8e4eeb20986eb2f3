# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""``fastapi``: the background part goes into the request's BackgroundTasks and runs
after the response; without BackgroundTasks the hand-off fails clearly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient

from dcore import (
    Dispatch,
    Environment,
    Execute,
    JobHandle,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
    Runtime,
)
from dcore.errors import DispatchError


class SeedStyle(PipelineContext):
    """Declared as in the seed: a plain BackgroundTasks annotation."""

    name: str
    trail: list[str] = []
    background_tasks: BackgroundTasks


class Explicit(PipelineContext):
    name: str
    trail: list[str] = []
    tasks: Runtime[BackgroundTasks] = None


class Without(PipelineContext):
    name: str
    trail: list[str] = []


class Mark(Execute[Any]):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        if context.name == "explode" and self.tag == "after":
            raise OSError("disk full")
        context.trail.append(self.tag)
        return next_fn(context)


def core(ctx: Any) -> str:
    ctx.trail.append("core")
    return str(ctx.name)


@pytest.fixture(autouse=True)
def _mark(dcore_registry: PluginRegistry, dcore_env: Environment) -> None:
    dcore_registry.register("mark", Mark)


def run(ctx: Any) -> Any:
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Execute("mark", tag="before")).chain(Dispatch("fastapi"))
    pipeline.chain(Execute("mark", tag="after"))
    return pipeline.run()


@pytest.mark.parametrize("kind", [SeedStyle, Explicit])
def test_background_part_waits_in_background_tasks_until_they_run(
    dcore_env: Environment, kind: type[Any]
) -> None:
    tasks = BackgroundTasks()
    field = "background_tasks" if kind is SeedStyle else "tasks"
    ctx = kind(name="a", **{field: tasks})

    handle = run(ctx)

    assert handle == JobHandle(job_id=ctx.job_id, status="scheduled")
    assert ctx.trail == ["before"]
    assert len(tasks.tasks) == 1
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.PENDING

    asyncio.run(tasks())  # what Starlette does after sending the response

    assert ctx.trail == ["before", "after", "core"]
    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.SUCCEEDED
    assert record.result == "a"


def test_background_failure_is_recorded_not_raised_into_the_server(
    dcore_env: Environment,
) -> None:
    tasks = BackgroundTasks()
    ctx = Explicit(name="explode", tasks=tasks)
    run(ctx)

    asyncio.run(tasks())  # does not raise

    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    assert record.error == "OSError: disk full"


def test_without_background_tasks_is_a_clear_dispatch_error(dcore_env: Environment) -> None:
    ctx = Without(name="a")
    with pytest.raises(DispatchError) as info:
        run(ctx)
    message = str(info.value)
    assert "Without has none" in message
    assert "background_tasks: Runtime[BackgroundTasks]" in message
    assert ctx.trail == ["before"]  # the sync part ran; the remainder did not
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.DEAD


def test_runtime_field_left_empty_is_the_same_clear_error(dcore_env: Environment) -> None:
    with pytest.raises(DispatchError, match="Explicit has none"):
        run(Explicit(name="a"))


def test_endpoint_returns_handle_and_job_succeeds_after_response(
    dcore_env: Environment,
) -> None:
    app = FastAPI()
    seen: list[Any] = []

    @app.post("/jobs/{name}")
    def create(name: str, background_tasks: BackgroundTasks) -> JobHandle:
        ctx = SeedStyle(name=name, background_tasks=background_tasks)
        seen.append(ctx)
        handle: JobHandle = run(ctx)
        return handle

    response = TestClient(app).post("/jobs/report")

    assert response.status_code == 200
    [ctx] = seen
    assert response.json() == {"job_id": ctx.job_id, "status": "scheduled"}
    assert ctx.trail == ["before", "after", "core"]
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED
