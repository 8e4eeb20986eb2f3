"""At-least-once made visible: crashes redeliver, retries back off on virtual time,
at-most-once loses work, and the invariants say so."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    PipelineContext,
    RetryPolicy,
    core_function,
    register_plugin,
)
from dcore._plugins.registry import default_registry
from dcore.errors import ContextSerializationError
from dcore_testing import invariants
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import (
    Crash,
    Delay,
    Drop,
    Duplicate,
    FaultPlan,
    ServiceError,
    SimEnvironment,
    effect,
    virtual_time_session,
)
from dcore_testing.strategies import fault_plans
from examples.sim import payments


class NoteContext(PipelineContext):
    note: str = ""


@register_plugin("sim_flaky", registry=default_registry(), replace=True)
class Flaky(Execute[Any]):
    """Fails the first ``failures`` times it runs (per context), then passes."""

    seen: dict[str, int] = {}

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        n = Flaky.seen[context.job_id] = Flaky.seen.get(context.job_id, 0) + 1
        if n <= self.failures:
            raise RuntimeError(f"flaky failure {n}")
        return next_fn(context)


@pytest.fixture(autouse=True)
def _fresh_flaky_counts() -> None:
    """Job ids in a simulation follow its seed: two tests with one seed share ids."""
    Flaky.seen.clear()


@core_function
def _note(ctx: NoteContext) -> str:
    effect("core", note=ctx.note)
    return ctx.note


def test_a_crash_redelivers_and_the_double_charge_is_caught_with_its_trace() -> None:
    sim = SimEnvironment(seed=3, faults=FaultPlan(Crash(stage="send_receipt", job=1)))
    with sim, pytest.raises(InvariantViolation) as caught:
        payments.crash_after_charge(sim)
    message = str(caught.value)
    assert "exactly-once broken: j1 performed 'charge' 2 times" in message
    kinds = [e["ev"] for e in caught.value.events]
    # the trace shows the charge, the crash, the redelivery and the second charge
    assert kinds.index("effect") < kinds.index("crash") < kinds.index("redeliver")
    assert kinds.count("effect") == 2
    redelivered = [e for e in caught.value.events if e["ev"] == "deliver"]
    # the redelivery finds the dead worker's lease still live, waits for it to run out,
    # then takes the job over
    assert [d["cause"] for d in redelivered] == ["first", "redelivery", "deferred"]
    assert redelivered[1]["t"] == sim.faults.plan.redelivery_after
    assert redelivered[2]["t"] == sim.settings.lease_ttl
    invariants.no_job_lost(sim)  # at-least-once: the job itself is not lost


def test_an_idempotent_charge_survives_the_same_crash() -> None:
    sim = SimEnvironment(seed=3, faults=FaultPlan(Crash(stage="send_receipt", job=1)))
    with sim:
        payments.pay(sim, 1, idempotent=True)
    invariants.exactly_once(sim, "charge")
    invariants.check_all(sim)


@pytest.fixture(scope="module", autouse=True)
def _time_session() -> Any:
    """One freezegun session for the module: each run nests in it cheaply."""
    with virtual_time_session():
        yield


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    plan=fault_plans(
        ("crash", "duplicate", "delay"), stages=payments.STAGES[1:], jobs=3, max_faults=4
    )
)
def test_no_job_is_lost_across_1000_random_fault_plans(plan: FaultPlan) -> None:
    with SimEnvironment(seed=7, workers=2, faults=plan, job_attempts=3) as sim:
        payments.pay(sim, 3, idempotent=True)
        invariants.no_job_lost(sim)
        invariants.retry_bounds(sim)
        invariants.stage_order(sim, payments.STAGES)
        invariants.sync_before_return(sim)
        invariants.dlq_exactly_once(sim)


def test_failed_attempts_retry_with_backoff_on_the_virtual_clock_then_dead_letter() -> None:
    policy = RetryPolicy(attempts=3, backoff=2.0, initial=10.0)
    with SimEnvironment(seed=1) as sim:
        ctx = NoteContext(note="x")
        pipeline = ctx.create_pipeline(core_fn=_note)
        pipeline.chain(Dispatch, plugin="schedule_job", retry=policy)
        pipeline.chain(Execute, plugin="sim_flaky", failures=5)
        pipeline.run()
        sim.run_until_idle()
    delivered = [(e["t"], e["attempt"]) for e in sim.trace.of("deliver")]
    assert delivered == [(0.0, 1), (10.0, 2), (30.0, 3)]
    assert [e["job"] for e in sim.trace.of("dlq")] == ["j1"]
    assert str(sim.jobs.get(ctx.job_id).state) == "DEAD"
    invariants.dlq_exactly_once(sim)
    invariants.retry_bounds(sim)
    with pytest.raises(InvariantViolation, match="j1 reached attempt 3 but at most 2"):
        invariants.retry_bounds(sim, attempts=2)


def test_a_failure_outside_retry_on_is_dead_lettered_at_once_as_in_production() -> None:
    policy = RetryPolicy(attempts=3, initial=10.0, retry_on=ConnectionError)
    with SimEnvironment(seed=1) as sim:
        ctx = NoteContext(note="z")
        pipeline = ctx.create_pipeline(core_fn=_note)
        pipeline.chain(Dispatch, plugin="schedule_job", retry=policy)
        pipeline.chain(Execute, plugin="sim_flaky", failures=5)  # raises RuntimeError
        pipeline.run()
        sim.run_until_idle()
    assert [e["attempt"] for e in sim.trace.of("deliver")] == [1]
    assert sim.trace.of("retry") == []
    assert [e["job"] for e in sim.trace.of("dlq")] == ["j1"]
    assert str(sim.jobs.get(ctx.job_id).state) == "DEAD"
    invariants.dlq_exactly_once(sim)
    invariants.no_job_lost(sim)


def test_a_retry_that_succeeds_ends_the_job_succeeded() -> None:
    with SimEnvironment(seed=1, job_attempts=3, job_initial_delay=1.0) as sim:
        ctx = NoteContext(note="y")
        pipeline = ctx.create_pipeline(core_fn=_note)
        pipeline.chain(Dispatch, plugin="schedule_job")
        pipeline.chain(Execute, plugin="sim_flaky", failures=1)
        pipeline.run()
        sim.run_until_idle()
    assert str(sim.jobs.get(ctx.job_id).state) == "SUCCEEDED"
    assert [e["ev"] for e in sim.trace.events if e["ev"] in ("failed", "retry", "ack")] == [
        "failed",
        "retry",
        "ack",
    ]
    invariants.check_all(sim, exactly_once_effects=["core"])


def test_in_process_dispatch_keeps_the_continuation_so_closures_simulate() -> None:
    calls: list[str] = []

    def closure_core(ctx: NoteContext) -> None:  # not importable: fine in-process
        calls.append(ctx.note)

    with SimEnvironment(seed=1) as sim:
        ctx = NoteContext(note="closure")
        ctx.create_pipeline(core_fn=closure_core).chain(Dispatch, plugin="thread").run()
        sim.run_until_idle()
    assert calls == ["closure"]
    assert sim.trace.of("dispatch")[0]["remote"] is False


def test_remote_dispatch_round_trips_the_message_through_json() -> None:
    with SimEnvironment(seed=1) as sim:
        ctx = payments.PaymentContext(order_id="o1", amount_cents=5)
        payments.payment_pipeline(ctx).run()
        sim.run_until_idle()
        assert sim.trace.of("dispatch")[0]["remote"] is True
        # the worker rebuilt its own context from JSON: the caller's object is untouched
        assert sim.storage.get("receipts/o1") == b"sent"

    def closure_core(ctx: Any) -> None:
        return None

    with SimEnvironment(seed=1):
        ctx = payments.PaymentContext(order_id="o2", amount_cents=5)
        remote = ctx.create_pipeline(core_fn=closure_core).chain(Dispatch, plugin="celery")
        with pytest.raises(ContextSerializationError, match="closure_core"):
            remote.run()


def test_a_dropped_message_is_lost_only_by_an_at_most_once_dispatcher() -> None:
    deliveries: tuple[tuple[Literal["at_most_once", "at_least_once"], bool], ...] = (
        ("at_most_once", True),
        ("at_least_once", False),
    )
    for delivery, lost in deliveries:
        sim = SimEnvironment(seed=1, faults=FaultPlan(Drop(job=1)), delivery=delivery)
        with sim:
            ctx = NoteContext(note="d")
            ctx.create_pipeline(core_fn=_note).chain(Dispatch, plugin="schedule_job").run()
            sim.run_until_idle()
        if lost:
            with pytest.raises(InvariantViolation, match="job lost: j1 is PENDING"):
                invariants.no_job_lost(sim)
        else:
            invariants.no_job_lost(sim)
            assert sim.trace.of("deliver")[0]["cause"] == "redelivery"


def test_fastapi_background_tasks_are_at_most_once_a_crash_loses_the_job() -> None:
    sim = SimEnvironment(seed=1, faults=FaultPlan(Crash(job=1)))
    with sim:
        ctx = NoteContext(note="f")
        ctx.create_pipeline(core_fn=_note).chain(Dispatch, plugin="fastapi").chain(
            Execute, plugin="logging"
        ).run()
        sim.run_until_idle()
    assert sim.trace.of("dispatch")[0]["delivery"] == "at-most-once"
    assert sim.trace.of("lost")
    with pytest.raises(InvariantViolation, match="job lost: j1 is RUNNING"):
        invariants.no_job_lost(sim)


def test_duplicate_and_delayed_deliveries_reach_the_workers() -> None:
    sim = SimEnvironment(seed=2, faults=FaultPlan(Duplicate(job=1), Delay(job=1, seconds=7)))
    with sim:
        ctx = NoteContext(note="dup")
        ctx.create_pipeline(core_fn=_note).chain(Dispatch, plugin="schedule_job").run()
        sim.run_until_idle()
    deliveries = sim.trace.of("deliver")
    assert sorted(d["cause"] for d in deliveries) == ["duplicate", "first"]
    assert all(d["t"] == 7.0 for d in deliveries)
    invariants.no_job_lost(sim)


def test_a_service_error_raises_what_dcores_backends_raise_or_the_clients_own() -> None:
    import botocore.exceptions
    import redis.exceptions

    from dcore.errors import ServiceUnavailableError

    seen: list[str] = []

    def probe(sim: SimEnvironment) -> None:
        with pytest.raises(ServiceUnavailableError, match=r"during storage\.put"):
            sim.storage.put("k", b"v")  # what the S3 backend raises to its caller
        with pytest.raises(botocore.exceptions.EndpointConnectionError) as s3_error:
            sim.storage.get("k")
        with pytest.raises(redis.exceptions.ConnectionError) as redis_error:
            sim.jobs.get("nope")
        seen.extend([type(s3_error.value).__name__, type(redis_error.value).__name__])

    # the probe is the test's own task: faults reach it only when scoped to clients
    plan = FaultPlan(
        ServiceError(op="storage.put", task="client"),
        ServiceError(op="storage.get", error="s3", task="client"),
        ServiceError(op="jobs.get", error="redis", task="client"),
    )
    with SimEnvironment(seed=1, faults=plan) as sim:
        sim.spawn(probe, sim)
        sim.run_until_idle()
    assert seen == ["EndpointConnectionError", "ConnectionError"]
    assert [e["op"] for e in sim.trace.of("fault")] == ["storage.put", "storage.get", "jobs.get"]


def test_a_crashed_worker_does_not_release_its_lock_the_ttl_does() -> None:
    from examples.sim import race

    sim = SimEnvironment(seed=4, faults=FaultPlan(Crash(stage="index_update", job=1)))
    with sim:
        race.locked_uploads(sim)
    acquired = [(e["t"], e["lane"]) for e in sim.trace.of("lock.acquired")]
    assert acquired[0][0] == 0.0
    assert any(t >= 30.0 for t, _ in acquired[1:])  # the next holder waited out the TTL
    invariants.lock_mutual_exclusion(sim)
    invariants.no_job_lost(sim)
