"""Timers and the direct hand-over: a sleeping task may resume its successor itself
instead of going through the scheduler's loop; the run must be exactly the one the loop
would have made, and timers fire in (due time, order set) order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore_testing.sim import SimEnvironment

# one action of a task: sleep (ties on purpose: 0, 0.5, 1 recur), yield, park on a key
# with an optional timeout, notify a key, or set a callback timer
_action = st.one_of(
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.5, 0.125])),
    st.tuples(st.just("sleep"), st.floats(0.0, 3.0, allow_nan=False)),
    st.tuples(st.just("yield"), st.just(0)),
    st.tuples(st.just("park"), st.sampled_from([0, 1])),
    st.tuples(st.just("park_timeout"), st.sampled_from([0, 1])),
    st.tuples(st.just("notify"), st.sampled_from([0, 1])),
    st.tuples(st.just("later"), st.sampled_from([0.0, 0.5, 1.0])),
)
_plans = st.lists(st.lists(_action, max_size=8), min_size=1, max_size=5)


def _fired(sim: SimEnvironment, i: int, k: int) -> Callable[[], None]:
    return lambda: sim.scheduler.emit("fired", n=i, k=k)


def _play(sim: SimEnvironment, plans: list[list[tuple[str, Any]]]) -> None:
    sched = sim.scheduler

    def task(i: int, plan: list[tuple[str, Any]]) -> None:
        for k, (op, arg) in enumerate(plan):
            sched.emit("act", n=i, k=k, op=op)
            if op == "sleep":
                sim.clock.sleep(arg)
            elif op == "yield":
                sched.yield_()
            elif op == "park":
                sched.park(("key", arg), timeout=4.0)  # bounded: no deadlock
            elif op == "park_timeout":
                sched.emit("parked", ok=sched.park(("key", arg), timeout=0.5))
            elif op == "notify":
                sched.emit("notified", count=sched.notify(("key", arg)))
            else:
                sched.call_later(arg, _fired(sim, i, k))

    for i, plan in enumerate(plans):
        sim.spawn(task, i, plan)


def _trace(plans: list[list[tuple[str, Any]]], seed: int, how: str) -> str:
    sim = SimEnvironment(seed=seed, patch_time=False)
    _play(sim, plans)
    if how == "run":
        sim.run_until_idle()
    elif how == "steps":  # a step budget: every resumption goes through the loop
        while sim.step():
            pass
    else:  # deadlines: a hand-over never passes one
        while sim.scheduler.tasks or sim.scheduler.timers:
            sim.run_for(0.75)
    sim.close()
    return sim.trace.to_jsonl()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=_plans, seed=st.integers(0, 3))
def test_a_run_with_direct_hand_overs_is_the_run_the_loop_makes(
    plans: list[list[tuple[str, Any]]], seed: int
) -> None:
    through_loop = _trace(plans, seed, "steps")
    assert _trace(plans, seed, "run") == through_loop
    assert _trace(plans, seed, "deadlines") == through_loop


def test_the_same_seed_gives_a_byte_identical_trace_for_a_timer_heavy_run() -> None:
    plans = [[("sleep", (i * 7 + j) % 5 * 0.5) for j in range(30)] for i in range(20)]
    first = _trace(plans, 5, "run")
    assert _trace(plans, 5, "run") == first
    assert first.count('"ev":"choice"') > 0  # tasks waking together do race


def test_timers_due_at_one_instant_fire_in_the_order_they_were_set() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    sched = sim.scheduler
    fired: list[str] = []

    def note(name: str) -> None:
        fired.append(name)

    def first() -> None:
        note("a")
        sched.call_later(0.0, lambda: note("now, set by a"))  # joins this instant, last

    def second() -> None:
        note("b")
        sched.call_later(-1.0, lambda: note("overdue, set by b"))  # before what is left

    sched.call_later(1.0, first)
    sched.call_later(1.0, second)
    sched.call_later(1.0, lambda: note("c"))
    sched.call_later(0.5, lambda: note("earlier"))
    sim.run_until_idle()
    assert fired == ["earlier", "a", "b", "overdue, set by b", "c", "now, set by a"]
    assert sim.now == 1.0


def test_a_failing_timer_callback_fires_once_and_the_rest_of_its_instant_still_fires() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    fired: list[str] = []

    def boom() -> None:
        fired.append("boom")
        raise RuntimeError("callback failed")

    sim.scheduler.call_later(1.0, boom)
    sim.scheduler.call_later(1.0, lambda: fired.append("after"))
    with pytest.raises(RuntimeError, match="callback failed"):
        sim.run_until_idle()
    sim.run_until_idle()
    assert fired == ["boom", "after"]


def test_a_sleep_with_negative_seconds_is_refused_inside_and_outside_a_task() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    with pytest.raises(ValueError, match=r"sleep\(\) needs seconds >= 0, got -1"):
        sim.clock.sleep(-1)
    sim.spawn(sim.clock.sleep, -0.5)
    with pytest.raises(ValueError, match=r"sleep\(\) needs seconds >= 0, got -0.5"):
        sim.run_until_idle()


def test_a_step_budget_counts_every_resumption_of_sleeping_tasks() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    woke: list[tuple[str, float]] = []

    def sleeper(name: str, seconds: float) -> None:
        for _ in range(3):
            sim.clock.sleep(seconds)
            woke.append((name, sim.now))

    sim.spawn(sleeper, "a", 1.0)
    sim.spawn(sleeper, "b", 1.25)
    steps = 0
    while sim.step():
        steps += 1
    assert steps == 8  # 2 starts + 6 wake-ups, one resumption each
    assert woke == [("a", 1.0), ("b", 1.25), ("a", 2.0), ("b", 2.5), ("a", 3.0), ("b", 3.75)]
