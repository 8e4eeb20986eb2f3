# mypy: disable-error-code="abstract,call-arg,arg-type"
"""Compensation on every in-process engine: a job failing at stage 4 undoes 3, 2, 1 in
that order, once each; a delivery that died while undoing is resumed by the next one,
which undoes only what is left; a compensation that fails for good dead-letters the job
with both errors; a failing synchronous part undoes its own completed stages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import BackgroundTasks

from dcore import (
    Dispatch,
    Environment,
    Execute,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
    RetryPolicy,
    Runtime,
    core_function,
)
from dcore.dispatchers.thread import ThreadDispatcher
from dcore.errors import ServiceUnavailableError

JOURNAL: list[str] = []


class Order(PipelineContext):
    fail_at: int = 4
    #: the stage whose compensation fails (first n times; 99: for good); -1: none
    undo_fails_at: int = -1
    undo_failures: int = 0
    #: the stage whose compensation kills its worker (once); -1: none
    undo_dies_at: int = -1
    tasks: Runtime[BackgroundTasks] = None


class Died(BaseException):
    """Stands for the worker dying: a BaseException leaves the job as it was."""


FAILURES: dict[str, int] = {}


class Step(Execute[Order]):
    def __init__(self, n: int) -> None:
        self.n = n

    def execute(self, next_fn: NextFn[Order], context: Order) -> Any:
        if context.fail_at == self.n:
            raise RuntimeError(f"stage {self.n} fails")
        JOURNAL.append(f"do {self.n}")
        return next_fn(context)

    def compensate(self, context: Order, error: BaseException) -> None:
        key = f"{context.job_id}:{self.n}"
        if context.undo_dies_at == self.n and FAILURES.get(f"died:{key}") is None:
            FAILURES[f"died:{key}"] = 1
            raise Died()
        if context.undo_fails_at == self.n:
            seen = FAILURES[key] = FAILURES.get(key, 0) + 1
            if seen <= context.undo_failures:
                raise ConnectionError(f"undo {self.n} failed (try {seen})")
        JOURNAL.append(f"undo {self.n} ({type(error).__name__})")


class NoUndo(Execute[Order]):
    """Stage 4: nothing to undo."""

    def __init__(self, n: int) -> None:
        self.n = n

    def execute(self, next_fn: NextFn[Order], context: Order) -> Any:
        if context.fail_at == self.n:
            raise RuntimeError(f"stage {self.n} fails")
        return next_fn(context)


@core_function
def order_core(ctx: Order) -> str:
    return "placed"


@pytest.fixture(autouse=True)
def _plugins(dcore_registry: PluginRegistry) -> None:
    JOURNAL.clear()
    FAILURES.clear()
    dcore_registry.register("undoable", Step, replace=True)
    dcore_registry.register("final_step", NoUndo, replace=True)
    # compensations retry quickly here (their default waits 1 s, then 2 s)
    Step.compensation_retry = RetryPolicy(attempts=3, initial=0.0)  # type: ignore[attr-defined]


def pipeline(ctx: Order, dispatcher: str, retry: RetryPolicy | None = None) -> Any:
    p = ctx.create_pipeline(order_core)
    p.chain(Execute("undoable", n=0))  # before the hand-off: it completed too
    p.chain(Dispatch(dispatcher, retry=retry))
    for n in (1, 2, 3):
        p.chain(Execute("undoable", n=n))
    p.chain(Execute("final_step", n=4))
    return p


def run_on(
    engine: str,
    ctx: Order,
    retry: RetryPolicy | None = None,
    raises: type[Exception] = RuntimeError,
) -> None:
    """Run the order pipeline's job on ``engine`` to its end (the inline engine raises
    the job's error, ``raises``, in the caller)."""
    if engine == "fastapi":
        ctx.tasks = BackgroundTasks()
        pipeline(ctx, "fastapi", retry).run()
        asyncio.run(ctx.tasks())
    elif engine == "thread":
        pipeline(ctx, "thread", retry).run()
        ThreadDispatcher.drain(10)
    else:
        with pytest.raises(raises):
            pipeline(ctx, "inline", retry).run()


ENGINES = ["inline", "thread", "fastapi"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_job_failing_at_stage_4_undoes_3_2_1_and_0_once_each_in_reverse(
    dcore_env: Environment, engine: str
) -> None:
    ctx = Order()
    run_on(engine, ctx)

    assert JOURNAL == [
        "do 0",
        "do 1",
        "do 2",
        "do 3",
        "undo 3 (RuntimeError)",
        "undo 2 (RuntimeError)",
        "undo 1 (RuntimeError)",
        "undo 0 (RuntimeError)",
    ]
    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    # pipeline indexes: stage 0 is index 0, the Dispatch index 1, stages 1-3 indexes 2-4
    assert (record.completed, record.compensated) == ([0, 2, 3, 4], [0, 2, 3, 4])
    assert [t.state for t in record.history][-3:] == ["FAILED", "COMPENSATING", "DEAD"]
    [letter] = [e.payload for e in dcore_env.events.entries(dcore_env.settings.dlq_topic)]
    assert letter["compensated"] is True
    assert letter["compensation_error"] is None
    assert "stage 4 fails" in letter["error"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_compensation_that_fails_for_good_dead_letters_with_both_errors(
    dcore_env: Environment, engine: str
) -> None:
    ctx = Order(undo_fails_at=2, undo_failures=99)
    run_on(engine, ctx)

    # 3 undone, 2 failed three times (its retry policy), 1 and 0 left alone: they may
    # depend on 2 being undone
    assert JOURNAL[-1] == "undo 3 (RuntimeError)"
    assert FAILURES[f"{ctx.job_id}:2"] == 3
    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    assert record.compensated == [4]  # stage 3
    [letter] = [e.payload for e in dcore_env.events.entries(dcore_env.settings.dlq_topic)]
    assert letter["compensated"] is False
    assert "RuntimeError: stage 4 fails" in letter["error"]
    assert "compensation of stage undoable#3 failed: ConnectionError: undo 2" in (letter["error"])
    assert letter["compensation_error"].startswith("compensation of stage undoable#3")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_completion_the_job_store_failed_to_record_is_still_undone(
    dcore_env: Environment, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the job store is unreachable as stage 2's completion is recorded, on the job's
    # only attempt: the attempt fails there, and its compensation must undo stage 2 too
    # (it charged the card) along with 1 and 0
    record = dcore_env.jobs.mark_completed
    failed: list[int] = []

    def unreachable_once(job_id: str, *, owner: str, index: int) -> None:
        if index == 3 and not failed:
            failed.append(index)
            raise ServiceUnavailableError("the job store is unreachable")
        record(job_id, owner=owner, index=index)

    monkeypatch.setattr(dcore_env.jobs, "mark_completed", unreachable_once)
    ctx = Order()
    run_on(engine, ctx, RetryPolicy(attempts=1), raises=ServiceUnavailableError)

    assert failed == [3]
    assert JOURNAL == [
        "do 0",
        "do 1",
        "do 2",
        "undo 2 (RuntimeError)",
        "undo 1 (RuntimeError)",
        "undo 0 (RuntimeError)",
    ]
    job = dcore_env.jobs.get(ctx.job_id)
    assert (job.state, job.completed, job.compensated) == (JobState.DEAD, [0, 2, 3], [0, 2, 3])


def test_a_compensation_retried_after_a_blip_undoes_everything(
    dcore_manual_env: Environment,
) -> None:
    ctx = Order(undo_fails_at=2, undo_failures=2)
    run_on("inline", ctx)
    assert [j for j in JOURNAL if j.startswith("undo")] == [
        "undo 3 (RuntimeError)",
        "undo 2 (RuntimeError)",
        "undo 1 (RuntimeError)",
        "undo 0 (RuntimeError)",
    ]
    assert dcore_manual_env.jobs.get(ctx.job_id).compensated == [0, 2, 3, 4]


def test_a_delivery_that_died_while_undoing_is_resumed_by_the_next(
    dcore_manual_env: Environment,
) -> None:
    ctx = Order(undo_dies_at=1)
    p = pipeline(ctx, "inline")
    with pytest.raises(Died):
        p.run()
    record = dcore_manual_env.jobs.get(ctx.job_id)
    assert record.state is JobState.COMPENSATING
    assert record.compensated == [3, 4]  # 3 and 2 were undone before the worker died

    continuation = p._freeze().continuation(2)  # the rest after the Dispatch
    busy = continuation.deliver(ctx, attempt=1)  # its lease is still live
    assert busy.outcome.action == "defer"
    dcore_manual_env.clock.sleep(dcore_manual_env.settings.lease_ttl + 1)
    resumed = continuation.deliver(ctx, attempt=1)

    assert resumed.outcome.action == "dead"
    assert [j for j in JOURNAL if j.startswith("undo")] == [
        "undo 3 (RuntimeError)",
        "undo 2 (RuntimeError)",
        "undo 1 (RuntimeError)",
        "undo 0 (RuntimeError)",
    ]  # each once: 3 and 2 were not undone again
    record = dcore_manual_env.jobs.get(ctx.job_id)
    assert (record.state, record.compensated) == (JobState.DEAD, [0, 2, 3, 4])
    assert len(dcore_manual_env.events.entries(dcore_manual_env.settings.dlq_topic)) == 1


def test_a_failing_synchronous_part_undoes_its_completed_stages(dcore_env: Environment) -> None:
    ctx = Order(fail_at=1)  # stage 1 runs in the caller here: no Dispatch before it
    p = ctx.create_pipeline(order_core)
    for n in (0, 1):
        p.chain(Execute("undoable", n=n))
    with pytest.raises(RuntimeError, match="stage 1 fails"):
        p.run()
    assert JOURNAL == ["do 0", "undo 0 (RuntimeError)"]


def test_a_job_that_succeeds_undoes_nothing(dcore_env: Environment) -> None:
    ctx = Order(fail_at=-1)
    run_on("thread", ctx)
    assert not [j for j in JOURNAL if j.startswith("undo")]
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED


def test_describe_shows_which_stages_compensate(dcore_env: Environment) -> None:
    text = pipeline(Order(), "thread").describe()
    assert text == (
        "[sync] undoable (undo) ⇒ dispatch(thread) ┆ async ┆ [background] "
        "undoable (undo) → undoable (undo) → undoable (undo) → final_step → core"
    )


def test_the_mermaid_picture_marks_the_stages_that_compensate(dcore_env: Environment) -> None:
    picture = pipeline(Order(), "thread").to_mermaid()
    assert picture.count("(undo)") == 4
    assert "final_step (undo)" not in picture


def test_a_job_whose_compensation_never_started_is_found_by_the_recovery_sweep(
    dcore_manual_env: Environment,
) -> None:
    from dcore._core.message import JobMessage
    from dcore._core.recovery import lost_jobs

    ctx = Order()
    p = pipeline(ctx, "inline")
    message = p._freeze().continuation(2).to_message(ctx).to_json()
    jobs = dcore_manual_env.jobs
    jobs.create("j", message=message)
    jobs.claim("j", attempt=1, owner="w", lease=15.0)
    jobs.mark_completed("j", owner="w", index=2)
    # the worker recorded the failure, then died before starting to undo stage 2
    jobs.end_attempt("j", JobState.FAILED, owner="w", error="boom")
    assert jobs.get("j").plan == "compensate"
    grace = dcore_manual_env.settings.lease_ttl
    assert lost_jobs(dcore_manual_env, pending_after=60, grace=grace) == []
    dcore_manual_env.clock.sleep(grace + 1)
    [lost] = lost_jobs(dcore_manual_env, pending_after=60, grace=grace)
    assert (lost.job_id, lost.reason) == ("j", "its compensation never started")
    assert JobMessage.parse(lost.message).attempt == 1  # the same attempt, to undo it
