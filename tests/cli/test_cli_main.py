"""The ``dcore`` command itself: ``--version``, and help (exit 2) when a command or a
subcommand is missing."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import dcore
from dcore.cli import main


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"dcore {dcore.__version__}\n"
    assert dcore.__version__ == version("distributed-core")


def test_bare_dcore_prints_the_full_help_on_stderr_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: dcore")
    for command in ("graph", "dlq", "jobs", "replay", "explore", "--version"):
        assert command in captured.err


@pytest.mark.parametrize(
    ("group", "actions"),
    [
        ("dlq", ("list", "show", "replay", "purge")),
        ("jobs", ("show", "list", "resend-stale")),
    ],
)
def test_a_command_group_without_its_action_prints_its_help_and_exits_2(
    group: str, actions: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([group]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: dcore {group}")
    for action in actions:
        assert action in err


def test_the_module_entry_point_exits_with_the_code_main_returns() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dcore.cli"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: dcore")
    assert result.stdout == ""
