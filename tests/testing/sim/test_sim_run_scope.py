"""A run makes its simulation the current environment (and patches time when asked),
whether or not the test entered it, and leaves the environment it found."""

from __future__ import annotations

import time

import pytest

from dcore import DcoreSettings, Environment
from dcore._core.environment import current_environment, use_environment
from dcore_testing.sim import SimEnvironment


def _seen_by_a_task(sim: SimEnvironment) -> list[object]:
    seen: list[object] = []
    sim.spawn(lambda: seen.append(current_environment()))
    return seen


@pytest.mark.parametrize("patch_time", [False, True])
def test_a_run_outside_the_with_block_makes_the_simulation_current(patch_time: bool) -> None:
    sim = SimEnvironment(seed=1, patch_time=patch_time)
    before = current_environment()
    seen = _seen_by_a_task(sim)

    sim.run_until_idle()

    assert seen == [sim]
    assert current_environment() is before


@pytest.mark.parametrize("patch_time", [False, True])
def test_a_run_inside_another_environment_still_runs_in_the_simulation(
    patch_time: bool,
) -> None:
    sim = SimEnvironment(seed=1, patch_time=patch_time)
    other = Environment(DcoreSettings(storage="memory"))
    seen = _seen_by_a_task(sim)

    with sim, use_environment(other):
        sim.run_until_idle()
        assert current_environment() is other

    assert seen == [sim]


def test_a_run_inside_the_with_block_patches_time_only_when_asked() -> None:
    for patch_time, virtual in ((True, True), (False, False)):
        sim = SimEnvironment(seed=1, patch_time=patch_time)
        read: list[float] = []
        sim.spawn(lambda read=read, sim=sim: (sim.clock.sleep(3600.0), read.append(time.time())))
        with sim:
            sim.run_until_idle()
        assert (read[0] == sim.clock.time()) is virtual
