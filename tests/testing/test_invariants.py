"""Each invariant holds on a good run and raises InvariantViolation, naming the culprit
and carrying the events that show it, on a bad one."""

from __future__ import annotations

from typing import Any

import pytest

from dcore_testing import invariants
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import SimEnvironment, Trace


def _trace(*events: dict[str, Any]) -> Trace:
    trace = Trace({"seed": 0})
    for i, e in enumerate(events):
        trace.events.append({"t": float(i), "lane": "main", **e})
    return trace


def test_invariant_violation_is_an_assertion_error_listing_its_events() -> None:
    exc = InvariantViolation("broken", [{"ev": "x", "job": "j1"}])
    assert isinstance(exc, AssertionError)
    assert exc.events == [{"ev": "x", "job": "j1"}]
    assert str(exc).startswith("broken\nevents:\n")
    assert '"job": "j1"' in str(exc)


def test_exactly_once_flags_a_double_effect_and_a_missing_one() -> None:
    good = _trace(
        {"ev": "dispatch", "job": "j1"},
        {"ev": "effect", "job": "j1", "name": "mail"},
        {"ev": "job.succeeded", "job": "j1"},
    )
    invariants.exactly_once(good, "mail")
    invariants.at_least_once(good, "mail")
    double = _trace(
        {"ev": "dispatch", "job": "j1"},
        {"ev": "effect", "job": "j1", "name": "mail"},
        {"ev": "crash", "job": "j1", "lane": "w1", "where": "x"},
        {"ev": "effect", "job": "j1", "name": "mail"},
        {"ev": "job.succeeded", "job": "j1"},
    )
    with pytest.raises(InvariantViolation, match="j1 performed 'mail' 2 times") as caught:
        invariants.exactly_once(double, "mail")
    assert [e["ev"] for e in caught.value.events] == ["effect", "crash", "effect"]
    missing = _trace({"ev": "dispatch", "job": "j1"}, {"ev": "job.succeeded", "job": "j1"})
    with pytest.raises(InvariantViolation, match="j1 succeeded without performing 'mail'"):
        invariants.exactly_once(missing, "mail")
    with pytest.raises(InvariantViolation, match="at-least-once broken: j1"):
        invariants.at_least_once(missing, "mail")


def test_stage_order_flags_a_skipped_stage_and_a_wrong_name() -> None:
    def enter(i: int, name: str) -> dict[str, Any]:
        return {"ev": "stage.enter", "job": "j1", "lane": "w1", "stage": name, "index": i}

    invariants.stage_order(_trace(enter(1, "a"), enter(2, "b")), ["d", "a", "b"])
    with pytest.raises(InvariantViolation, match=r"entered stage 3 \('c'\) from stage 1"):
        invariants.stage_order(_trace(enter(1, "a"), enter(3, "c")))
    with pytest.raises(InvariantViolation, match="entered 'x' as stage 1, expected 'a'"):
        invariants.stage_order(_trace(enter(1, "x")), ["d", "a"])
    # a new delivery starts over
    invariants.stage_order(
        _trace(enter(1, "a"), {"ev": "deliver", "job": "j1", "lane": "w1"}, enter(1, "a"))
    )


def test_stage_order_lets_a_running_stage_run_its_successor_again() -> None:
    def enter(i: int, name: str) -> dict[str, Any]:
        return {"ev": "stage.enter", "job": "j1", "lane": "w1", "stage": name, "index": i}

    def leave(i: int, name: str) -> dict[str, Any]:
        return {"ev": "stage.exit", "job": "j1", "lane": "w1", "stage": name, "index": i}

    # the retry stage (1) runs stages 2 and 3 twice: in order, it is still running
    invariants.stage_order(
        _trace(
            enter(1, "retry"),
            enter(2, "b"),
            enter(3, "c"),
            leave(3, "c"),
            leave(2, "b"),
            enter(2, "b"),
            enter(3, "c"),
            leave(3, "c"),
            leave(2, "b"),
            leave(1, "retry"),
        )
    )
    # ... but a stage entered again by one that already returned is out of order
    with pytest.raises(InvariantViolation, match=r"entered stage 3 \('c'\) from stage 1"):
        invariants.stage_order(
            _trace(enter(1, "retry"), enter(2, "b"), leave(2, "b"), enter(3, "c"))
        )


def test_sync_before_return_flags_background_work_before_the_dispatch() -> None:
    early = _trace(
        {"ev": "stage.enter", "job": "j1", "lane": "w1", "stage": "b", "index": 1},
        {"ev": "dispatch", "job": "j1"},
    )
    with pytest.raises(InvariantViolation, match="background stage 'b' of j1 started before"):
        invariants.sync_before_return(early)
    late = _trace(
        {"ev": "dispatch", "job": "j1"},
        {"ev": "stage.enter", "job": "j1", "lane": "main", "stage": "a", "index": 0},
    )
    with pytest.raises(InvariantViolation, match="entered 'a' in the caller after the Dispatch"):
        invariants.sync_before_return(late)


def test_lock_mutual_exclusion_flags_two_live_holders_but_not_a_crashed_one() -> None:
    def acquired(lane: str) -> dict[str, Any]:
        return {"ev": "lock.acquired", "lane": lane, "name": "k", "fence": 1}

    with pytest.raises(InvariantViolation, match="w2 acquired lock 'k' while w1 still held it"):
        invariants.lock_mutual_exclusion(_trace(acquired("w1"), acquired("w2")))
    invariants.lock_mutual_exclusion(
        _trace(acquired("w1"), {"ev": "crash", "lane": "w1", "where": "x"}, acquired("w2"))
    )
    invariants.lock_mutual_exclusion(
        _trace(acquired("w1"), {"ev": "lock.release", "lane": "w1", "name": "k"}, acquired("w2"))
    )


def test_retry_bounds_use_the_policy_the_dispatch_recorded() -> None:
    trace = _trace(
        {"ev": "dispatch", "job": "j1", "attempts": 2},
        {"ev": "deliver", "job": "j1", "attempt": 1},
        {"ev": "deliver", "job": "j1", "attempt": 2},
        {"ev": "deliver", "job": "j1", "attempt": 3},
    )
    with pytest.raises(InvariantViolation, match="j1 reached attempt 3 but at most 2"):
        invariants.retry_bounds(trace)


def test_state_invariants_need_the_simulation_and_say_so() -> None:
    with pytest.raises(TypeError, match=r"no_job_lost\(\) needs the SimEnvironment"):
        invariants.no_job_lost(_trace())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a SimEnvironment or a Trace, got int"):
        invariants.stage_order(3)  # type: ignore[arg-type]


def test_check_all_passes_an_empty_run() -> None:
    with SimEnvironment(seed=0) as sim:
        sim.run_until_idle()
        invariants.check_all(sim)
