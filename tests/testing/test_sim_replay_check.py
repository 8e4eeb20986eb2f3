"""``dcore replay --check`` re-runs what a trace names: a test id saved by the pytest
plugin (run under pytest, fixtures and parameters included) or a scenario given as a
module or a file path; a trace it cannot trust is refused with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcore.cli import main
from dcore_testing.sim.explore import run_scenario
from examples.sim import race

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]  # examples/ lives here

ORDERS = """
import pytest
from examples.sim import race

@pytest.mark.sim(workers=2)
def test_uploads(dcore_sim):
    race.unlocked_uploads(dcore_sim)

@pytest.mark.parametrize("label", ["a b", "c"])
def test_uploads_with_fixtures(dcore_sim, tmp_path, label):
    (tmp_path / "label").write_text(label)
    race.unlocked_uploads(dcore_sim)
"""


def _failing_seed() -> int:
    return next(s for s in range(200) if run_scenario(race.unlocked_uploads, s).failed)


def _dcore(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "dcore.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def saved(pytester: pytest.Pytester) -> dict[str, Path]:
    """A project whose failing simulated tests saved their traces; test id → trace."""
    pytester.syspathinsert(str(ROOT))
    pytester.makeini("[pytest]\n")
    tests = pytester.mkdir("tests")
    (tests / "test_orders.py").write_text(textwrap.dedent(ORDERS))
    result = pytester.runpytest(f"--dcore-seed={_failing_seed()}", "--dcore-trace-dir=traces")
    result.assert_outcomes(failed=3)
    traces = sorted(Path(pytester.path, "traces").glob("*.jsonl"))
    assert len(traces) == 3
    return {json.loads(t.read_text().splitlines()[0])["name"]: t for t in traces}


def test_check_runs_a_trace_the_pytest_plugin_saved(
    pytester: pytest.Pytester, saved: dict[str, Path]
) -> None:
    assert set(saved) == {
        "tests/test_orders.py::test_uploads",
        "tests/test_orders.py::test_uploads_with_fixtures[a b]",
        "tests/test_orders.py::test_uploads_with_fixtures[c]",
    }
    for trace in (
        saved["tests/test_orders.py::test_uploads"],
        saved["tests/test_orders.py::test_uploads_with_fixtures[a b]"],
    ):
        result = _dcore(pytester.path, "replay", "--check", "--no-calls", str(trace))
        assert result.returncode == 0, result.stdout + result.stderr
        assert (
            "replay matches the trace event for event; the test fails again: "
            "InvariantViolation: lost update"
        ) in result.stdout
        assert "Traceback" not in result.stderr


def test_check_of_a_pytest_trace_elsewhere_says_where_to_run_it(
    saved: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = _dcore(
        elsewhere,
        "replay",
        "--check",
        "--no-calls",
        str(saved["tests/test_orders.py::test_uploads"]),
    )
    assert result.returncode == 1
    assert result.stderr == (
        "dcore: the trace was saved by the pytest plugin for the test "
        f"tests/test_orders.py::test_uploads, and there is no tests/test_orders.py in "
        f"{elsewhere}; run the check from the directory pytest ran in (test ids are "
        "relative to it)\n"
    )


def test_check_of_a_pytest_trace_reports_a_changed_path(
    pytester: pytest.Pytester, saved: dict[str, Path]
) -> None:
    test_file = Path(pytester.path, "tests", "test_orders.py")
    test_file.write_text(
        test_file.read_text().replace(
            "race.unlocked_uploads(dcore_sim)", "race.locked_uploads(dcore_sim)"
        )
    )
    result = _dcore(
        pytester.path,
        "replay",
        "--check",
        "--no-calls",
        str(saved["tests/test_orders.py::test_uploads"]),
    )
    assert result.returncode == 1
    assert "replay diverged: replay diverged at event" in result.stdout


@pytest.fixture
def scenario_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A scenario in a plain file (not importable as a module) in the working directory."""
    folder = tmp_path / "sims"
    folder.mkdir()
    path = folder / "lost_update.py"
    path.write_text(
        "from examples.sim import race\n\n\ndef lost(dcore_sim):\n"
        "    race.unlocked_uploads(dcore_sim)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    sys.modules.pop("sims.lost_update", None)


def test_a_scenario_given_as_a_file_path_is_explored_and_checked(
    scenario_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "explore",
                "sims/lost_update.py:lost",
                "--seeds",
                "30",
                "--max-failures",
                "1",
                "--trace-dir",
                "traces",
            ]
        )
        == 1
    )
    trace = next(Path("traces").glob("*.jsonl"))
    assert '"name":"sims/lost_update.py:lost"' in trace.read_text().splitlines()[0]
    assert sys.modules["sims.lost_update"].__file__ == str(scenario_file)
    capsys.readouterr()
    assert main(["replay", "--check", "--no-calls", str(trace)]) == 0
    assert (
        "replay matches the trace event for event; the scenario fails again: InvariantViolation"
    ) in capsys.readouterr().out


def test_a_missing_scenario_file_is_named(scenario_file: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explore", "sims/nope.py:lost", "--seeds", "1"])
    assert str(info.value.code).startswith(
        "dcore: cannot import 'sims/nope.py': no file 'sims/nope.py'"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda text: text[: len(text) // 2], "the trace is cut off in the middle of this line"),
        (lambda text: "\n".join(text.splitlines()[:6]) + "\n", "the trace is truncated"),
    ],
)
def test_replay_refuses_a_truncated_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, message: str
) -> None:
    text = run_scenario(race.unlocked_uploads, seed=_failing_seed()).trace.to_jsonl()
    path = tmp_path / "run.jsonl"
    path.write_text(content(text))  # type: ignore[operator]
    assert main(["replay", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing replayed
    assert captured.err.startswith(f"dcore: {path}")
    assert message in captured.err


def test_replay_of_a_binary_file_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "core.dump"
    path.write_bytes(bytes(range(256)))
    assert main(["replay", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"dcore: {path}:2: byte 0x80 is not UTF-8 text; a trace is UTF-8 JSON lines (is "
        "this a binary file?)\n"
    )


def test_check_of_a_trace_that_names_nothing_says_which_traces_can_be_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = run_scenario(race.unlocked_uploads, seed=0).trace
    trace.header["name"] = None
    path = trace.save(tmp_path / "anonymous.jsonl")
    assert main(["replay", "--check", "--no-calls", str(path)]) == 1
    assert capsys.readouterr().err == (
        "dcore: the trace names no scenario (MODULE:FUNCTION) or test to re-run; only traces "
        "written by `dcore explore` or the pytest plugin can be checked\n"
    )
