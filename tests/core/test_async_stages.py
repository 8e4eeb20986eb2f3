# mypy: disable-error-code="abstract,call-arg,arg-type"
"""Async stages: ``async def execute`` with an awaitable next_fn, run by ``await
pipeline.arun()`` without blocking the loop (async stages awaited on it, plain ones and
the hand-off in worker threads); ``run()`` refuses one before the hand-off; a background
part with async stages runs on its worker thread's loop, with retries, dead letters and
compensation as a plain stage has them, on every in-process engine."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from fastapi import BackgroundTasks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore import (
    AsyncNextFn,
    AsyncStageError,
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobHandle,
    JobState,
    NextFn,
    PipelineContext,
    PipelineDefinitionError,
    PluginRegistry,
    RetryPolicy,
    Runtime,
    core_function,
    use_environment,
)
from dcore._core.runner import Stage
from dcore.dispatchers.thread import ThreadDispatcher
from dcore_testing import ManualClock

JOURNAL: list[str] = []
LOOP_TAGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
LOOP_COUNT = itertools.count(1)


def loop_tag(loop: asyncio.AbstractEventLoop) -> int:
    """A number of its own per loop: ``id()`` may be reused once a loop is freed."""
    if loop not in LOOP_TAGS:
        LOOP_TAGS[loop] = next(LOOP_COUNT)
    return LOOP_TAGS[loop]


class Trip(PipelineContext):
    steps: list[str] = []
    fail_at: str = ""  # the stage name that raises
    failures: int = 99  # how many times it raises (per job)
    tasks: Runtime[BackgroundTasks] = None


FAILED: dict[str, int] = {}


def _fails(ctx: Trip, name: str) -> None:
    if ctx.fail_at == name:
        key = f"{ctx.job_id}:{name}"
        seen = FAILED[key] = FAILED.get(key, 0) + 1
        if seen <= ctx.failures:
            raise ConnectionError(f"{name} failed (try {seen})")


class Fetch(Execute[Trip]):
    """An async stage: awaits, records where it ran, continues with await next_fn."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, next_fn: AsyncNextFn[Trip], context: Trip) -> Any:
        await asyncio.sleep(0)
        _fails(context, self.name)
        loop = asyncio.get_running_loop()
        JOURNAL.append(f"{self.name} on loop {loop_tag(loop)} in {threading.get_ident()}")
        context.steps.append(self.name)
        return await next_fn(context)

    async def compensate(self, context: Trip, error: BaseException) -> None:
        await asyncio.sleep(0)
        JOURNAL.append(f"undo {self.name} ({type(error).__name__})")
        JOURNAL.append(f"undo {self.name} on loop {loop_tag(asyncio.get_running_loop())}")


class Save(Execute[Trip]):
    """A plain stage between async ones."""

    def __init__(self, name: str) -> None:
        self.name = name

    def execute(self, next_fn: NextFn[Trip], context: Trip) -> Any:
        _fails(context, self.name)
        JOURNAL.append(f"{self.name} in {threading.get_ident()}")
        context.steps.append(self.name)
        return next_fn(context)

    def compensate(self, context: Trip, error: BaseException) -> None:
        JOURNAL.append(f"undo {self.name} ({type(error).__name__})")


@core_function
def trip_core(ctx: Trip) -> str:
    _fails(ctx, "core")
    return "+".join(ctx.steps)


@pytest.fixture(autouse=True)
def _plugins(dcore_registry: PluginRegistry) -> None:
    JOURNAL.clear()
    FAILED.clear()
    dcore_registry.register("fetch", Fetch, replace=True)
    dcore_registry.register("save", Save, replace=True)
    Fetch.compensation_retry = RetryPolicy(attempts=1)  # type: ignore[attr-defined]
    Save.compensation_retry = RetryPolicy(attempts=1)  # type: ignore[attr-defined]


def mixed(ctx: Trip) -> Any:
    p = ctx.create_pipeline(trip_core)
    return (
        p.chain(Execute("fetch", name="a"))
        .chain(Execute("save", name="b"))
        .chain(Execute("fetch", name="c"))
        .chain(Execute("save", name="d"))
    )


def test_arun_runs_a_mixed_chain_async_stages_on_the_loop_plain_ones_in_threads(
    dcore_env: Environment,
) -> None:
    async def main() -> tuple[Any, int]:
        result = await mixed(Trip()).arun()
        return result, loop_tag(asyncio.get_running_loop())

    caller = threading.get_ident()
    result, loop = asyncio.run(main())

    assert result == "a+b+c+d"
    a, b, c, d = JOURNAL
    assert a == f"a on loop {loop} in {caller}"
    assert c == f"c on loop {loop} in {caller}"
    assert b.startswith("b in ")
    assert b != f"b in {caller}"
    assert d.startswith("d in ")
    assert d != f"d in {caller}"


def test_run_refuses_an_async_stage_before_the_hand_off_and_names_arun(
    dcore_env: Environment,
) -> None:
    with pytest.raises(AsyncStageError, match=r"stage 0 \('fetch'\).*await pipeline.arun\(\)"):
        mixed(Trip()).run()
    p = Trip().create_pipeline(trip_core)
    p.chain(Execute("save", name="b")).chain(Execute("fetch", name="a")).chain(Dispatch("inline"))
    with pytest.raises(TypeError, match=r"stage 1 \('fetch'\).*before the Dispatch"):
        p.run()
    assert JOURNAL == []  # refused before any stage ran


def test_an_async_core_function_is_refused_when_the_pipeline_is_made(
    dcore_env: Environment,
) -> None:
    async def finish(ctx: Trip) -> str:
        return "done"

    with pytest.raises(PipelineDefinitionError, match=r"core_fn .*finish.* is async.*arun"):
        Trip().create_pipeline(finish)


def test_run_runs_a_pipeline_whose_async_stages_all_follow_the_hand_off(
    dcore_env: Environment,
) -> None:
    ctx = Trip()
    p = ctx.create_pipeline(trip_core).chain(Execute("save", name="b"))
    p.chain(Dispatch("inline")).chain(Execute("fetch", name="c")).chain(Execute("save", name="d"))
    assert p.run().status == "succeeded"
    assert dcore_env.jobs.get(ctx.job_id).result == "b+c+d"
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED


def test_arun_keeps_the_loop_serving_while_stages_wait(dcore_env: Environment) -> None:
    """A plain stage blocked on a threading.Event set by a coroutine on the same loop
    would deadlock if it ran on the loop; so would an async stage awaiting one set
    after it is reached."""
    released = threading.Event()
    gate = asyncio.Event

    class Blocking(Execute[Trip]):
        def execute(self, next_fn: NextFn[Trip], context: Trip) -> Any:
            assert released.wait(10), "the loop never ran the coroutine that releases me"
            return next_fn(context)

    class Waiting(Execute[Trip]):
        def __init__(self) -> None:
            self.opened = gate()

        async def execute(self, next_fn: AsyncNextFn[Trip], context: Trip) -> Any:
            JOURNAL.append("waiting")
            await self.opened.wait()
            return await next_fn(context)

    dcore_env.registry.register("blocking", Blocking)
    dcore_env.registry.register("waiting", Waiting)

    async def main() -> Any:
        p = Trip().create_pipeline(trip_core).chain(Execute("blocking")).chain(Execute("waiting"))
        run = asyncio.create_task(p.arun())
        await asyncio.sleep(0.01)
        released.set()  # the loop runs while the plain stage blocks in its thread
        while JOURNAL != ["waiting"]:
            await asyncio.sleep(0.001)
        waiting = p._freeze().instances[1]
        assert not run.done()
        waiting.opened.set()  # ... and while the async stage waits
        return await asyncio.wait_for(run, 10)

    assert asyncio.run(main()) == ""


def test_arun_hands_off_like_run_and_the_background_part_runs_on_the_thread_engine(
    dcore_env: Environment,
) -> None:
    ctx = Trip()
    p = ctx.create_pipeline(trip_core).chain(Execute("fetch", name="a")).chain(Dispatch("thread"))
    p.chain(Execute("fetch", name="c")).chain(Execute("save", name="d"))
    p.chain(Execute("fetch", name="e"))

    handle = asyncio.run(p.arun())
    ThreadDispatcher.drain(10)

    assert isinstance(handle, JobHandle)
    assert handle.job_id == ctx.job_id
    record = dcore_env.jobs.get(ctx.job_id)
    assert (record.state, record.result) == (JobState.SUCCEEDED, "a+c+d+e")


def test_a_background_part_runs_on_one_loop_kept_per_worker_thread(
    tmp_path: Path,
    dcore_registry: PluginRegistry,
) -> None:
    env = Environment(
        DcoreSettings(storage_root=tmp_path, thread_workers=1), registry=dcore_registry
    )
    with use_environment(env):
        for _ in range(3):
            p = Trip().create_pipeline(trip_core).chain(Dispatch("thread"))
            p.chain(Execute("fetch", name="c")).run()
        ThreadDispatcher.drain(10)
    env.close()
    loops = {line.split(" in ")[0] for line in JOURNAL}
    assert len(JOURNAL) == 3
    assert len(loops) == 1


def test_async_stages_after_a_plain_one_keep_their_loop_from_job_to_job(
    tmp_path: Path,
    dcore_registry: PluginRegistry,
) -> None:
    """Async stages that follow a plain stage in a background part run nested inside
    it, on the worker thread's next loop: that one is kept from job to job too, so a
    stage there may keep a loop-bound client."""
    env = Environment(
        DcoreSettings(storage_root=tmp_path, thread_workers=1), registry=dcore_registry
    )
    with use_environment(env):
        for _ in range(3):
            p = Trip().create_pipeline(trip_core).chain(Dispatch("thread"))
            p.chain(Execute("fetch", name="a")).chain(Execute("save", name="b"))
            p.chain(Execute("fetch", name="c")).run()
        ThreadDispatcher.drain(10)
    env.close()
    outer = {line.split(" in ")[0].split()[-1] for line in JOURNAL if line.startswith("a on")}
    inner = {line.split(" in ")[0].split()[-1] for line in JOURNAL if line.startswith("c on")}
    assert len(JOURNAL) == 9
    assert len(outer) == 1  # one loop for every job's first level ...
    assert len(inner) == 1  # ... and one for the level nested in its plain stage
    assert outer != inner


def test_an_async_stage_retries_its_own_failures_only(dcore_env: Environment) -> None:
    seen: list[dict[str, Any]] = []
    dcore_env.events.subscribe("stage.failed", lambda event: seen.append(event.payload))
    ctx = Trip(fail_at="a", failures=2)
    p = ctx.create_pipeline(trip_core)
    p.chain(Execute("fetch", name="a"), retry=RetryPolicy(attempts=3, initial=0.0))
    assert asyncio.run(p.arun()) == "a"
    assert [e.get("attempt") for e in seen] == [1, 2]  # two retried, then it passed
    assert {e["stage"] for e in seen} == {"fetch#0"}

    # a failure of the core, further down, is not the async stage's to retry
    FAILED.clear()
    ctx = Trip(fail_at="core", failures=1)
    p = ctx.create_pipeline(trip_core)
    p.chain(Execute("fetch", name="a"), retry=RetryPolicy(attempts=3, initial=0.0))
    with pytest.raises(ConnectionError, match="core failed"):
        asyncio.run(p.arun())
    assert {f"{ctx.job_id}:core": 1} == FAILED


def test_an_async_stage_retries_on_the_environment_clock_as_a_plain_one_does(
    dcore_manual_env: Environment, dcore_manual_clock: ManualClock
) -> None:
    """Under a test's manual clock, an async stage's retry waits move that clock at once
    (and are recorded), as a plain stage's do; no wall-clock time is spent."""
    policy = RetryPolicy(attempts=3, initial=1.0, backoff=2.0)
    ctx = Trip(fail_at="a", failures=2)
    p = ctx.create_pipeline(trip_core).chain(Execute("fetch", name="a"), retry=policy)
    started = time.perf_counter()

    assert asyncio.run(p.arun()) == "a"

    assert time.perf_counter() - started < 0.5
    assert dcore_manual_clock.sleeps == [1.0, 2.0]


def test_arun_undoes_the_completed_stages_of_a_failing_synchronous_part_as_run_does(
    dcore_env: Environment,
) -> None:
    ctx = Trip(fail_at="core")
    with pytest.raises(ConnectionError):
        asyncio.run(mixed(ctx).arun())
    assert [j for j in JOURNAL if j.startswith("undo") and " on loop " not in j] == [
        "undo d (ConnectionError)",
        "undo c (ConnectionError)",
        "undo b (ConnectionError)",
        "undo a (ConnectionError)",
    ]


def test_arun_undoes_an_async_stage_on_the_loop_it_ran_on(dcore_env: Environment) -> None:
    """A stage may make a loop-bound client in execute and await it in compensate: the
    undo of a failing synchronous part runs its coroutine on the request's loop."""

    async def main() -> int:
        with pytest.raises(ConnectionError):
            await mixed(Trip(fail_at="core")).arun()
        return loop_tag(asyncio.get_running_loop())

    request_loop = asyncio.run(main())
    assert f"a on loop {request_loop}" in JOURNAL[0]
    assert f"undo a on loop {request_loop}" in JOURNAL
    assert f"undo c on loop {request_loop}" in JOURNAL


def test_observers_see_async_stages_enter_and_exit(dcore_env: Environment) -> None:
    seen: list[tuple[str, str, str | None]] = []

    class Watch:
        def stage_enter(self, stage: Stage, context: Any) -> None:
            seen.append(("enter", stage.origin, None))

        def stage_exit(self, stage: Stage, context: Any, error: BaseException | None) -> None:
            seen.append(("exit", stage.origin, type(error).__name__ if error else None))

    dcore_env.observers.append(Watch())
    with pytest.raises(ConnectionError):
        asyncio.run(mixed(Trip(fail_at="c")).arun())
    assert seen == [
        ("enter", "fetch#0", None),
        ("enter", "save#1", None),
        ("enter", "fetch#2", None),
        ("exit", "fetch#2", "ConnectionError"),
        ("exit", "save#1", "ConnectionError"),
        ("exit", "fetch#0", "ConnectionError"),
    ]


ENGINES = ["inline", "thread", "fastapi"]


def background(ctx: Trip, engine: str, retry: RetryPolicy | None = None) -> Any:
    """An async stage and a plain one before the Dispatch, async-plain-async after."""
    p = ctx.create_pipeline(trip_core)
    p.chain(Execute("fetch", name="a")).chain(Execute("save", name="b"))
    p.chain(Dispatch(engine, retry=retry))
    p.chain(Execute("fetch", name="c")).chain(Execute("save", name="d"))
    p.chain(Execute("fetch", name="e"))
    return p


def run_on(engine: str, ctx: Trip, retry: RetryPolicy | None = None) -> None:
    async def main() -> None:
        if engine == "fastapi":
            ctx.tasks = BackgroundTasks()
        try:
            await background(ctx, engine, retry).arun()
        except ConnectionError:
            assert engine == "inline"  # the inline engine raises the job's error
        if engine == "fastapi":
            assert ctx.tasks is not None
            await ctx.tasks()  # what Starlette does after sending the response
        elif engine == "thread":
            await asyncio.to_thread(ThreadDispatcher.drain, 10)

    asyncio.run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_async_stages_before_and_after_the_dispatch_run_on_each_engine(
    dcore_env: Environment, engine: str
) -> None:
    ctx = Trip()
    run_on(engine, ctx)
    record = dcore_env.jobs.get(ctx.job_id)
    assert (record.state, record.result) == (JobState.SUCCEEDED, "a+b+c+d+e")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_async_stage_after_the_dispatch_retries_then_dead_letters_and_undoes(
    dcore_env: Environment, engine: str
) -> None:
    ctx = Trip(fail_at="e")
    run_on(engine, ctx, RetryPolicy(attempts=2, initial=0.0))

    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    # the job policy's two attempts (the inline engine's one attempt is its last)
    attempts = 1 if engine == "inline" else 2
    assert FAILED[f"{ctx.job_id}:e"] == attempts
    # the stages of both attempts completed once each and are undone once, in reverse
    assert [j for j in JOURNAL if j.startswith("undo") and " on loop " not in j] == [
        "undo d (RuntimeError)",
        "undo c (RuntimeError)",
        "undo b (RuntimeError)",
        "undo a (RuntimeError)",
    ]
    [letter] = [e.payload for e in dcore_env.events.entries(dcore_env.settings.dlq_topic)]
    assert letter["compensated"] is True
    assert f"ConnectionError: e failed (try {attempts})" in letter["error"]


@pytest.mark.parametrize("engine", ["thread", "fastapi"])  # inline: one attempt
def test_an_async_stage_that_fails_once_is_retried_by_the_job_policy(
    dcore_env: Environment, engine: str
) -> None:
    ctx = Trip(fail_at="c", failures=1)
    run_on(engine, ctx, RetryPolicy(attempts=3, initial=0.0))
    record = dcore_env.jobs.get(ctx.job_id)
    assert (record.state, record.attempts, record.result) == (JobState.SUCCEEDED, 2, "a+b+c+d+e")


def test_more_concurrent_requests_than_executor_threads_do_not_starve(
    dcore_env: Environment,
) -> None:
    """Each request's first plain stage waits in its thread for the async stage after
    it, which waits until every request has reached it; the hand-off after that needs
    a thread too. Forty requests outnumber the default executor's threads (at most 32):
    had the waiting stages taken them, no request could ever finish."""
    requests = 40

    class Barrier(Execute[Trip]):
        def __init__(self) -> None:
            self.reached = 0
            self.all_in: asyncio.Event | None = None

        async def execute(self, next_fn: AsyncNextFn[Trip], context: Trip) -> Any:
            if self.all_in is None:
                self.all_in = asyncio.Event()
            self.reached += 1
            if self.reached == requests:
                self.all_in.set()
            await self.all_in.wait()
            return await next_fn(context)

    dcore_env.registry.register("barrier", Barrier)
    p = Trip().create_pipeline(trip_core).chain(Execute("save", name="b"))
    p.chain(Execute("barrier")).chain(Dispatch("inline")).chain(Execute("save", name="d"))

    async def crowd() -> list[Any]:
        return await asyncio.wait_for(
            asyncio.gather(*(p.arun(Trip()) for _ in range(requests))), 30
        )

    results = asyncio.run(crowd())
    assert [r.status for r in results] == ["succeeded"] * requests


def test_more_concurrent_requests_than_pooled_instances_wait_without_blocking_the_loop(
    dcore_env: Environment,
) -> None:
    """A pooled async stage (``__enter__``/``__exit__``) leases an instance across its
    await. With more requests than the pool holds (8), the ninth waits for an instance
    off the loop, so the eight holding one can finish and give theirs back."""
    requests = 12
    entered: list[int] = []

    class Pooled(Execute[Trip]):
        held = 0
        most = 0
        full: asyncio.Event | None = None  # set once the pool's 8 instances are all held

        def __enter__(self) -> Pooled:
            entered.append(threading.get_ident())
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        async def execute(self, next_fn: AsyncNextFn[Trip], context: Trip) -> Any:
            if Pooled.full is None:
                Pooled.full = asyncio.Event()
            Pooled.held += 1
            Pooled.most = max(Pooled.most, Pooled.held)
            if Pooled.held == 8:
                Pooled.full.set()
            await Pooled.full.wait()  # hold the instance until every one is taken
            Pooled.held -= 1
            return await next_fn(context)

    dcore_env.registry.register("pooled", Pooled)
    p = Trip().create_pipeline(trip_core).chain(Execute("pooled"))

    async def crowd() -> list[Any]:
        return await asyncio.gather(*(p.arun(Trip()) for _ in range(requests)))

    results: list[Any] = []
    # in a thread of its own: a blocked loop cannot time itself out
    runner = threading.Thread(target=lambda: results.extend(asyncio.run(crowd())), daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the loop stalled waiting for a pooled instance"
    assert results == [""] * requests  # the core joins the steps: there are none
    assert Pooled.most == 8  # the pool's size: the others waited for an instance
    assert len(entered) == 8  # eight instances made, each entered once
    assert threading.get_ident() not in entered  # entered off the loop's thread


class Mark(Execute[Trip]):
    """Appends its name, fails when ``context.fail_at`` names it; plain."""

    def __init__(self, name: str) -> None:
        self.name = name

    def execute(self, next_fn: NextFn[Trip], context: Trip) -> Any:
        context.steps.append(self.name)
        if context.fail_at == self.name:
            raise ConnectionError(f"{self.name} failed")
        return next_fn(context)

    def compensate(self, context: Trip, error: BaseException) -> None:
        context.steps.append(f"undo {self.name}")


class AsyncMark(Mark):
    """The same, async."""

    async def execute(self, next_fn: AsyncNextFn[Trip], context: Trip) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        context.steps.append(self.name)
        if context.fail_at == self.name:
            raise ConnectionError(f"{self.name} failed")
        return await next_fn(context)

    async def compensate(self, context: Trip, error: BaseException) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        context.steps.append(f"undo {self.name}")


@core_function
def steps_core(ctx: Trip) -> str:
    return "+".join(ctx.steps)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.booleans(), max_size=6), dispatch=st.integers(-1, 6), fail=st.integers(-1, 6)
)
def test_arun_over_any_mix_of_async_and_plain_stages_does_what_run_does_over_plain_twins(
    dcore_env: Environment, kinds: list[bool], dispatch: int, fail: int
) -> None:
    """Same stages in the same order, same value back, same failure, same undoing, and
    the same background part (here inline: it runs before the call returns)."""
    dcore_env.registry.register("mark", Mark, replace=True)
    dcore_env.registry.register("amark", AsyncMark, replace=True)
    Mark.compensation_retry = RetryPolicy(attempts=1)  # type: ignore[attr-defined]

    def build(ctx: Trip, asynchronous: bool) -> Any:
        p = ctx.create_pipeline(steps_core)
        for i, is_async in enumerate(kinds):
            if i == dispatch:
                p.chain(Dispatch("inline", retry=RetryPolicy(attempts=1)))
            p.chain(Execute("amark" if asynchronous and is_async else "mark", name=f"s{i}"))
        return p

    def outcome(ctx: Trip, call: Any) -> tuple[Any, list[str]]:
        try:
            value = call()
        except ConnectionError as exc:
            value = str(exc)
        if isinstance(value, JobHandle):
            value = dcore_env.jobs.get(value.job_id).result
        return value, list(ctx.steps)

    fail_at = f"s{fail}" if fail >= 0 else ""
    plain, mixed = Trip(fail_at=fail_at), Trip(fail_at=fail_at)
    expected = outcome(plain, build(plain, False).run)
    assert outcome(mixed, lambda: asyncio.run(build(mixed, True).arun())) == expected
