"""Virtual time and the scheduler: one task at a time, time jumps to timers, never back."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from dcore_testing.sim import Deadlock, FaultPlan, SimEnvironment, SimulationError, Skew
from dcore_testing.sim.clock import EPOCH, VirtualClock


def _sleep_then_note(sim: SimEnvironment, seconds: float, woke: list[float]) -> None:
    sim.clock.sleep(seconds)
    woke.append(sim.now)


def test_clock_refuses_to_go_backwards_and_names_both_times() -> None:
    clock = VirtualClock(start=10.0)
    with pytest.raises(ValueError, match=r"cannot go backwards: it is 10.0, asked for 5.0"):
        clock.advance_to(5.0)


def test_clock_reports_wall_time_from_a_fixed_epoch() -> None:
    clock = VirtualClock()
    clock.advance_to(60.0)
    assert clock.time() == EPOCH + 60.0
    assert clock.now().timestamp() == EPOCH + 60.0
    assert clock.monotonic() == 60.0


def test_an_hour_of_sleeping_tasks_runs_instantly_in_timer_order() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    woke: list[tuple[str, float]] = []

    def sleeper(name: str, seconds: float) -> None:
        sim.clock.sleep(seconds)
        woke.append((name, sim.now))

    sim.spawn(sleeper, "late", 3600.0)
    sim.spawn(sleeper, "early", 1.5)
    sim.run_until_idle()
    assert woke == [("early", 1.5), ("late", 3600.0)]


def test_run_for_stops_at_the_deadline_and_leaves_later_timers_pending() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    woke: list[float] = []
    sim.spawn(_sleep_then_note, sim, 10, woke)
    sim.run_for(5)
    assert woke == []
    assert sim.now == 5.0
    sim.run_for(5)
    assert woke == [10.0]


def test_sleep_outside_any_task_runs_the_simulation_for_that_long() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    woke: list[float] = []
    sim.spawn(_sleep_then_note, sim, 2, woke)
    sim.clock.sleep(3)
    assert woke == [2.0]
    assert sim.now == 3.0


def test_step_resumes_one_task_at_a_time() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    log: list[str] = []

    def two_steps() -> None:
        log.append("a1")
        sim.clock.sleep(1)
        log.append("a2")

    sim.spawn(two_steps)
    assert sim.step() is True
    assert log == ["a1"]
    assert sim.step() is True
    assert log == ["a1", "a2"]
    assert sim.step() is False


def test_tasks_waking_at_the_same_instant_are_ordered_by_the_chooser() -> None:
    orders = set()
    for seed in range(30):
        sim = SimEnvironment(seed=seed, patch_time=False)
        log: list[str] = []

        def wake(name: str, sim: SimEnvironment = sim, log: list[str] = log) -> None:
            sim.clock.sleep(1)
            log.append(name)

        for name in "abc":
            sim.spawn(wake, name)
        sim.run_until_idle()
        orders.add("".join(log))
    assert len(orders) > 1  # the race is explored, not fixed by timer order


def test_a_client_task_error_comes_out_of_the_run_call() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)

    def boom() -> None:
        raise RuntimeError("client failed")

    sim.spawn(boom)
    with pytest.raises(RuntimeError, match="client failed"):
        sim.run_until_idle()


def test_running_the_simulation_from_inside_a_task_is_refused() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    sim.spawn(sim.run_until_idle)
    with pytest.raises(SimulationError, match="cannot be run from inside a simulated task"):
        sim.run_until_idle()


def test_a_lock_that_is_never_released_is_reported_as_a_deadlock() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)

    def holder() -> None:
        sim.locks.lock("k", ttl=None).acquire()

    def waiter() -> None:
        sim.clock.sleep(1)
        sim.locks.lock("k", ttl=None).acquire()

    sim.spawn(holder, name="holder")
    sim.spawn(waiter, name="waiter")
    with pytest.raises(Deadlock, match=r"waiter on \('lock', 'k'\)"):
        sim.run_until_idle()


def test_a_waiter_gets_the_lock_when_the_holders_ttl_runs_out() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    got: list[float] = []

    def holder() -> None:
        sim.locks.lock("k", ttl=30).acquire()  # never released: the TTL frees it

    def waiter() -> None:
        sim.clock.sleep(1)
        if sim.locks.lock("k", ttl=30).acquire(timeout=100):
            got.append(sim.now)

    sim.spawn(holder)
    sim.spawn(waiter)
    sim.run_until_idle()
    assert got == [30.0]


def test_a_blocking_lock_times_out_in_virtual_time() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    result: list[tuple[bool, float]] = []

    def holder() -> None:
        sim.locks.lock("k", ttl=None).acquire()

    def waiter() -> None:
        sim.clock.sleep(1)
        result.append((sim.locks.lock("k").acquire(timeout=5), sim.now))

    sim.spawn(holder)
    sim.spawn(waiter)
    sim.run_until_idle()
    assert result == [(False, 6.0)]


def test_user_code_reads_virtual_time_and_its_sleep_yields() -> None:
    sim = SimEnvironment(seed=1)
    seen: list[tuple[float, int]] = []

    def task() -> None:
        time.sleep(90)  # yields to the scheduler: no real wait
        seen.append((time.time(), datetime.now().year))

    started = time.monotonic()
    sim.spawn(task)
    sim.run_until_idle()
    assert time.monotonic() - started < 30  # (not a timing assertion: 90 s would hang)
    assert seen == [(EPOCH + 90.0, datetime.fromtimestamp(EPOCH).year)]


def test_a_skewed_worker_sees_a_different_wall_clock() -> None:
    sim = SimEnvironment(
        seed=1, workers=2, faults=FaultPlan(Skew(worker=2, seconds=120)), patch_time=False
    )
    seen: dict[str | None, float] = {}
    task1 = sim.scheduler.spawn(
        lambda: seen.__setitem__("w1", sim.clock.time()), name="a", worker=1
    )
    task2 = sim.scheduler.spawn(
        lambda: seen.__setitem__("w2", sim.clock.time()), name="b", worker=2
    )
    sim.run_until_idle()
    assert task1.done
    assert task2.done
    assert seen == {"w1": EPOCH, "w2": EPOCH + 120}
    assert sim.clock.monotonic() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": "x"}, "seed=...) must be an int, got 'x'"),
        (
            {"workers": 0},
            "workers=...) must be an int >= 1 or a mapping of queue to workers, got 0",
        ),
        ({"faults": ["crash"]}, "takes a FaultPlan, got list"),
        ({"delivery": "sometimes"}, "delivery=...) must be 'auto'"),
    ],
)
def test_bad_simulation_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        SimEnvironment(**kwargs)  # type: ignore[arg-type]
