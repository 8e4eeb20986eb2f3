"""The layering contracts in .importlinter hold for the code (``make check`` runs
lint-imports too), and they do fail on a wrong-way import: here, planted in a copy of the
package layout in a temporary directory."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_code_keeps_every_contract() -> None:
    result = lint(ROOT / ".importlinter", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_planted_import_of_the_test_kit_breaks_the_contract(tmp_path: Path) -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    planted = configparser.ConfigParser()
    planted["importlinter"] = dict(parser["importlinter"])
    section = "importlinter:contract:library-below-test-kit"
    planted[section] = dict(parser[section])
    config = tmp_path / ".importlinter"
    with config.open("w") as out:
        planted.write(out)
    for package in ("dcore", "dcore_testing"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "dcore" / "cli.py").write_text("from dcore_testing import sim\n")
    (tmp_path / "dcore_testing" / "sim.py").write_text("")

    result = lint(config, tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "dcore.cli -> dcore_testing.sim" in result.stdout
