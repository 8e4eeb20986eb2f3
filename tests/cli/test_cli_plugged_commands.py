"""Other packages add ``dcore`` subcommands through the ``dcore.commands`` entry-point
group (``dcore_testing`` adds ``replay`` and ``explore``); one that fails to load is left
out with a warning, and the built-in commands still work."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

import dcore.cli
from dcore.cli import COMMANDS_GROUP, SUBCOMMAND_MODULES, command_modules, main


def test_the_simulator_commands_come_from_the_entry_point_group() -> None:
    plugged = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP)}
    assert plugged == {"explore": "dcore_testing.cli.explore", "replay": "dcore_testing.cli.replay"}
    assert command_modules() == [
        *SUBCOMMAND_MODULES,
        "dcore_testing.cli.explore",
        "dcore_testing.cli.replay",
    ]
    assert not [m for m in SUBCOMMAND_MODULES if not m.startswith("dcore.cli.")]


def test_a_plugged_command_that_fails_to_load_is_left_out_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken_command.py").write_text("raise RuntimeError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        dcore.cli, "command_modules", lambda: [*SUBCOMMAND_MODULES, "broken_command"]
    )
    with pytest.raises(SystemExit):
        main(["--version"])
    err = capsys.readouterr().err
    assert (
        "dcore: warning: the command module broken_command (dcore.commands entry point) "
        "failed to load and is left out: RuntimeError: half installed"
    ) in err
    assert main(["graph", "examples.upload_app.main:example_pipeline"]) == 0
    sys.modules.pop("broken_command", None)


def test_a_plugged_command_module_that_is_not_installed_is_skipped_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        dcore.cli, "command_modules", lambda: [*SUBCOMMAND_MODULES, "no_such_package.command"]
    )
    parser = dcore.cli.build_parser()
    assert "no_such_package" not in parser.format_help()
    assert capsys.readouterr().err == ""
