# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""``inline``: the background part runs before run() returns, recorded like any job."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import (
    Dispatch,
    Environment,
    Execute,
    JobHandle,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
)


class Ctx(PipelineContext):
    trail: list[str] = []
    fail_at: str | None = None


class Step(Execute[Ctx]):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        if context.fail_at == self.tag:
            raise LookupError(f"step {self.tag} failed")
        context.trail.append(self.tag)
        return next_fn(context)


def core(ctx: Ctx) -> dict[str, Any]:
    ctx.trail.append("core")
    return {"trail": list(ctx.trail)}


@pytest.fixture(autouse=True)
def _step(dcore_registry: PluginRegistry, dcore_env: Environment) -> None:
    dcore_registry.register("step", Step)


def pipeline(ctx: Ctx, **dispatch_options: Any) -> Any:
    return (
        ctx.create_pipeline(core)
        .chain(Execute("step", tag="a"))
        .chain(Dispatch("inline", **dispatch_options))
        .chain(Execute("step", tag="b"))
    )


def test_inline_runs_remainder_before_returning_and_records_success(
    dcore_env: Environment,
) -> None:
    ctx = Ctx()
    handle = pipeline(ctx).run()

    assert handle == JobHandle(job_id=ctx.job_id, status="succeeded")
    assert ctx.trail == ["a", "b", "core"]
    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.SUCCEEDED
    assert record.result == {"trail": ["a", "b", "core"]}
    assert [t.state for t in record.history] == [
        JobState.PENDING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]


def test_inline_failure_keeps_type_and_dead_letters_once(dcore_env: Environment) -> None:
    ctx = Ctx(fail_at="b")
    with pytest.raises(LookupError, match="step b failed"):
        pipeline(ctx).run()

    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    assert record.error == "LookupError: step b failed"
    letters = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    assert [e.payload["job_id"] for e in letters] == [ctx.job_id]


def test_inline_with_raise_errors_false_reports_failed_handle(dcore_env: Environment) -> None:
    ctx = Ctx(fail_at="b")
    handle = pipeline(ctx, raise_errors=False).run()

    assert handle == JobHandle(job_id=ctx.job_id, status="failed")
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.DEAD


def test_inline_is_not_remote(dcore_env: Environment) -> None:
    from dcore.dispatchers.inline import InlineDispatcher

    assert InlineDispatcher().is_remote() is False
