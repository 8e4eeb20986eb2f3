# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""``thread``: the background part runs on a bounded pool after run() returns;
shutdown drains, and times out with DispatcherShutdownTimeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobHandle,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
    Runtime,
    use_environment,
)
from dcore.dispatchers.thread import ThreadDispatcher, worker_pool
from dcore.errors import DispatchError, DispatcherShutdownTimeout

WAIT = 30.0  # generous upper bound for a wait that normally returns at once


class Gate:
    """Holds a background job until the test opens it; tells when the job got there."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.open = threading.Event()


class Ctx(PipelineContext):
    fail: bool = False
    gate: Runtime[Gate] = None
    ran_on: Runtime[list[str]] = None


class Hold(Execute[Ctx]):
    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        if context.ran_on is not None:
            context.ran_on.append(threading.current_thread().name)
        if context.gate is not None:
            context.gate.reached.set()
            assert context.gate.open.wait(WAIT), "gate never opened"
        if context.fail:
            raise ConnectionResetError("upstream went away")
        return next_fn(context)


def core(ctx: Ctx) -> str:
    return f"done {ctx.job_id}"


@pytest.fixture
def env(tmp_path: Path, dcore_registry: PluginRegistry) -> Iterator[Environment]:
    dcore_registry.register("hold", Hold)
    environment = Environment(
        DcoreSettings(storage_root=tmp_path, thread_workers=2), registry=dcore_registry
    )
    with use_environment(environment):
        yield environment
    environment.close()


def start(ctx: Ctx) -> JobHandle:
    handle: JobHandle = (
        ctx.create_pipeline(core).chain(Dispatch("thread")).chain(Execute("hold")).run()
    )
    return handle


def test_thread_returns_before_background_runs_then_job_succeeds(env: Environment) -> None:
    gate = Gate()
    ctx = Ctx(gate=gate)

    handle = start(ctx)

    assert handle == JobHandle(job_id=ctx.job_id, status="scheduled")
    assert gate.reached.wait(WAIT)
    assert env.jobs.get(ctx.job_id).state is JobState.RUNNING
    gate.open.set()
    ThreadDispatcher.drain(WAIT, environment=env)
    record = env.jobs.get(ctx.job_id)
    assert record.state is JobState.SUCCEEDED
    assert record.result == f"done {ctx.job_id}"


def test_background_runs_on_a_worker_thread(env: Environment) -> None:
    ran_on: list[str] = []
    start(Ctx(ran_on=ran_on))
    ThreadDispatcher.drain(WAIT, environment=env)
    assert len(ran_on) == 1
    assert ran_on[0].startswith("dcore")
    assert ran_on[0] != threading.current_thread().name


def test_pool_is_bounded_by_thread_workers(env: Environment) -> None:
    gates = [Gate() for _ in range(3)]
    threads: list[str] = []
    for gate in gates:
        start(Ctx(gate=gate, ran_on=threads))

    assert gates[0].reached.wait(WAIT)
    assert gates[1].reached.wait(WAIT)
    assert not gates[2].reached.is_set()  # both workers are busy: the third job waits
    assert worker_pool(env).in_flight == 3
    gates[0].open.set()
    assert gates[2].reached.wait(WAIT)
    for gate in gates:
        gate.open.set()
    ThreadDispatcher.drain(WAIT, environment=env)
    assert len(set(threads)) <= 2


def test_background_failure_is_recorded_dead_and_dead_lettered(env: Environment) -> None:
    ctx = Ctx(fail=True)
    handle = start(ctx)
    ThreadDispatcher.drain(WAIT, environment=env)

    assert handle.status == "scheduled"
    record = env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    assert record.error == "ConnectionResetError: upstream went away"
    assert [e.payload["job_id"] for e in env.events.entries(env.settings.dlq_topic)] == [ctx.job_id]


def test_shutdown_waits_for_running_jobs(env: Environment) -> None:
    gate = Gate()
    ctx = Ctx(gate=gate)
    start(ctx)
    assert gate.reached.wait(WAIT)
    finished = threading.Event()

    def shut() -> None:
        ThreadDispatcher.shutdown(WAIT, environment=env)
        finished.set()

    closer = threading.Thread(target=shut)
    closer.start()
    assert not finished.is_set()  # held job: shutdown cannot have returned
    gate.open.set()
    closer.join(WAIT)

    assert finished.is_set()
    assert env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED


def test_shutdown_times_out_naming_jobs_still_running(env: Environment) -> None:
    gate = Gate()
    start(Ctx(gate=gate))
    assert gate.reached.wait(WAIT)

    with pytest.raises(DispatcherShutdownTimeout) as info:
        ThreadDispatcher.shutdown(0.01, environment=env)
    assert "1 background job(s) still running after 0.01s" in str(info.value)
    assert isinstance(info.value, TimeoutError)
    gate.open.set()
    ThreadDispatcher.drain(WAIT, environment=env)


def test_dispatch_after_shutdown_fails_and_dead_letters(env: Environment) -> None:
    ThreadDispatcher.shutdown(WAIT, environment=env)
    ctx = Ctx()
    with pytest.raises(DispatchError, match="thread dispatcher is shut down"):
        start(ctx)
    assert env.jobs.get(ctx.job_id).state is JobState.DEAD
    [letter] = env.events.entries(env.settings.dlq_topic)
    assert "dispatch failed" in letter.payload["error"]
