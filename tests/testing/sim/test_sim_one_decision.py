"""The simulator runs production's delivery decision: one dead letter per job whatever
the faults, no two deliveries of a job running at once, a duplicate never adds attempts,
and job-store failures requeue as they do on Celery."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pytest

from dcore import (
    Dispatch,
    Execute,
    JobState,
    NextFn,
    PipelineContext,
    RetryPolicy,
    core_function,
    current_environment,
    register_plugin,
)
from dcore._plugins.registry import default_registry
from dcore.backends.memory import MemoryEventBus, MemoryJobStore, MemoryLocks
from dcore.backends.memory_storage import MemoryStorage
from dcore_testing import invariants
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import (
    Crash,
    Duplicate,
    FaultPlan,
    ServiceError,
    SimEnvironment,
    effect,
    virtual_time_session,
)

Mode = Literal["remote", "in-process"]
DISPATCH = {"remote": "celery", "in-process": "thread"}


class Order(PipelineContext):
    n: int = 0
    work_seconds: float = 0.0
    fail: bool = False


@register_plugin("decision_work", registry=default_registry(), replace=True)
class Work(Execute[Order]):
    """Records a run of the stage (an effect), takes ``work_seconds`` of virtual time,
    and fails when the order says so."""

    def execute(self, next_fn: NextFn[Order], context: Order) -> Any:
        effect("work")
        if context.work_seconds:
            current_environment().clock.sleep(context.work_seconds)
        if context.fail:
            raise RuntimeError(f"order {context.n} cannot be processed")
        return next_fn(context)


@core_function
def finish(ctx: Order) -> int:
    effect("core")
    return ctx.n


def run_orders(
    sim: SimEnvironment, mode: Mode, orders: list[Order], policy: RetryPolicy | None = None
) -> None:
    with sim:
        for order in orders:
            pipeline = order.create_pipeline(core_fn=finish)
            pipeline.chain(Dispatch, plugin=DISPATCH[mode], retry=policy)
            pipeline.chain(Execute, plugin="decision_work")
            pipeline.run()
        sim.run_until_idle()


@pytest.fixture(scope="module", autouse=True)
def _time_session() -> Any:
    with virtual_time_session():
        yield


def _dlq_per_job(sim: SimEnvironment) -> Counter[str]:
    """Entries on the dead-letter queue itself, by job alias."""
    return Counter(sim.alias(p["job_id"]) for p in sim.dlq_entries())


@pytest.mark.parametrize("mode", ["remote", "in-process"])
def test_random_faults_never_give_a_job_two_dead_letters_in_1000_seeds(mode: Mode) -> None:
    plan = FaultPlan(crash=0.15, duplicate=0.2, delay=0.2, drop=0.1)
    dead = 0
    for seed in range(1000):
        sim = SimEnvironment(seed=seed, workers=2, faults=plan)
        run_orders(
            sim,
            mode,
            [Order(n=1, fail=True), Order(n=2, fail=True)],
            RetryPolicy(attempts=2, initial=1.0),
        )
        letters = _dlq_per_job(sim)
        assert all(n == 1 for n in letters.values()), (seed, letters)
        invariants.no_job_lost(sim)
        invariants.dlq_exactly_once(sim)
        invariants.no_concurrent_runs(sim)
        dead += sum(1 for s in sim.job_states().values() if s is JobState.DEAD)
    assert dead == 2000  # every job of every seed failed for good, once


@pytest.mark.parametrize("mode", ["remote", "in-process"])
@pytest.mark.parametrize("op", ["jobs.bury", "jobs.end_attempt"])
def test_a_crash_right_after_the_dead_lettering_steps_gives_one_entry(mode: Mode, op: str) -> None:
    plan = FaultPlan(Crash(op=op, when="after", nth=1))
    sim = SimEnvironment(seed=1, faults=plan)
    run_orders(sim, mode, [Order(n=1, fail=True)])
    assert [e["ev"] for e in sim.trace.of("crash")] == ["crash"]
    assert _dlq_per_job(sim) == {"j1": 1}
    assert sim.job_states() == {"j1": JobState.DEAD}


class NotSameServerBus:
    """A memory bus the memory job store cannot write on: dead-lettering takes the
    step-by-step path (FAILED, the keyed append, DEAD), as with two Redis servers."""

    def __init__(self, inner: MemoryEventBus) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("crash_after", ["jobs.end_attempt", "events.append"])
def test_a_crash_between_the_steps_of_a_split_dead_lettering_gives_one_entry(
    crash_after: str,
) -> None:
    from dcore_testing.sim.clock import VirtualClock

    clock = VirtualClock()  # the backends' clock; the simulation brings its own
    services = {
        "storage": MemoryStorage(),
        "events": NotSameServerBus(MemoryEventBus(clock)),
        "jobs": MemoryJobStore(clock),
        "locks": MemoryLocks(clock),
    }
    sim = SimEnvironment(
        seed=1, services=services, faults=FaultPlan(Crash(op=crash_after, when="after"))
    )
    run_orders(sim, "remote", [Order(n=1, fail=True)])
    assert [e["where"] for e in sim.trace.of("crash")] == [f"after {crash_after}"]
    assert _dlq_per_job(sim) == {"j1": 1}
    assert sim.job_states() == {"j1": JobState.DEAD}


@pytest.mark.parametrize("mode", ["remote", "in-process"])
def test_a_duplicate_of_a_running_job_waits_for_it_and_never_runs_alongside(mode: Mode) -> None:
    for seed in range(200):
        sim = SimEnvironment(seed=seed, workers=2, faults=FaultPlan(Duplicate(job=1)))
        run_orders(sim, mode, [Order(n=1, work_seconds=40.0)])  # longer than a lease
        invariants.no_concurrent_runs(sim)
        invariants.all_succeeded(sim)
        assert len(sim.trace.of("effect")) == 2  # one "work", one "core": ran once
        causes = [e["cause"] for e in sim.trace.of("deliver")]
        assert sorted(causes[:2]) == ["duplicate", "first"]  # both delivered at once
        assert "deferred" in causes  # ... and the one that found the job leased waited


@pytest.mark.parametrize("mode", ["remote", "in-process"])
def test_a_duplicated_failing_job_runs_at_most_its_policys_attempts(mode: Mode) -> None:
    for seed in range(200):
        plan = FaultPlan(Duplicate(job=1), Duplicate(job=1), duplicate=0.5, max_faults=4)
        sim = SimEnvironment(seed=seed, workers=3, faults=plan)
        run_orders(sim, mode, [Order(n=1, fail=True)], RetryPolicy(attempts=3, initial=2.0))
        runs = [e for e in sim.trace.of("effect") if e["name"] == "work"]
        assert len(runs) == 3, (seed, len(runs))
        invariants.retry_bounds(sim)
        invariants.no_concurrent_runs(sim)
        assert _dlq_per_job(sim) == {"j1": 1}


def test_no_concurrent_runs_names_two_workers_running_one_job() -> None:
    from dcore_testing.sim.trace import Trace

    trace = Trace({})
    for event in (
        {"ev": "stage.enter", "job": "j1", "lane": "w1", "stage": "a", "index": 1},
        {"ev": "stage.enter", "job": "j1", "lane": "w2", "stage": "a", "index": 1},
    ):
        trace.record({"t": 0.0, **event})
    with pytest.raises(InvariantViolation, match="j1 ran on w2 while w1 was still running"):
        invariants.no_concurrent_runs(trace)


@pytest.mark.parametrize(
    ("op", "nth"),
    [
        ("jobs.claim", 1),  # unreachable at the start
        ("jobs.end_attempt", 1),  # at SUCCEEDED
    ],
)
def test_an_unreachable_job_store_requeues_the_delivery_and_the_job_succeeds(
    op: str, nth: int
) -> None:
    sim = SimEnvironment(seed=3, faults=FaultPlan(ServiceError(op=op, nth=nth)))
    run_orders(sim, "remote", [Order(n=1)])
    assert [e["ev"] for e in sim.trace.of("requeue")] == ["requeue"]
    invariants.expect_states(sim, {"j1": "SUCCEEDED"})
    invariants.check_all(sim, allow_dead=False)


def test_a_job_lost_with_its_worker_too_often_is_dead_lettered() -> None:
    crashes = [Crash(stage="decision_work") for _ in range(5)]
    sim = SimEnvironment(seed=1, faults=FaultPlan(*crashes))
    run_orders(sim, "remote", [Order(n=1)])
    assert len(sim.trace.of("crash")) == 5
    invariants.expect_states(sim, {"j1": "DEAD"})
    [letter] = sim.dlq_entries()
    assert "died 5 times" in letter["error"]


@register_plugin("decision_flaky", registry=default_registry(), replace=True)
class FlakyStore(Execute[Order]):
    """Fails its first two runs per job (a store that is briefly unavailable)."""

    def execute(self, next_fn: NextFn[Order], context: Order) -> Any:
        key = f"flaky/{context.job_id}"
        storage = current_environment().storage
        runs = int(storage.get(key)) if storage.exists(key) else 0
        storage.put(key, str(runs + 1).encode())
        if runs < 2:
            raise ConnectionError(f"store unavailable (run {runs + 1})")
        return next_fn(context)


@pytest.mark.parametrize("mode", ["remote", "in-process"])
def test_a_correct_pipeline_with_the_retry_stage_passes_check_all_on_1000_seeds(
    mode: Mode,
) -> None:
    plan = FaultPlan(crash=0.05, duplicate=0.2, delay=0.2, max_faults=3)
    outcomes: Counter[str] = Counter()
    for seed in range(1000):
        sim = SimEnvironment(seed=seed, workers=2, faults=plan)
        with sim:
            for n in (1, 2):
                pipeline = Order(n=n).create_pipeline(core_fn=finish)
                pipeline.chain(Dispatch, plugin=DISPATCH[mode])
                pipeline.chain(
                    Execute("retry", attempts=3, initial=0.5, retry_on=["ConnectionError"])
                )
                pipeline.chain(Execute, plugin="decision_flaky")
                pipeline.run()
            sim.run_until_idle()
        summary = invariants.check_all(sim)
        outcomes.update(summary.states)
    assert outcomes["SUCCEEDED"] > 1900, outcomes  # the runs did the work (crashes may cap)


def test_a_failure_the_store_could_not_record_requeues_the_attempt_that_was_delivered() -> None:
    sim = SimEnvironment(seed=3, faults=FaultPlan(ServiceError(op="jobs.end_attempt")))
    run_orders(sim, "remote", [Order(n=1, fail=True)], RetryPolicy(attempts=2, initial=1.0))
    # nothing was recorded, so the delivery goes back as it was (attempt 1), as Celery's
    # Reject(requeue=True) does, and attempt 1 runs again before attempt 2
    assert [e["attempt"] for e in sim.trace.of("requeue")] == [1]
    assert [e["attempt"] for e in sim.trace.of("deliver")] == [1, 1, 1, 2]
    assert len([e for e in sim.trace.of("effect") if e["name"] == "work"]) == 3
    invariants.expect_states(sim, {"j1": "DEAD"})
