"""A finished task's greenlet runs the next task (a new greenlet maps a fresh Python data
stack for every task): each task still runs in its own context, a failing task leaves
its greenlet usable, and closing the simulation unwinds the greenlets left waiting."""

from __future__ import annotations

import contextvars

import pytest
from greenlet import getcurrent

from dcore_testing.sim import SimEnvironment

_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


def test_tasks_run_one_after_another_share_one_greenlet_but_not_their_context() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    glets: list[object] = []
    seen: list[str] = []

    def task(name: str) -> None:
        glets.append(getcurrent())
        seen.append(_SEEN.get())
        _SEEN.set(name)
        sim.clock.sleep(1.0)
        seen.append(_SEEN.get())

    sim.spawn(task, "first")
    sim.run_until_idle()
    sim.spawn(task, "second")
    sim.run_until_idle()

    assert glets[0] is glets[1]
    assert seen == ["unset", "first", "unset", "second"]


def test_a_failed_task_leaves_its_greenlet_for_the_next_one() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    ran: list[object] = []

    def fails() -> None:
        ran.append(getcurrent())
        raise RuntimeError("boom")

    sim.spawn(fails)
    with pytest.raises(RuntimeError, match="boom"):
        sim.run_until_idle()
    sim.spawn(lambda: ran.append(getcurrent()))
    sim.run_until_idle()

    assert ran[0] is ran[1]


def test_closing_unwinds_the_waiting_greenlets() -> None:
    sim = SimEnvironment(seed=1, patch_time=False)
    sim.spawn(lambda: None)
    sim.run_until_idle()
    (idle,) = sim.scheduler._idle

    sim.close()

    assert idle.dead
    assert sim.scheduler._idle == []


def test_no_more_than_a_few_greenlets_wait_after_many_tasks_ended_together() -> None:
    from dcore_testing.sim.scheduler import _IDLE_MAX

    sim = SimEnvironment(seed=1, patch_time=False)
    for _ in range(_IDLE_MAX + 10):
        sim.spawn(sim.clock.sleep, 1.0)
    sim.run_until_idle()

    assert len(sim.scheduler._idle) == _IDLE_MAX
