"""Replay is exact: a saved trace replays event for event, a changed pipeline diverges
at the first differing event, and the same seed gives a byte-identical trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcore import Dispatch, Execute
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import (
    Crash,
    FaultPlan,
    RandomChooser,
    ReplayDivergence,
    SimEnvironment,
    Trace,
)
from dcore_testing.sim.explore import explore, replay, run_scenario
from examples.sim import payments, race


def _changed_pipeline(sim: SimEnvironment) -> None:
    """The payment scenario with a logging stage added before the charge."""
    ctx = payments.PaymentContext(order_id="order-0", amount_cents=100)
    pipeline = ctx.create_pipeline(core_fn=payments.done)
    pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="logging")
    pipeline.chain(Execute, plugin="charge_card").chain(Execute, plugin="send_receipt")
    pipeline.run()
    sim.run_until_idle()


def test_a_saved_trace_replays_to_an_identical_event_sequence(tmp_path: Path) -> None:
    outcome = next(
        o for o in (run_scenario(race.unlocked_uploads, seed=s) for s in range(200)) if o.failed
    )  # a seed that loses an update
    path = outcome.trace.save(tmp_path / "race.jsonl")
    replayed = replay(race.unlocked_uploads, path)
    assert replayed.trace.events == Trace.load(path).events
    assert isinstance(replayed.error, InvariantViolation)  # the failure reproduces


def test_a_changed_pipeline_makes_replay_fail_at_the_first_differing_event(tmp_path: Path) -> None:
    path = run_scenario(payments.crash_after_charge, seed=3).trace.save(tmp_path / "p.jsonl")
    recorded = Trace.load(path)
    with pytest.raises(ReplayDivergence) as caught:
        replay(_changed_pipeline, path)
    divergence = caught.value
    # the changed pipeline ships another message: the first delivery already differs
    first_delivery = next(i for i, e in enumerate(recorded.events) if e["ev"] == "deliver")
    assert divergence.index == first_delivery
    assert divergence.expected["ev"] == divergence.actual["ev"] == "deliver"
    assert divergence.expected["msg"] != divergence.actual["msg"]
    assert divergence.expected["schema"] == divergence.actual["schema"]  # same context
    assert f"replay diverged at event {first_delivery}" in str(divergence)


def test_a_replay_that_stops_early_is_a_divergence(tmp_path: Path) -> None:
    path = run_scenario(payments.crash_after_charge, seed=3).trace.save(tmp_path / "p.jsonl")
    with pytest.raises(ReplayDivergence, match="ended before the recorded trace did"):
        replay(lambda sim: None, path)


def test_the_same_seed_twice_gives_byte_identical_traces() -> None:
    a = run_scenario(payments.crash_after_charge, seed=11).trace.to_jsonl()
    b = run_scenario(payments.crash_after_charge, seed=11).trace.to_jsonl()
    assert a == b
    c = run_scenario(race.unlocked_uploads, seed=11).trace.to_jsonl()
    d = run_scenario(race.unlocked_uploads, seed=11).trace.to_jsonl()
    assert c == d
    assert run_scenario(race.unlocked_uploads, seed=12).trace.to_jsonl() != c


def test_check_determinism_passes_a_pure_scenario_and_names_a_nondeterministic_one() -> None:
    sim = SimEnvironment(seed=4, faults=FaultPlan(Crash(stage="send_receipt")))
    trace = sim.check_determinism(payments.crash_after_charge)
    assert trace.of("crash")

    runs: list[int] = []

    def reads_global_state(sim: SimEnvironment) -> None:
        runs.append(1)
        race.upload(sim, len(runs))  # a different workload on the second run

    with pytest.raises(ReplayDivergence, match="same seed ran twice and took different paths"):
        SimEnvironment(seed=4).check_determinism(reads_global_state)


def test_check_determinism_refuses_a_simulation_without_a_seeded_chooser() -> None:
    sim = SimEnvironment(seed=1, chooser=RandomChooser(3))
    with pytest.raises(Exception, match="made with a custom chooser"):
        sim.check_determinism(race.unlocked_uploads)


def test_explore_saves_one_trace_per_failing_seed(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    failures = explore(
        race.unlocked_uploads,
        range(40),
        trace_dir=tmp_path,
        progress=lambda done, failed: seen.append((done, failed)),
    )
    assert failures
    assert len(seen) == 40
    for outcome in failures:
        assert outcome.path is not None
        assert outcome.path.exists()
        assert Trace.load(outcome.path).header["error"].startswith("InvariantViolation")
    assert len(list(tmp_path.iterdir())) == len(failures)


def test_loading_a_file_that_is_not_a_trace_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="does not start with a dcore trace header"):
        Trace.load(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not JSON"):
        Trace.load(bad)
    with pytest.raises(FileNotFoundError, match="no trace file at"):
        Trace.load(tmp_path / "missing.jsonl")
