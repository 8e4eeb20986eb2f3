"""Pipeline tests as a user of dcore writes them, with the fixtures of the pytest plugin
(docs/how-to/testing.md shows these)."""

from __future__ import annotations

from typing import Any

from dcore import Dispatch, Environment, Execute, JobState, NextFn, PipelineContext, PluginRegistry
from dcore_testing import ManualClock


# --8<-- [start:background]
class Ctx(PipelineContext):
    trail: list[str] = []


class Mark(Execute[Ctx]):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        context.trail.append(self.tag)
        return next_fn(context)


def finish(ctx: Ctx) -> list[str]:
    return [*ctx.trail, "core"]


def test_background_part_runs_after_the_sync_part(
    dcore_registry: PluginRegistry, dcore_env: Environment
) -> None:
    dcore_registry.register("mark", Mark)
    ctx = Ctx()
    pipeline = ctx.create_pipeline(finish)
    pipeline.chain(Execute("mark", tag="a")).chain(Dispatch("inline"))
    pipeline.chain(Execute, plugin="mark", tag="b")

    handle = pipeline.run()

    assert ctx.trail == ["a", "b"]
    assert dcore_env.jobs.get(handle.job_id).state is JobState.SUCCEEDED


# --8<-- [end:background]


# --8<-- [start:manual_clock]
def test_a_lock_ttl_runs_out_without_waiting(
    dcore_manual_env: Environment, dcore_manual_clock: ManualClock
) -> None:
    lock = dcore_manual_env.locks.lock("report", ttl=30)
    lock.acquire()
    dcore_manual_clock.sleep(31)  # returns at once
    assert not lock.owned()
    assert dcore_manual_clock.sleeps == [31]


# --8<-- [end:manual_clock]
