# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""The ``lock`` stage hands its fence to the stages after it, and ``storage_write`` with
``fenced=True`` writes with it: a job whose lock ran out while it worked, and was taken
by another job that wrote, has its late write refused."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dcore import (
    Environment,
    Execute,
    Fence,
    NextFn,
    PipelineContext,
    PipelineDefinitionError,
    PluginRegistry,
    current_fence,
)
from dcore.backends.memory_locks import MemoryLock
from dcore.errors import StaleFenceError
from dcore_testing import ManualClock


class FileCtx(PipelineContext):
    file_path: str
    file_content: bytes = b""


def core(ctx: FileCtx) -> str:
    return ctx.file_path


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    return dcore_manual_env


def probe(registry: PluginRegistry, body: Any, name: str = "probe") -> None:
    class Probe(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            body(context)
            return next_fn(context)

    registry.register(name, Probe, replace=True)


def seen_fences(registry: PluginRegistry, name: str = "probe") -> list[Fence | None]:
    seen: list[Fence | None] = []
    probe(registry, lambda ctx: seen.append(current_fence()), name)
    return seen


def test_the_stages_after_the_lock_see_its_fence_and_it_grows_with_each_run(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    seen = seen_fences(dcore_registry)
    pipeline = FileCtx(file_path="a.txt").create_pipeline(core)
    pipeline.chain(Execute("lock", key="file:{file_path}")).chain(Execute("probe"))
    pipeline.run()
    pipeline.run(FileCtx(file_path="a.txt"))
    assert seen == [Fence("file:a.txt", 1), Fence("file:a.txt", 2)]
    assert current_fence() is None


def test_stages_before_the_lock_and_code_after_the_run_see_no_fence(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    before = seen_fences(dcore_registry, "before")
    after = seen_fences(dcore_registry, "after")
    pipeline = FileCtx(file_path="a.txt").create_pipeline(core)
    pipeline.chain(Execute("before")).chain(Execute("lock", key="file:{file_path}"))
    pipeline.chain(Execute("after"))
    pipeline.run()
    assert (before, after) == ([None], [Fence("file:a.txt", 1)])
    assert current_fence() is None


def test_the_fence_is_gone_after_a_failing_run(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    def fail(ctx: Any) -> None:
        assert current_fence() == Fence("file:a.txt", 1)
        raise KeyError("failed under the lock")

    probe(dcore_registry, fail)
    pipeline = FileCtx(file_path="a.txt").create_pipeline(core)
    pipeline.chain(Execute("lock", key="file:{file_path}")).chain(Execute("probe"))
    with pytest.raises(KeyError, match="failed under the lock"):
        pipeline.run()
    assert current_fence() is None


def test_nested_lock_stages_stack_their_fences(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    found: list[tuple[Fence | None, ...]] = []
    probe(
        dcore_registry,
        lambda ctx: found.append(
            (current_fence(), current_fence("dir:uploads"), current_fence("file:a.txt"))
        ),
    )
    pipeline = FileCtx(file_path="a.txt").create_pipeline(core)
    pipeline.chain(Execute("lock", key="dir:uploads"))
    pipeline.chain(Execute("lock", key="file:{file_path}")).chain(Execute("probe"))
    pipeline.run()
    assert found == [(Fence("file:a.txt", 1), Fence("dir:uploads", 1), Fence("file:a.txt", 1))]


def test_a_lock_backend_that_issues_no_fence_gives_none(
    env: Environment, dcore_registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    acquire = MemoryLock.acquire

    def unfenced(self: MemoryLock, **options: Any) -> bool:
        got = acquire(self, **options)
        self.fence = None
        return got

    monkeypatch.setattr(MemoryLock, "acquire", unfenced)
    seen = seen_fences(dcore_registry)
    pipeline = FileCtx(file_path="a.txt").create_pipeline(core)
    pipeline.chain(Execute("lock", key="file:{file_path}")).chain(Execute("probe"))
    pipeline.run()
    assert seen == [None]


# -- storage_write(fenced=True) -------------------------------------------------------------


def fenced_upload(ctx: FileCtx, *stages: Any) -> Any:
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Execute("lock", key="file:{file_path}", ttl=60))
    for stage in stages:
        pipeline.chain(stage)
    return pipeline.chain(Execute("storage_write", prefix="uploads/", fenced=True))


def test_storage_write_fenced_writes_with_the_locks_fence(env: Environment) -> None:
    assert fenced_upload(FileCtx(file_path="a.txt", file_content=b"v1")).run() == "a.txt"
    assert env.storage.get("uploads/a.txt") == b"v1"
    assert env.storage.fence_of("uploads/a.txt") == Fence("file:a.txt", 1)


def test_storage_write_fenced_without_a_lock_refuses_to_write(env: Environment) -> None:
    ctx = FileCtx(file_path="a.txt", file_content=b"v1")
    pipeline = ctx.create_pipeline(core).chain(Execute("storage_write", fenced=True))
    with pytest.raises(
        PipelineDefinitionError,
        match=(
            f"fenced=True, but job {ctx.job_id} holds no lock fence when writing 'a.txt': "
            r"chain Execute\('lock', key=...\) before this stage"
        ),
    ):
        pipeline.run()
    assert not env.storage.exists("a.txt")


def test_a_job_whose_lock_was_taken_over_has_its_late_write_refused(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    """Job A stalls past its lock's TTL; job B (another worker thread) takes the lock and
    writes; A's write then raises StaleFenceError and B's file stays, and A's lost lock
    is noted on that error."""

    def stall_while_b_runs(ctx: FileCtx) -> None:
        if ctx.file_content != b"A":
            return
        dcore_manual_clock.sleep(120)  # A's 60 s TTL runs out
        b = threading.Thread(
            target=fenced_upload(
                FileCtx(file_path="report.csv", file_content=b"B"), Execute("stall")
            ).run
        )
        b.start()
        b.join()

    probe(dcore_registry, stall_while_b_runs, "stall")
    with pytest.raises(StaleFenceError) as refused:
        fenced_upload(FileCtx(file_path="report.csv", file_content=b"A"), Execute("stall")).run()
    assert (refused.value.fence, refused.value.latest) == (
        Fence("file:report.csv", 1),
        Fence("file:report.csv", 2),
    )
    assert any("lost before release" in note for note in refused.value.__notes__)
    assert env.storage.get("uploads/report.csv") == b"B"
