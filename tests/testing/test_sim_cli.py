"""``dcore replay`` prints a timeline (and an HTML page); ``dcore explore`` runs seeds,
shows progress on stderr and writes a trace per failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcore.cli import main
from dcore_testing.sim import Crash, FaultPlan
from dcore_testing.sim.explore import run_scenario
from examples.sim import payments


@pytest.fixture
def crash_trace(tmp_path: Path) -> Path:
    outcome = run_scenario(
        payments.crash_after_charge, seed=3, faults=FaultPlan(Crash(stage="send_receipt", job=1))
    )
    return outcome.trace.save(tmp_path / "crash.jsonl")


def test_replay_prints_lanes_per_worker_with_the_crash_marked(
    crash_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(crash_trace), "--no-calls"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.strip().startswith("step"))
    assert header.split(" │ ")[:4] == ["step", "  time (s)", "main".ljust(34), "w1"]
    assert "‼ CRASH j1 worker died" in out
    assert "« redeliver j1 in 5.0s" in out
    assert "error: InvariantViolation: exactly-once broken" in out
    assert "storage.put" not in out  # --no-calls


def test_replay_writes_a_self_contained_html_timeline(
    crash_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "timeline.html"
    assert main(["replay", str(crash_trace), "--html", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert 'class="ev fault"' in page
    assert "CRASH" in page
    assert "http://" not in page
    assert "https://" not in page
    assert f"HTML timeline written to {out}" in capsys.readouterr().out


def test_replay_check_reruns_the_named_scenario(
    crash_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(crash_trace), "--check"]) == 0
    assert (
        "replay matches the trace event for event; the scenario fails again"
        in capsys.readouterr().out
    )


def test_replay_of_a_missing_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl")]) == 1
    assert "no trace file at" in capsys.readouterr().err


def test_explore_reports_failing_seeds_and_saves_their_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "explore",
            "examples.sim.race:unlocked_uploads",
            "--seeds",
            "30",
            "--trace-dir",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "30/30 seeds" in captured.err  # the progress bar
    assert "failing seed(s)" in captured.out
    saved = sorted(tmp_path.glob("*.jsonl"))
    assert saved
    assert all(f"dcore replay {p}" in captured.out for p in saved)


def test_explore_of_a_passing_scenario_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "explore",
            "examples.sim.race:locked_uploads",
            "--seeds",
            "20",
            "--trace-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "20 seeds, no failure" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_missing_test_dependencies_are_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], crash_trace: Path
) -> None:
    import dcore_testing.cli.replay as replay_cli

    monkeypatch.setattr(
        replay_cli,
        "testing_missing",
        lambda: "the simulator needs the testing extra (greenlet is not installed)",
    )
    assert main(["replay", str(crash_trace)]) == 1
    assert "greenlet is not installed" in capsys.readouterr().err


def test_the_dcore_package_does_not_import_the_simulator() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dcore, dcore.cli; dcore.cli.build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dcore_testing', "
        "'greenlet', 'hypothesis'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    # building the parser imports the plugged-in command modules, not the simulator
    assert result.stdout.strip() == "['dcore_testing']"
