"""The order example in the simulator: undone in reverse order once each, resumed after
a crash while undoing, dead-lettered with both errors when an undo fails for good, a
step undone whose completion the job store failed to record; ``all_or_nothing`` holds
under 1,000 fault plans and under 500 plans of job-store faults, and Hypothesis finds
and shrinks the planted non-idempotent compensation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from dcore_testing.invariants import all_or_nothing
from dcore_testing.sim import (
    Crash,
    FaultPlan,
    ServiceError,
    SimEnvironment,
    replay,
    run_scenario,
)
from dcore_testing.strategies import fault_plans
from examples.orders.pipeline import COMPENSATIONS, EFFECTS, Order, order_pipeline
from examples.orders.scenarios import orders, unkeyed_refunds

# --8<-- [start:plans]
STAGES = ("reserve_stock", "charge_order", "store_receipt", "notify_customer")
OPS = ("events.append", "jobs.compensate", "jobs.mark_compensated", "jobs.end_attempt", "jobs.bury")
#: crashes at stages and calls, duplicate and late deliveries, against both orders
PLANS = fault_plans(
    kinds=("crash", "crash_op", "duplicate", "delay"), stages=STAGES, ops=OPS, jobs=2, max_faults=3
)
# --8<-- [end:plans]
#: the job store failing at any of its calls: the worker dying around it, the store
#: unreachable, or the call applied and its reply lost
STORE_OPS = (
    "jobs.claim",
    "jobs.mark_completed",
    "jobs.end_attempt",
    "jobs.compensate",
    "jobs.mark_compensated",
    "jobs.bury",
)
STORE_FAULTS = fault_plans(
    kinds=("crash_op", "service_error", "ambiguous", "duplicate"),
    ops=STORE_OPS,
    jobs=2,
    max_faults=3,
)


def rejected(sim: SimEnvironment) -> None:
    order_pipeline(Order(order_id="o-1", amount_cents=500, reject_at="notify")).run()
    sim.run_until_idle()


def undone(outcome_effects: list[str]) -> list[str]:
    return [name for name in outcome_effects if name in ("delete_receipt", "refund", "release")]


def effects(sim_trace: list[dict[str, object]]) -> list[str]:
    return [str(e["name"]) for e in sim_trace if e["ev"] == "effect"]


def test_a_rejected_order_is_undone_in_reverse_order_once_each() -> None:
    outcome = run_scenario(rejected, 0)
    assert not outcome.failed, outcome.error
    assert undone(effects(outcome.trace.events)) == ["delete_receipt", "refund", "release"]
    assert [e["stage"] for e in outcome.trace.of("stage.compensated")] == [
        "store_receipt#3",
        "charge_order#2",
        "reserve_stock#1",
    ]
    [letter] = [e for e in outcome.trace.events if e["ev"] == "dlq"]
    assert "rejected order o-1" in str(letter["error"])


def test_a_crash_while_undoing_resumes_without_undoing_twice() -> None:
    # the worker dies after refunding, before recording the refund
    plan = FaultPlan(Crash(op="jobs.mark_compensated", nth=2, when="before"))
    outcome = run_scenario(rejected, 0, faults=plan)
    assert not outcome.failed, outcome.error
    assert outcome.trace.of("crash"), "the planted crash did not strike"
    # the resumed compensation asks for the refund again, under its idempotency key
    assert undone(effects(outcome.trace.events)) == [
        "delete_receipt",
        "refund",
        "refund",
        "release",
    ]
    assert [e["stage"] for e in outcome.trace.of("stage.compensated")] == [
        "store_receipt#3",
        "charge_order#2",
        "reserve_stock#1",
    ]


def test_an_order_whose_worker_keeps_dying_is_undone_before_it_is_buried() -> None:
    # the accepted order's worker dies at the receipt every time, until the job is
    # declared dead: the reservation and the charge its lost deliveries made are undone
    plan = FaultPlan(*[Crash(job=2, stage="store_receipt", when="enter")] * 5)
    outcome = run_scenario(orders, 0, faults=plan)
    assert not outcome.failed, outcome.error
    of_j2 = [e for e in outcome.trace.events if e.get("job") == "j2"]
    assert [str(e["stage"]) for e in of_j2 if e["ev"] == "stage.compensated"] == [
        "charge_order#2",
        "reserve_stock#1",
    ]
    assert [e["ev"] for e in of_j2][-3:] == ["dlq", "job.dead", "dead"]


def test_an_undo_failing_for_good_dead_letters_with_both_errors() -> None:
    # the ledger refuses the receipt's deletion on all three of its tries
    plan = FaultPlan(*[ServiceError(op="events.append", job=1, nth=7)] * 3)
    letters: list[dict[str, object]] = []

    def scenario(sim: SimEnvironment) -> None:
        rejected(sim)
        letters.extend(sim.dlq_entries())

    outcome = run_scenario(scenario, 0, faults=plan)
    assert not outcome.failed, outcome.error
    [letter] = letters
    assert letter["compensated"] is False
    assert "rejected order o-1; and compensation of stage store_receipt#3 failed" in str(
        letter["error"]
    )
    assert "refund" not in effects(outcome.trace.events)  # the rest left alone


def rejected_at_its_only_try(sim: SimEnvironment) -> None:
    order_pipeline(Order(order_id="o-1", amount_cents=500, reject_at="notify"), attempts=1).run()
    sim.run_until_idle()
    all_or_nothing(sim, effects=EFFECTS, compensations=COMPENSATIONS)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_step_whose_completion_the_job_store_failed_to_record_is_undone(nth: int) -> None:
    # the job store is unreachable as the nth step's completion is recorded, on the
    # job's only attempt: the error ends the job there, and the step, which did its
    # work, is undone with the ones before it
    plan = FaultPlan(ServiceError(op="jobs.mark_completed", nth=nth))
    outcome = run_scenario(rejected_at_its_only_try, 0, faults=plan)
    assert not outcome.failed, outcome.error
    assert (
        undone(effects(outcome.trace.events)) == ["delete_receipt", "refund", "release"][3 - nth :]
    )


# --8<-- [start:property]
@settings(
    max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(plan=PLANS, seed=st.integers(0, 2**16))
def test_every_order_is_all_or_nothing_under_1000_fault_plans(plan: FaultPlan, seed: int) -> None:
    outcome = run_scenario(orders, seed, faults=plan)
    assert not outcome.failed, f"{plan!r}: {outcome.error}"


# --8<-- [end:property]


@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(plan=STORE_FAULTS, seed=st.integers(0, 2**16))
def test_every_order_is_all_or_nothing_whatever_the_job_store_does(
    plan: FaultPlan, seed: int
) -> None:
    outcome = run_scenario(orders, seed, faults=plan)
    assert not outcome.failed, f"{plan!r}: {outcome.error}"


def test_a_compensation_without_an_idempotency_key_is_found_shrunk_and_replayed(
    tmp_path: Path,
) -> None:
    plan = find(
        PLANS,
        lambda plan: run_scenario(unkeyed_refunds, 0, faults=plan).failed,
        settings=settings(
            max_examples=1000, database=None, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
    # the smallest plan: the worker dies after an undo, before recording it
    assert plan == FaultPlan(Crash(op="jobs.mark_compensated", when="before"))
    outcome = run_scenario(unkeyed_refunds, 0, faults=plan)
    assert (
        "all-or-nothing broken: j1 is DEAD but 'receipt' happened 1 times and "
        "'delete_receipt' 2" in str(outcome.error)
    )
    again = replay(unkeyed_refunds, outcome.trace.save(tmp_path / "run.jsonl"))
    assert str(again.error) == str(outcome.error)
    assert again.trace.events == outcome.trace.events
    # the example as shipped passes the same plan
    assert not run_scenario(orders, 0, faults=plan).failed
