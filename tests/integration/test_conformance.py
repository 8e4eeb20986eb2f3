"""What a simulated run promises about Celery: the differential table.

Each case runs twice: in the simulator with a FaultPlan, and on a real Celery worker
(subprocess, prefork pool of 2) with real Redis, the fault made by real means (a SIGKILL,
a cut of the network path to Redis through the chaos proxy, a message published twice,
a bus on a server that is down). Both must agree on the job's final state, its attempt,
how many dead letters it got, and how often its stage and core function ran.

The compensation cases put two stages that can be undone (``conf_step`` a and b) before
the failing one; there both must also agree on the order the undos ran in, which stages
the job record has compensated and whether the dead letter says the job was.

Both sides run with a 2 s lease (``DCORE_LEASE_TTL``) and the worker sweeps for lost
jobs every second (``DCORE_RECOVERY_INTERVAL``), so a case takes seconds, not a lease of
15. ``docs/explanation/simulator-and-celery.md`` shows this table.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dcore_it_conformance as conf
import pytest
import redis
from celery_support import HERE

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobMessage,
    RetryPolicy,
    use_environment,
)
from dcore.backends.memory import MemoryEventBus, MemoryJobStore, MemoryLocks
from dcore.backends.memory_storage import MemoryStorage
from dcore.celery import TASK_NAME, queue_for
from dcore.errors import JobNotFoundError
from dcore.services.jobs import TERMINAL
from dcore_testing.sim import (
    Crash,
    Duplicate,
    FaultPlan,
    ServiceError,
    SimEnvironment,
)
from dcore_testing.sim.clock import VirtualClock

pytestmark = pytest.mark.integration

LEASE = 2.0
TIMEOUT = 45.0


@dataclass(frozen=True)
class Case:
    name: str
    context: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] | None = None
    #: the fault in the simulator
    sim: FaultPlan = field(default_factory=FaultPlan)
    #: the same fault on the real worker: "" (none), "plan:<store plan>",
    #: "publish-twice", "publish-again", "malformed", "bus-down", "kill-worker"
    real: str = ""
    #: the ``conf_step`` stages (which compensate) chained before ``conf_work``
    steps: tuple[str, ...] = ()


def undoing(name: str, sim: FaultPlan | None = None, real: str = "") -> Case:
    """A case whose job fails for good (twice) after two steps that can be undone."""
    return Case(
        name,
        {"fail": "runtime"},
        {"attempts": 2, "initial": 0.2},
        sim=sim or FaultPlan(),
        real=real,
        steps=("a", "b"),
    )


CASES = [
    Case(
        "crash at stage enter",
        {"kill": "enter"},
        sim=FaultPlan(Crash(stage="conf_work", when="enter")),
    ),
    Case(
        "crash after stage exit before ack",
        {"kill": "exit"},
        sim=FaultPlan(Crash(stage="conf_work", when="exit")),
    ),
    Case(
        "crash after the DLQ append before DEAD",
        {"fail": "runtime"},
        sim=FaultPlan(Crash(op="jobs.bury", when="after")),
        real="plan:kill-after:bury",
    ),
    Case(
        "duplicate while running",
        {"work_seconds": 1.0},
        sim=FaultPlan(Duplicate()),
        real="publish-twice",
    ),
    Case("duplicate after success", real="publish-again"),
    Case(
        "job store unreachable at start",
        sim=FaultPlan(ServiceError(op="jobs.claim")),
        real="plan:cut-before:claim:1.0",
    ),
    Case(
        "job store unreachable at FAILED",
        {"fail": "runtime"},
        {"attempts": 2, "initial": 0.5},
        sim=FaultPlan(ServiceError(op="jobs.end_attempt")),
        real="plan:cut-before:end_attempt:1.0",
    ),
    Case(
        "job store unreachable at DEAD",
        {"fail": "runtime"},
        sim=FaultPlan(ServiceError(op="jobs.bury")),
        real="plan:cut-before:bury:1.0",
    ),
    Case(
        "job store unreachable at SUCCEEDED",
        sim=FaultPlan(ServiceError(op="jobs.end_attempt")),
        real="plan:cut-before:end_attempt:1.0",
    ),
    Case(
        "event bus down",
        sim=FaultPlan(ServiceError(op="events.publish", times=100)),
        real="bus-down",
    ),
    Case("give_up", {"fail": "give_up"}, {"attempts": 3, "initial": 0.2}),
    Case(
        "error outside retry_on",
        {"fail": "value"},
        {"attempts": 3, "initial": 0.2, "retry_on": ["builtins:ConnectionError"]},
    ),
    Case("retries exhausted", {"fail": "runtime"}, {"attempts": 3, "initial": 0.2}),
    Case("malformed message", real="malformed"),
    Case(
        "worker SIGKILL mid-stage",
        {"midway": True, "work_seconds": 2.0},
        sim=FaultPlan(Crash(op="storage.put", when="after")),
        real="kill-worker",
    ),
    undoing("failing for good, undone"),
    Case(
        "undo failing for good",
        {"fail": "runtime", "undo_fails": "b"},
        {"attempts": 1},
        steps=("a", "b"),
    ),
    undoing(
        "crash before the compensation starts",
        FaultPlan(Crash(op="jobs.compensate", when="before")),
        "plan:kill-before:compensate",
    ),
    undoing(
        "crash while compensating, undo not recorded",
        FaultPlan(Crash(op="jobs.mark_compensated", when="before")),
        "plan:kill-before:mark_compensated",
    ),
    undoing(
        "crash while compensating, undo recorded",
        FaultPlan(Crash(op="jobs.mark_compensated", when="after")),
        "plan:kill-after:mark_compensated",
    ),
    undoing(
        "job store unreachable while compensating",
        FaultPlan(ServiceError(op="jobs.mark_compensated")),
        "plan:cut-before:mark_compensated:1.0",
    ),
]


@dataclass(frozen=True)
class Result:
    state: str | None
    attempt: int
    dead_letters: int
    runs: dict[str, int]
    #: the compensations in the order they ran (each try of one that failed counts)
    undos: tuple[str, ...] = ()
    #: the stages the job record has compensated (pipeline indexes)
    compensated: tuple[int, ...] = ()
    #: the dead letter's ``compensated`` (None: no dead letter, or no stage to undo)
    letter_compensated: bool | None = None


def _pipeline(ctx: conf.CaseContext, case: Case) -> Any:
    policy = RetryPolicy.model_validate(case.retry) if case.retry else None
    pipeline = ctx.create_pipeline(core_fn=conf.finish)
    pipeline.chain(Dispatch, plugin="celery", retry=policy)
    for step in case.steps:
        pipeline.chain(Execute, plugin="conf_step", name=step)
    pipeline.chain(Execute, plugin="conf_work")
    return pipeline


def _malformed(job_id: str) -> str:
    return json.dumps({"dcore": 1, "job_id": job_id, "spec": "not a list", "core_fn": 7})


def _result(record: Any, letters: list[dict[str, Any]], effects: list[str]) -> Result:
    runs = dict(Counter(effects))
    undos = tuple(name for name in effects if name.startswith("undo "))
    flag = letters[-1].get("compensated") if letters else None
    if record is None:
        return Result(None, 0, len(letters), runs, undos, (), flag)
    return Result(str(record.state), record.attempt, len(letters), runs, undos,
                  tuple(record.compensated), flag)  # fmt: skip


# -- the simulator ------------------------------------------------------------------------
class _SeparateBus:
    """A memory bus the job store does not write on (the bus lives on another server)."""

    def __init__(self, inner: MemoryEventBus) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_in_simulator(case: Case) -> Result:
    services = None
    if case.real == "bus-down":
        clock = VirtualClock()
        services = {
            "storage": MemoryStorage(),
            "events": _SeparateBus(MemoryEventBus(clock)),
            "jobs": MemoryJobStore(clock),
            "locks": MemoryLocks(clock),
        }
    # patch_time=False: the real side of the same test waits on the real clock
    sim = SimEnvironment(
        seed=0, workers=2, faults=case.sim, services=services, patch_time=False, lease_ttl=LEASE
    )
    ctx = conf.CaseContext(case=case.name, **case.context)
    with sim:
        if case.real == "malformed":
            sim.broker.inject(_malformed(ctx.job_id))
        else:
            _pipeline(ctx, case).run()
        sim.run_until_idle()
        if case.real == "publish-again":
            sim.broker.inject(sim.jobs.inner.get(ctx.job_id).message)  # type: ignore[attr-defined]
            sim.run_until_idle()
    assert not case.sim.faults or sim.trace.of("fault"), f"{case.name}: no fault struck"
    try:
        record = sim.jobs.inner.get(ctx.job_id)  # type: ignore[attr-defined]
    except JobNotFoundError:
        record = None
    letters = [p for p in sim.dlq_entries() if p.get("job_id") == ctx.job_id]
    return _result(record, letters, [str(e["name"]) for e in sim.trace.of("effect")])


# -- the real worker ----------------------------------------------------------------------
def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there: a Redis that is down


def _quiet(client: Any, queue: str) -> bool:
    """No message of ``queue`` waits in the broker or is held unacknowledged."""
    if client.llen(queue):
        return False
    return all(json.loads(raw)[2] != queue for raw in client.hvals("unacked"))


class RealSide:
    def __init__(
        self, celery_worker: Any, chaos_redis: Any, toxiproxy: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.celery_worker = celery_worker
        self.chaos = chaos_redis
        self.toxiproxy = toxiproxy
        self.direct = redis.Redis.from_url(chaos_redis.direct_url)
        monkeypatch.setenv(conf.REDIS_URL, chaos_redis.direct_url)

    def run(self, case: Case) -> Result:
        direct_url = self.chaos.direct_url
        extra = {
            conf.REDIS_URL: direct_url,
            conf.TOXIPROXY_URL: self.toxiproxy.url,
            conf.PROXY: self.chaos.proxy.name,
        }
        overrides: dict[str, Any] = {
            "redis_url": self.chaos.url,  # job store, bus and locks through the proxy
            "celery_broker_url": direct_url,
            "job_store": "conf_redis",
            "lease_ttl": LEASE,
            "recovery_interval": 1.0,
        }
        if case.real == "bus-down":
            overrides.update(redis_url=direct_url, job_store="redis", event_bus="conf_down_bus")
            extra["CONF_BUS_URL"] = _closed_port_url()
        worker = self.celery_worker(
            ["dcore_it_conformance"], pythonpath=[str(HERE)], env=extra, **overrides
        )
        sender = DcoreSettings(
            **{
                **worker.settings.model_dump(),
                "redis_url": direct_url,
                "job_store": "redis",
                "event_bus": "redis",
            }
        )
        queue = queue_for(0, worker.settings)
        with Environment(sender) as env, use_environment(env):
            ctx = conf.CaseContext(case=case.name, **case.context)
            if case.real.startswith("plan:"):
                conf.set_plan(sender.key_prefix, ctx.job_id, case.real[5:])
            if case.real == "malformed":
                worker.client.send_task(
                    TASK_NAME, args=[_malformed(ctx.job_id)], queue=queue_for(None, sender)
                )
            else:
                _pipeline(ctx, case).run()
            message = self._message(env, ctx.job_id, case)
            queue = queue_for(JobMessage.parse(message).shard, sender) if message else queue
            if case.real == "publish-twice":
                worker.client.send_task(TASK_NAME, args=[message], queue=queue)
            if case.real == "kill-worker":
                self._wait(lambda: "work" in conf.effects(ctx.job_id), worker)
                worker.restart()
            record = self._wait_terminal(env, ctx.job_id, worker)
            if case.real == "publish-again":
                worker.client.send_task(TASK_NAME, args=[message], queue=queue)
            if case.real != "kill-worker":  # a killed worker's message returns much later
                self._wait(lambda: _quiet(self.direct, queue), worker)
            record = env.jobs.get(ctx.job_id)
            letters = [
                e.payload
                for e in env.events.entries(sender.dlq_topic)
                if e.payload.get("job_id") == ctx.job_id
            ]
            effects = conf.effects(ctx.job_id)
        if case.real.startswith("plan:"):
            assert conf.fired(sender.key_prefix, ctx.job_id, case.real[5:]), (
                f"{case.name}: the plan never fired; worker log:\n{worker.log_tail()}"
            )
        return _result(record, letters, effects)

    @staticmethod
    def _message(env: Environment, job_id: str, case: Case) -> str | None:
        if case.real == "malformed":
            return None
        return env.jobs.get(job_id).message

    @staticmethod
    def _wait(done: Any, worker: Any) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; worker log:\n{worker.log_tail()}")
            time.sleep(0.05)  # polling another process's progress

    def _wait_terminal(self, env: Environment, job_id: str, worker: Any) -> Any:
        def terminal() -> bool:
            try:
                return env.jobs.get(job_id).state in TERMINAL
            except JobNotFoundError:
                return False

        self._wait(terminal, worker)
        return env.jobs.get(job_id)

    def close(self) -> None:
        self.direct.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_simulator_predicts_what_celery_does(
    case: Case,
    dcore_celery_worker: Any,
    dcore_chaos_redis: Any,
    dcore_toxiproxy: Any,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    simulated = run_in_simulator(case)
    real = RealSide(dcore_celery_worker, dcore_chaos_redis, dcore_toxiproxy, monkeypatch)
    try:
        observed = real.run(case)
    finally:
        real.close()
    record_property("conformance", f"{case.name}: {observed}")
    assert simulated == observed, f"{case.name}: simulated {simulated}, Celery {observed}"


def test_the_table_covers_the_cases_the_docs_name() -> None:
    page = HERE.parent.parent / "docs" / "explanation" / "simulator-and-celery.md"
    section = page.read_text().split("# What a simulated run promises about Celery", 1)[1]
    for case in CASES:
        assert f"| {case.name} |" in section, case.name
