# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""Hypothesis over random chains: ordering, the sync/async boundary, short-circuits,
exception types, return values, and the one-Dispatch rule (DESIGN §2).

A chain is 0-12 recording Execute stages with at most one Dispatch anywhere. A small
model (``simulate``) says what each chain must record; the real run must match it
exactly, which also proves every stage ran exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore import (
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
    Runtime,
    use_environment,
)
from dcore._core.pipeline import origin_of
from dcore.dispatchers.thread import ThreadDispatcher, worker_pool


class Boom(Exception):
    """A project-specific exception type that must come out unchanged."""


ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "Boom": Boom,
}


class Journal:
    """What the stages did, in order. Shared by the caller and the worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[Any, ...]] = []

    def add(self, *item: Any) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._items)


class ChainContext(PipelineContext):
    n: int = 0
    journal: Runtime[Journal] = None


class Recording(Execute[ChainContext]):
    """Records entering and the value that came back; may stop or raise instead."""

    def __init__(self, tag: str, action: str = "continue", error: str = "ValueError") -> None:
        self.tag = tag
        self.action = action
        self.error = error

    def execute(self, next_fn: NextFn[ChainContext], context: ChainContext) -> Any:
        journal = context.journal
        assert journal is not None
        journal.add("enter", self.tag)
        if self.action == "stop":
            return f"stopped at {self.tag}"
        if self.action == "raise":
            raise ERRORS[self.error](f"boom at {self.tag}")
        result = next_fn(context)
        journal.add("back", self.tag, result)
        return result


def core(ctx: ChainContext) -> str:
    assert ctx.journal is not None
    ctx.journal.add("core")
    return f"core saw n={ctx.n}"


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One chain element: an Execute stage (action, error) or the Dispatch."""

    dispatch: bool = False
    action: str = "continue"
    error: str = "ValueError"


Outcome = tuple[str, Any]  # ("value", v) | ("raise", exception type)
Simulated = tuple[list[tuple[Any, ...]], Outcome]


def simulate(steps: list[tuple[str, Step]], end: Callable[[], Simulated]) -> Simulated:
    """What running ``steps`` (no Dispatch among them) then ``end`` must record/return."""
    if not steps:
        return end()
    (tag, step), rest = steps[0], steps[1:]
    journal: list[tuple[Any, ...]] = [("enter", tag)]
    if step.action == "stop":
        return journal, ("value", f"stopped at {tag}")
    if step.action == "raise":
        return journal, ("raise", ERRORS[step.error])
    inner, outcome = simulate(rest, end)
    journal += inner
    if outcome[0] == "value":
        journal.append(("back", tag, outcome[1]))
    return journal, outcome


def split(steps: list[Step]) -> tuple[list[tuple[str, Step]], int | None, list[tuple[str, Step]]]:
    tagged = [(f"s{i}", s) for i, s in enumerate(steps)]
    for i, step in enumerate(steps):
        if step.dispatch:
            return tagged[:i], i, tagged[i + 1 :]
    return tagged, None, []


def core_end(n: int) -> Callable[[], Simulated]:
    return lambda: ([("core",)], ("value", f"core saw n={n}"))


# -- strategies -----------------------------------------------------------------------------

execute_steps = st.builds(
    Step,
    action=st.sampled_from(["continue", "continue", "continue", "stop", "raise"]),
    error=st.sampled_from(sorted(ERRORS)),
)


@st.composite
def chains(draw: st.DrawFn) -> list[Step]:
    steps = draw(st.lists(execute_steps, max_size=12))
    if draw(st.booleans()):
        steps.insert(draw(st.integers(0, len(steps))), Step(dispatch=True))
    return steps


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, dcore_registry: PluginRegistry) -> Iterator[Environment]:
    """One worker thread, so a gate job can hold the background part back."""
    dcore_registry.register("rec", Recording)
    environment = Environment(
        DcoreSettings(storage_root=tmp_path, thread_workers=1), registry=dcore_registry
    )
    with use_environment(environment):
        yield environment
    environment.close()


def build(steps: list[Step], ctx: ChainContext, dispatcher: str) -> Any:
    pipeline = ctx.create_pipeline(core)
    for i, step in enumerate(steps):
        if step.dispatch:
            pipeline.chain(Dispatch, plugin=dispatcher)
        elif i % 2:  # both chain syntaxes
            pipeline.chain(Execute("rec", tag=f"s{i}", action=step.action, error=step.error))
        else:
            pipeline.chain(Execute, plugin="rec", tag=f"s{i}", action=step.action, error=step.error)
    return pipeline


def run_outcome(run: Callable[[], Any]) -> tuple[Outcome, BaseException | None]:
    try:
        return ("value", run()), None
    except Exception as exc:
        return ("raise", type(exc)), exc


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# -- properties -------------------------------------------------------------------------------


@PROPERTY
@given(steps=chains(), n=st.integers(0, 9))
def test_thread_chain_runs_prefix_before_return_and_suffix_once_afterwards(
    env: Environment, steps: list[Step], n: int
) -> None:
    journal = Journal()
    ctx = ChainContext(n=n, journal=journal)
    pipeline = build(steps, ctx, "thread")
    sync, dispatch_at, background = split(steps)
    handle = JobHandle(job_id=ctx.job_id, status="scheduled")
    expected_sync, expected_outcome = simulate(
        sync, (lambda: ([], ("value", handle))) if dispatch_at is not None else core_end(n)
    )

    gate = threading.Event()
    worker_pool(env).submit(gate.wait)  # the only worker waits: nothing else runs yet
    try:
        outcome, error = run_outcome(pipeline.run)
        journal_at_return = journal.snapshot()
    finally:
        gate.set()
    ThreadDispatcher.drain(timeout=30, environment=env)

    assert journal_at_return == expected_sync
    assert outcome == expected_outcome
    if error is not None:  # the stage that raised is recorded as its origin
        raiser = next(tag for tag, s in sync if s.action == "raise")
        assert origin_of(error) == f"rec#{raiser[1:]}"

    reached_dispatch = dispatch_at is not None and all(s.action == "continue" for _, s in sync)
    expected_background, bg_outcome = (
        simulate(background, core_end(n)) if reached_dispatch else ([], None)
    )
    assert journal.snapshot() == expected_sync + expected_background
    if reached_dispatch:
        record = env.jobs.get(ctx.job_id)
        assert bg_outcome is not None
        if bg_outcome[0] == "value":
            assert record.state is JobState.SUCCEEDED
            assert record.result == bg_outcome[1]
        else:
            assert record.state is JobState.DEAD
            assert record.error is not None
            assert record.error.startswith(f"{bg_outcome[1].__name__}: ")
        assert record.attempts == 1


@PROPERTY
@given(steps=chains(), n=st.integers(0, 9))
def test_inline_chain_runs_everything_in_order_and_keeps_exception_types(
    env: Environment, steps: list[Step], n: int
) -> None:
    journal = Journal()
    ctx = ChainContext(n=n, journal=journal)
    pipeline = build(steps, ctx, "inline")
    sync, dispatch_at, background = split(steps)

    def inline_end() -> Simulated:
        journal, outcome = simulate(background, core_end(n))
        if outcome[0] == "value":
            return journal, ("value", JobHandle(job_id=ctx.job_id, status="succeeded"))
        return journal, outcome

    expected_journal, expected_outcome = simulate(
        sync, inline_end if dispatch_at is not None else core_end(n)
    )
    outcome, error = run_outcome(pipeline.run)

    assert journal.snapshot() == expected_journal
    assert outcome == expected_outcome
    if error is not None:
        assert type(error) is expected_outcome[1]
        assert str(error).strip("'").startswith("boom at s")


@PROPERTY
@given(steps=st.lists(execute_steps, max_size=12), n=st.integers(0, 9))
def test_execute_only_chain_returns_core_value_through_every_stage(
    env: Environment, steps: list[Step], n: int
) -> None:
    steps = [Step(action="continue") for _ in steps]
    journal = Journal()
    ctx = ChainContext(n=n, journal=journal)

    result = build(steps, ctx, "inline").run()

    assert result == f"core saw n={n}"
    backs = [item for item in journal.snapshot() if item[0] == "back"]
    assert [b[2] for b in backs] == [result] * len(steps)
    assert [b[1] for b in backs] == [f"s{i}" for i in reversed(range(len(steps)))]


DISPATCHERS = ["inline", "thread", "schedule_job", "fastapi"]


@PROPERTY
@given(
    data=st.data(),
    executes=st.integers(0, 10),
    dispatchers=st.lists(st.sampled_from(DISPATCHERS), min_size=2, max_size=4),
)
def test_second_dispatch_is_always_rejected_at_chain_naming_both(
    env: Environment, data: st.DataObject, executes: int, dispatchers: list[str]
) -> None:
    kinds: list[str | None] = [None] * executes
    for name in dispatchers:
        kinds.insert(data.draw(st.integers(0, len(kinds))), name)
    pipeline = ChainContext(journal=Journal()).create_pipeline(core)
    positions = [i for i, k in enumerate(kinds) if k is not None]
    first, second = positions[0], positions[1]

    for i, kind in enumerate(kinds[:second]):
        if kind is None:
            pipeline.chain(Execute, plugin="rec", tag=f"s{i}")
        else:
            pipeline.chain(Dispatch, plugin=kind)
    with pytest.raises(PipelineDefinitionError) as info:
        pipeline.chain(Dispatch(kinds[second] or ""))

    message = str(info.value)
    assert f"{kinds[first]!r} (stage {first})" in message
    assert f"{kinds[second]!r} (stage {second})" in message
    assert len(pipeline.stages) == second  # the rejected stage was not added
