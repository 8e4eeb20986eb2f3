"""Every fault kind finds its planted bug: by seeds, by Hypothesis (shrunk to the
smallest fault plan that still fails), replayed exactly from its trace, and the fixed
twin passes 1,000 seeds. The simulator guide (docs/how-to/simulator.md) shows each one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, find, settings

from dcore_testing.sim import (
    Crash,
    FaultPlan,
    Partition,
    Scope,
    ServiceError,
    SimEnvironment,
    WebCrash,
    explore,
    replay,
    run_scenario,
)
from dcore_testing.strategies import fault_plans
from examples.sim import accounts, ledger, reports, reservations, signup

Scenario = Callable[[SimEnvironment], Any]


# --8<-- [start:helpers]
def fails(scenario: Scenario, plan: FaultPlan, seed: int = 0) -> bool:
    return run_scenario(scenario, seed, faults=plan).failed


def shrunk(scenario: Scenario, **strategy: Any) -> FaultPlan:
    """The smallest plan Hypothesis finds that makes ``scenario`` fail."""
    return find(
        fault_plans(**strategy),
        lambda plan: fails(scenario, plan),
        settings=settings(
            max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


def replays_exactly(scenario: Scenario, plan: FaultPlan, tmp_path: Path) -> None:
    outcome = run_scenario(scenario, 3, faults=plan)
    assert outcome.failed
    again = replay(scenario, outcome.trace.save(tmp_path / "run.jsonl"))
    assert type(again.error) is type(outcome.error)
    assert str(again.error) == str(outcome.error)
    assert again.trace.events == outcome.trace.events


def passes_1000_seeds(scenario: Scenario, **options: Any) -> None:
    failures = explore(scenario, range(1000), **options)
    assert failures == [], f"seed {failures[0].seed}: {failures[0].error}"


# --8<-- [end:helpers]


# -- a crash right after a call ------------------------------------------------------------
# --8<-- [start:crash_op]
def test_a_crash_after_the_write_is_found_shrunk_replayed_and_fixed(tmp_path: Path) -> None:
    drawn = FaultPlan(crash_op=0.2)
    assert explore(ledger.buggy, range(200), faults=drawn), "no seed found the bug"
    plan = shrunk(ledger.buggy, kinds=("crash_op",), ops=("storage.put", "storage.get"))
    assert plan == FaultPlan(Crash(op="storage.put", when="after"))
    replays_exactly(ledger.buggy, plan, tmp_path)
    passes_1000_seeds(ledger.fixed, faults=drawn)


# --8<-- [end:crash_op]


# -- an ambiguous failure -------------------------------------------------------------------
# --8<-- [start:ambiguous]
def test_an_ambiguous_failure_is_found_shrunk_replayed_and_fixed(tmp_path: Path) -> None:
    drawn = FaultPlan(ambiguous=0.3, scope=Scope(services=("events",)))
    assert explore(reservations.buggy, range(200), faults=drawn)
    plan = shrunk(reservations.buggy, kinds=("ambiguous", "service_error"), ops=("events.append",))
    assert plan == FaultPlan(ServiceError(op="events.append", applied=True))
    replays_exactly(reservations.buggy, plan, tmp_path)
    passes_1000_seeds(reservations.fixed, faults=drawn)


# --8<-- [end:ambiguous]


# -- the web process dying --------------------------------------------------------------------
# --8<-- [start:web_crash]
@pytest.mark.parametrize("when", ["after_response", "after_record"])
def test_a_web_crash_is_found_shrunk_replayed_and_fixed(when: str, tmp_path: Path) -> None:
    crash = FaultPlan(WebCrash(when=when))  # type: ignore[arg-type]
    assert explore(signup.buggy, range(20), faults=crash)
    plan = shrunk(signup.buggy, kinds=("web_crash",))
    assert plan == FaultPlan(WebCrash(when="after_response"))
    replays_exactly(signup.buggy, crash, tmp_path)
    passes_1000_seeds(signup.fixed, faults=crash)


# --8<-- [end:web_crash]


# -- a partition ------------------------------------------------------------------------------
# --8<-- [start:partition]
def test_a_partition_longer_than_the_lease_is_found_shrunk_replayed_and_fixed(
    tmp_path: Path,
) -> None:
    cut = FaultPlan(Partition(service="jobs", workers=(1,), start=1.0, seconds=40.0))
    assert explore(reports.buggy, range(20), faults=cut)
    plan = shrunk(reports.buggy, kinds=("partition",), workers=2)
    assert [f.kind for f in plan.faults] == ["partition"]
    assert plan.faults[0].seconds > 15.0  # longer than the lease: that is the bug
    replays_exactly(reports.buggy, cut, tmp_path)
    passes_1000_seeds(reports.fixed, faults=cut)


# --8<-- [end:partition]


# -- scoping and routing: per-key order -------------------------------------------------------
# --8<-- [start:routing]
def test_updates_spread_over_queues_break_per_key_order_and_sharding_by_key_keeps_it(
    tmp_path: Path,
) -> None:
    failures = explore(accounts.buggy, range(200))
    assert failures, "no interleaving broke the order"
    outcome = failures[0]
    again = replay(accounts.buggy, outcome.trace.save(tmp_path / "run.jsonl"))
    assert str(again.error) == str(outcome.error)
    passes_1000_seeds(accounts.fixed)
    # a crash scoped to worker 2 only ever hits the second queue's worker
    plan = FaultPlan(Crash(stage="apply_update", worker=2))
    run = run_scenario(accounts.fixed, 1, faults=plan)
    assert [e["lane"] for e in run.trace.of("crash")] in ([], ["w2"])


# --8<-- [end:routing]
