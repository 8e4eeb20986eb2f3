"""The layering contracts in .importlinter hold for the code (``make check`` runs
lint-imports too), and each fails on a wrong-way import planted in a copy of the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / ".importlinter"),
                           "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def test_the_code_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


PLANTED = {
    "the library imports the test kit": (
        "dcore/cli/__init__.py",
        "import dcore_testing.sim",
        "dcore never imports dcore_testing",
    ),
    "the engine imports an entry point above it": (
        "dcore/_core/pipeline.py",
        "import dcore.celery",
        "dcore's layers",
    ),
    "a service interface imports the engine": (
        "dcore/services/jobs.py",
        "import dcore._core.lifecycle",
        "dcore's layers",
    ),
    "the test kit imports a private module": (
        "dcore_testing/sim/dispatcher.py",
        "import dcore._core.lifecycle",
        "dcore_testing uses dcore's public modules",
    ),
    "two engine modules import each other": (
        "dcore/_core/ids.py",
        "import dcore._core.context",
        "no import cycles in a package",
    ),
}


@pytest.mark.parametrize("case", PLANTED)
def test_a_planted_wrong_way_import_breaks_its_contract(case: str, tmp_path: Path) -> None:
    module, line, contract = PLANTED[case]
    for package in ("dcore", "dcore_testing"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    assert lint(tmp_path).returncode == 0  # the copy keeps every contract
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{line}\n")

    result = lint(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout.splitlines(), result.stdout
