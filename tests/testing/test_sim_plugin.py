"""The pytest plugin's simulator side, run in a child pytest (pytester): a failing
simulated test saves its trace and prints the command that replays it; the replay
reproduces it; the options do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FAILING = """
import pytest
from examples.sim import race

@pytest.mark.sim(workers=2)
def test_uploads(dcore_sim):
    race.unlocked_uploads(dcore_sim)
"""

PASSING = """
from examples.sim import race

def test_locked(dcore_sim):
    race.locked_uploads(dcore_sim)

def test_frozen(dcore_frozen_time):
    import time
    start = time.time()
    dcore_frozen_time.tick(90)
    assert time.time() - start == 90
    assert dcore_frozen_time.now().year == 2024

def test_services(dcore_services):
    assert dcore_services.kind == "fake"
    dcore_services.storage.put("k", b"v")
    assert dcore_services.storage.get("k") == b"v"
"""


def _failing_seed(pytester: pytest.Pytester) -> int:
    from dcore_testing.sim.explore import run_scenario
    from examples.sim import race

    return next(s for s in range(200) if run_scenario(race.unlocked_uploads, s).failed)


@pytest.fixture
def child(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.syspathinsert(str(Path(__file__).resolve().parents[2]))  # examples/
    return pytester


def test_a_failing_sim_test_saves_its_trace_and_prints_the_replay_command(
    child: pytest.Pytester,
) -> None:
    child.makepyfile(test_race=FAILING)
    seed = _failing_seed(child)
    result = child.runpytest(f"--dcore-seed={seed}", "--dcore-trace-dir=traces")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "dcore simulator" in text
    match = re.search(r"replay it with:\s+pytest (\S+) --dcore-replay=(\S+)", text)
    assert match, text
    assert match.group(1) == "test_race.py::test_uploads"
    trace = Path(child.path, match.group(2))
    assert trace.exists()
    assert trace.parent.name == "traces"

    replayed = child.runpytest(match.group(1), f"--dcore-replay={match.group(2)}")
    replayed.assert_outcomes(failed=1)
    assert "lost update" in replayed.stdout.str()
    assert f"replayed the trace {match.group(2)}" in replayed.stdout.str()


def test_replaying_against_changed_code_fails_with_the_divergence(child: pytest.Pytester) -> None:
    child.makepyfile(test_race=FAILING)
    seed = _failing_seed(child)
    child.runpytest(f"--dcore-seed={seed}", "--dcore-trace-dir=traces")
    trace = next(Path(child.path, "traces").glob("*.jsonl"))
    child.makepyfile(
        test_race=FAILING.replace(
            "race.unlocked_uploads(dcore_sim)", "race.locked_uploads(dcore_sim)"
        )
    )
    result = child.runpytest("test_race.py::test_uploads", f"--dcore-replay={trace}")
    result.assert_outcomes(failed=1)
    assert "ReplayDivergence" in result.stdout.str()
    assert "replay diverged at event" in result.stdout.str()


def test_passing_sim_tests_save_nothing_and_the_other_fixtures_work(child: pytest.Pytester) -> None:
    child.makepyfile(test_ok=PASSING)
    result = child.runpytest("--dcore-trace-dir=traces", "--dcore-check-determinism")
    result.assert_outcomes(passed=3)
    assert not Path(child.path, "traces").exists()


def test_check_determinism_fails_a_test_that_depends_on_global_state(
    child: pytest.Pytester,
) -> None:
    child.makepyfile(
        test_nd="""
from examples.sim import race

RUNS = []

def test_uploads_depend_on_global_state(dcore_sim):
    RUNS.append(1)
    race.upload(dcore_sim, len(RUNS))
"""
    )
    result = child.runpytest("--dcore-check-determinism")
    result.assert_outcomes(failed=1)
    assert "--dcore-check-determinism: seed" in result.stdout.str()


def test_the_seed_defaults_to_one_derived_from_the_test_id(child: pytest.Pytester) -> None:
    child.makepyfile(
        test_seed="""
def test_seed(dcore_sim):
    import zlib
    assert dcore_sim.seed == zlib.crc32(b"test_seed.py::test_seed")

import pytest

@pytest.mark.sim(seed=42, workers=3)
def test_marked(dcore_sim):
    assert (dcore_sim.seed, dcore_sim.workers) == (42, 3)
"""
    )
    child.runpytest().assert_outcomes(passed=2)
