"""``Scheduler.emit_call`` is ``emit("call", op=..., key=...)`` without keyword arguments:
the same event, field for field and in the same order, from the test's own code, a
client task and a worker task running a job."""

from __future__ import annotations

import json

import pytest

from dcore_testing.sim import SimEnvironment
from dcore_testing.sim.errors import ReplayDivergence


def _both(sim: SimEnvironment) -> tuple[dict[str, object], dict[str, object]]:
    sched = sim.scheduler
    sched.emit("call", op="storage.put", key="k/1")
    sched.emit_call("storage.put", "k/1")
    by_emit, by_emit_call = sim.trace.events[-2:]
    return by_emit, by_emit_call


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    assert json.dumps(a) == json.dumps(b)  # same keys in the same order, same values


def test_outside_any_task() -> None:
    sim = SimEnvironment(seed=1)
    _same(*_both(sim))
    assert sim.trace.events[-1]["lane"] == "main"


def test_in_a_client_task_and_in_a_worker_task_running_a_job() -> None:
    sim = SimEnvironment(seed=1)
    pairs: list[tuple[dict[str, object], dict[str, object]]] = []
    sim.spawn(lambda: pairs.append(_both(sim)), name="client1")
    sim.scheduler.spawn(
        lambda: pairs.append(_both(sim)), name="w1:j1", lane="w1", worker=1, job="j1"
    )
    sim.run_until_idle()

    assert len(pairs) == 2
    for pair in pairs:
        _same(*pair)
    assert [p[1].get("job") for p in pairs] == [None, "j1"]


def test_in_replay_it_is_compared_like_any_event() -> None:
    recorded = SimEnvironment(seed=1)
    recorded.scheduler.emit_call("storage.put", "a")
    recorded.scheduler.emit_call("storage.put", "b")
    replaying = SimEnvironment(seed=1, replay=recorded.trace)
    replaying.scheduler.emit_call("storage.put", "a")
    assert replaying.trace.events == recorded.trace.events[:1]

    with pytest.raises(ReplayDivergence) as diverged:
        replaying.scheduler.emit_call("storage.put", "c")
    assert diverged.value.index == 1
