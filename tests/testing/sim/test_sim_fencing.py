"""Fenced writes under the simulator: the ``lock`` stage's fence reaches
``storage_write(fenced=True)`` through the simulated services, and a job that stalled
past its lock's TTL has its write refused, in every interleaving of 100 seeds."""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    Fence,
    NextFn,
    PipelineContext,
    core_function,
    current_environment,
    current_fence,
)
from dcore._plugins.registry import default_registry, register_plugin
from dcore_testing.sim import SimEnvironment, virtual_time_session

KEY = "reports/daily.csv"
TTL = 30.0


class ReportCtx(PipelineContext):
    file_path: str = KEY
    file_content: bytes = b""
    stall: float = 0.0


#: (content, fence) of every job that reached the stage under the lock, per run
HOLDERS: list[tuple[bytes, Fence | None]] = []


@register_plugin("stall_under_lock", registry=default_registry(), replace=True)
class StallUnderLock(Execute[ReportCtx]):
    def execute(self, next_fn: NextFn[ReportCtx], context: ReportCtx) -> Any:
        HOLDERS.append((context.file_content, current_fence()))
        current_environment().clock.sleep(context.stall)
        return next_fn(context)


@core_function
def written(context: ReportCtx) -> str:
    return context.file_path


def report(content: bytes, stall: float) -> None:
    pipeline = ReportCtx(file_content=content, stall=stall).create_pipeline(core_fn=written)
    pipeline.chain(Dispatch, plugin="schedule_job")
    pipeline.chain(Execute, plugin="lock", key="report:daily", ttl=TTL, timeout=300)
    pipeline.chain(Execute, plugin="stall_under_lock")
    pipeline.chain(Execute, plugin="storage_write", fenced=True)
    pipeline.run()


def run_seed(seed: int) -> tuple[bytes, Fence | None, list[str]]:
    HOLDERS.clear()
    with SimEnvironment(seed=seed, workers=2, job_attempts=1) as sim:
        report(b"A stalls past its TTL", stall=2 * TTL)
        report(b"B is quick", stall=0.0)
        sim.run_until_idle()
        errors = [str(entry.get("error")) for entry in sim.dlq_entries()]
        return sim.storage.get(KEY), sim.storage.fence_of(KEY), errors


def test_the_newest_fence_wins_in_every_interleaving() -> None:
    """Invariant, every seed: the key holds the data of the job with the newest fence,
    and that fence is recorded. When the stalled job A took the lock first, B took it
    over at A's TTL, and A's late write is refused (its job dead-lettered with the
    StaleFenceError); when B went first, A's write lands (and A's job fails on its lost
    lock instead)."""
    refused = landed = 0
    with virtual_time_session():
        for seed in range(100):
            stored, recorded, errors = run_seed(seed)
            assert len(HOLDERS) == 2
            newest = max(HOLDERS, key=lambda holder: holder[1] or Fence("", 0))
            assert (stored, recorded) == newest, seed
            assert [fence for _, fence in HOLDERS] == [
                Fence("report:daily", 1),
                Fence("report:daily", 2),
            ]
            if HOLDERS[0][0].startswith(b"A"):
                assert stored == b"B is quick"
                assert len(errors) == 1, errors
                assert "StaleFenceError" in errors[0], errors
                refused += 1
            else:
                assert stored == b"A stalls past its TTL"
                assert len(errors) == 1, errors
                assert "LockLostError" in errors[0], errors
                landed += 1
    assert refused > 0, "A went first in no seed out of 100"
    assert landed > 0, "B went first in no seed out of 100"
