"""The fencing guide (docs/how-to/fencing.md), run by the suite so it stays true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dcore import Environment, Fence
from examples.fencing.reports import Report, late_holder, report_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_each_run_publishes_with_a_newer_fence(dcore_manual_env: Environment) -> None:
    assert report_pipeline(Report(name="daily", body=b"v1")).run() == "reports/daily.csv"
    assert report_pipeline(Report(name="daily", body=b"v2")).run() == "reports/daily.csv"
    assert dcore_manual_env.storage.get("reports/daily.csv") == b"v2"
    assert dcore_manual_env.storage.fence_of("reports/daily.csv") == Fence("report:daily", 2)


def test_a_holder_paused_past_its_ttl_is_refused(dcore_manual_env: Environment) -> None:
    refusal = late_holder(dcore_manual_env)
    assert refusal.startswith(
        "write to 'reports/daily.csv' with fence 1 of lock 'report:daily' refused: fence 2"
    )
    assert dcore_manual_env.storage.get("reports/daily.csv") == b"fresh"


def test_the_module_runs_as_a_demo() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.fencing.reports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == [
        "reports/daily.csv",
        "fence 1 of lock 'report:daily'",
        "write to 'reports/daily.csv' with fence 2 of lock 'report:daily' refused: fence 3 "
        "of that lock already wrote it: this writer's lock expired and another holder took "
        "it. Do not retry the write; the job may run again under a new acquisition of the "
        "lock",
    ]
