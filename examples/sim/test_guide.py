"""The worked examples of the simulator guide (docs/how-to/simulator.md), run by the
suite so they stay true."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcore import Dispatch, Execute
from dcore_testing import invariants
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import Crash, FaultPlan, HypothesisChooser, SimEnvironment
from examples.sim import payments, race


# 1. A first simulated test ----------------------------------------------------------------
# --8<-- [start:first]
def test_two_uploads_with_a_lock_keep_both_files(dcore_sim: SimEnvironment) -> None:
    for name in ("a.txt", "b.txt"):
        ctx = race.UploadContext(file_path=name, file_content=b"hello")
        race.upload_pipeline(ctx, locked=True).run()  # returns a JobHandle at once
    dcore_sim.run_until_idle()  # workers run, in virtual time
    assert sorted(json.loads(dcore_sim.storage.get("index.json"))) == ["a.txt", "b.txt"]
    invariants.check_all(dcore_sim)


# --8<-- [end:first]


# 2. Faults: a crash redelivers, a non-idempotent stage charges twice -----------------------
# --8<-- [start:crash]
@pytest.mark.sim(faults=FaultPlan(Crash(stage="send_receipt", job=1)))
def test_a_crash_after_the_charge_charges_twice(dcore_sim: SimEnvironment) -> None:
    payments.pay(dcore_sim, orders=1)
    invariants.no_job_lost(dcore_sim)  # at-least-once: nothing lost ...
    with pytest.raises(InvariantViolation, match="performed 'charge' 2 times"):
        invariants.exactly_once(dcore_sim, "charge")  # ... but the effect doubled


# --8<-- [end:crash]


# 3. Time: an hour of backoff in milliseconds --------------------------------------------
# --8<-- [start:time]
@pytest.mark.sim(job_attempts=4, job_initial_delay=600.0, job_backoff=2.0, job_max_delay=3600.0)
def test_retries_back_off_on_the_virtual_clock(dcore_sim: SimEnvironment) -> None:
    ctx = payments.PaymentContext(order_id="o-1", amount_cents=100)
    pipeline = ctx.create_pipeline(core_fn=payments.done)
    pipeline.chain(Dispatch, plugin="schedule_job")
    pipeline.chain(Execute, plugin="charge_card", gateway_outages=2)
    pipeline.run()
    dcore_sim.run_until_idle()  # 30 virtual minutes, no real wait
    assert [(e["t"], e["attempt"]) for e in dcore_sim.trace.of("deliver")] == [
        (0.0, 1),
        (600.0, 2),
        (1800.0, 3),
    ]
    assert str(dcore_sim.jobs.get(ctx.job_id).state) == "SUCCEEDED"


# --8<-- [end:time]


# 4. Shrinking a race ---------------------------------------------------------------------
# --8<-- [start:shrink]
@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def _uploads_never_lose_a_file(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 4), label="uploads")
    with SimEnvironment(chooser=HypothesisChooser(data)) as sim:
        index = race.upload(sim, count, locked=False)
        race.check_index(sim, [f"file{i}.txt" for i in range(count)], index)


def test_hypothesis_finds_and_shrinks_the_lost_update() -> None:
    with pytest.raises(InvariantViolation, match="lost update"):
        _uploads_never_lose_a_file()


# --8<-- [end:shrink]
