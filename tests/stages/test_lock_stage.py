"""The ``lock`` stage: a key from the context, mutual exclusion, release on error, and
the two ways it can fail (not acquired, lost before release)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dcore import (
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PluginOptionsError,
    PluginRegistry,
)
from dcore.errors import LockLostError, LockNotAcquired
from dcore_testing import ManualClock


class FileCtx(PipelineContext):
    file_path: str


def core(ctx: FileCtx) -> str:
    return ctx.file_path


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    return dcore_manual_env


def probe(registry: PluginRegistry, body: Any) -> None:
    class Probe(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            body(context)
            return next_fn(context)

    registry.register("probe", Probe, replace=True)


def locked_pipeline(ctx: FileCtx, **options: Any) -> Any:
    options.setdefault("key", "file:{file_path}")
    return ctx.create_pipeline(core).chain(Execute("lock", **options)).chain(Execute("probe"))


def test_the_lock_is_held_while_the_rest_runs_and_released_after(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    held: list[bool] = []
    probe(
        dcore_registry,
        lambda ctx: held.append(
            not env.locks.lock(f"file:{ctx.file_path}").acquire(blocking=False)
        ),
    )
    assert locked_pipeline(FileCtx(file_path="a.txt")).run() == "a.txt"
    assert held == [True]
    assert env.locks.lock("file:a.txt").acquire(blocking=False)


def test_the_lock_is_released_when_the_rest_fails(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    def boom(ctx: Any) -> None:
        raise KeyError("missing")

    probe(dcore_registry, boom)
    with pytest.raises(KeyError):
        locked_pipeline(FileCtx(file_path="a.txt")).run()
    assert env.locks.lock("file:a.txt").acquire(blocking=False)


def test_a_held_key_raises_lock_not_acquired_naming_the_key(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    probe(dcore_registry, lambda ctx: None)
    other = env.locks.lock("file:a.txt")
    assert other.acquire()
    ctx = FileCtx(file_path="a.txt")
    with pytest.raises(
        LockNotAcquired,
        match=f"could not acquire 'file:a.txt' without waiting for job {ctx.job_id}",
    ):
        locked_pipeline(ctx, blocking=False).run()
    with pytest.raises(TimeoutError, match=r"within 0\.0s"):
        locked_pipeline(FileCtx(file_path="a.txt"), timeout=0.0).run()
    assert locked_pipeline(FileCtx(file_path="b.txt"), blocking=False).run() == "b.txt"


def test_two_jobs_on_one_key_never_overlap(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    inside = 0
    overlaps: list[int] = []
    guard = threading.Lock()

    def body(ctx: Any) -> None:
        nonlocal inside
        with guard:
            inside += 1
            overlaps.append(inside)
        with guard:
            inside -= 1

    probe(dcore_registry, body)
    pipeline = locked_pipeline(FileCtx(file_path="same"), timeout=30.0)
    threads = [
        threading.Thread(
            target=lambda: [pipeline.run(FileCtx(file_path="same")) for _ in range(20)]
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 80
    assert max(overlaps) == 1


def test_a_lock_that_expired_during_the_run_surfaces_lock_lost(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    probe(dcore_registry, lambda ctx: dcore_manual_clock.sleep(120))
    ctx = FileCtx(file_path="slow")
    with pytest.raises(
        LockLostError, match=f"'file:slow' \\(ttl 60.0s\\) expired while job {ctx.job_id} held it"
    ):
        locked_pipeline(ctx, ttl=60.0).run()


def test_a_failing_run_keeps_its_error_and_notes_the_lost_lock(
    env: Environment, dcore_registry: PluginRegistry, dcore_manual_clock: ManualClock
) -> None:
    def slow_then_fail(ctx: Any) -> None:
        dcore_manual_clock.sleep(120)
        raise ValueError("bad file")

    probe(dcore_registry, slow_then_fail)
    with pytest.raises(ValueError, match="bad file") as info:
        locked_pipeline(FileCtx(file_path="slow"), ttl=60.0).run()
    assert any("lost before release" in note for note in info.value.__notes__)


def test_a_template_field_the_context_lacks_is_named(
    env: Environment, dcore_registry: PluginRegistry
) -> None:
    probe(dcore_registry, lambda ctx: None)
    with pytest.raises(
        PluginOptionsError,
        match="names 'user_id', which FileCtx does not have; fields: job_id, errors, file_path",
    ):
        locked_pipeline(FileCtx(file_path="a"), key="user:{user_id}").run()


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("file:{}", "must name context fields"),
        ("file:{0}", "must name context fields"),
        ("file:{file_path.__class__}", "not positional .* attributes, indexes or formats"),
        ("file:{file_path[0]}", "attributes, indexes"),
        ("file:{file_path:>999999999}", "formats"),
        ("file:{file_path!r}", "formats"),
        ("file:{", "is malformed"),
        ("  ", "non-empty template"),
    ],
)
def test_a_bad_key_template_is_rejected_before_any_stage_runs(
    env: Environment, key: str, problem: str
) -> None:
    with pytest.raises(PluginOptionsError, match=problem):
        FileCtx(file_path="a").create_pipeline(core).chain(Execute("lock", key=key)).run()


def test_a_failing_release_does_not_hide_the_runs_own_error(
    env: Environment, dcore_registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dcore.errors import ServiceUnavailableError

    def unreachable(self: Any) -> None:
        raise ServiceUnavailableError("Redis at redis://127.0.0.1:1/0 is unreachable")

    def boom(ctx: FileCtx) -> None:
        handle = env.locks.lock(f"file:{ctx.file_path}")
        monkeypatch.setattr(type(handle), "release", unreachable)
        raise KeyError("the run's own failure")

    probe(dcore_registry, boom)

    with pytest.raises(KeyError, match="the run's own failure") as info:
        locked_pipeline(FileCtx(file_path="b.txt")).run()
    assert any(
        "releasing the lock 'file:b.txt' failed" in note
        for note in getattr(info.value, "__notes__", [])
    )
