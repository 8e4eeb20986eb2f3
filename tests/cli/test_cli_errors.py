"""Every way a ``dcore`` command can go wrong ends in one ``dcore: ...`` line and a
non-zero exit, never a traceback: bad targets for ``graph``, bad arguments, backend and
settings errors, an unexpected exception, and a reader that closes the pipe early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcore import Dispatch, Environment, Execute, NextFn, PipelineContext, PluginRegistry
from dcore.cli import main

TARGETS = """
def needs_arguments(a, b):
    return a

def raises():
    raise RuntimeError("factory broke")

def returns_a_number():
    return 3

def scenario_without_sim():
    pass
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A uniquely named module in the working directory (plus broken siblings)."""
    name = f"cli_errors_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TARGETS))
    (tmp_path / f"{name}_raises.py").write_text("raise RuntimeError('at import')\n")
    (tmp_path / f"{name}_syntax.py").write_text("def broken(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    for suffix in ("", "_raises", "_syntax"):
        sys.modules.pop(name + suffix, None)


def _cli(
    *args: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcore.cli", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


# -- graph ------------------------------------------------------------------------------
def test_graph_of_a_function_that_needs_arguments_names_its_signature(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", f"{module}:needs_arguments"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"dcore: {module}:needs_arguments is a function that needs arguments (its "
        "signature is needs_arguments(a, b)); dcore graph takes a Pipeline or a "
        "factory of one that takes none\n"
    )


def test_graph_of_a_factory_that_raises_names_the_error_and_where(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", f"{module}:raises"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"dcore: calling {module}:raises() to build the pipeline raised "
        "RuntimeError: factory broke (at "
    )
    assert f"{module}.py:6)" in err
    assert "Traceback" not in err


def test_graph_of_a_factory_returning_something_else_names_the_type(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", f"{module}:returns_a_number"]) == 1
    assert capsys.readouterr().err == (
        f"dcore: {module}:returns_a_number() returned an int, not a Pipeline\n"
    )


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("_raises", "raised RuntimeError: at import (at "),
        ("_syntax", "raised SyntaxError: "),
    ],
)
def test_graph_of_a_module_that_fails_to_import_says_why(
    module: str, suffix: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["graph", f"{module}{suffix}:x"])
    text = str(info.value.code)
    assert text.startswith(f"dcore: importing '{module}{suffix}' {message}")
    assert f"{module}{suffix}.py" in text


def test_graph_of_a_relative_module_name_is_refused(module: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["graph", "..x:p"])
    assert str(info.value.code) == (
        "dcore: '..x' in '..x:p' is not a module name; expected "
        "a dotted name such as 'app.pipelines' or a .py file"
    )


# -- arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["jobs", "list", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (
            ["jobs", "resend-stale", "--older-than", "nan"],
            "argument --older-than: must be a finite number >= 0, got 'nan'",
        ),
        (["explore", "m:s", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (
            ["explore", "m:s", "--seeds", "x"],
            "argument --seeds: expected a whole number >= 1, got 'x'",
        ),
    ],
)
def test_a_bad_argument_is_a_usage_error_naming_it(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_explore_of_a_function_that_takes_no_simulation_is_refused_before_running(
    module: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        main(
            [
                "explore",
                f"{module}:scenario_without_sim",
                "--seeds",
                "1",
                "--trace-dir",
                str(tmp_path / "traces"),
            ]
        )
        == 1
    )
    assert capsys.readouterr().err == (
        f"dcore: {module}:scenario_without_sim cannot be called with the simulation (its "
        "signature is scenario_without_sim()); a scenario is a function taking one "
        "argument, the SimEnvironment\n"
    )
    assert not (tmp_path / "traces").exists()


# -- unexpected errors ------------------------------------------------------------------------
def test_an_unexpected_error_is_one_line_naming_where_it_was_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dcore.cli.jobs as jobs_cli

    def broken(args: Any) -> int:
        raise RuntimeError("something odd")

    monkeypatch.setattr(jobs_cli, "run_list", broken)
    assert main(["jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dcore: RuntimeError: something odd (at ")
    assert "test_cli_errors.py:" in err
    assert err.endswith("; `dcore --traceback ...` shows the full traceback\n")
    with pytest.raises(RuntimeError, match="something odd"):
        main(["--traceback", "jobs", "list"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DCORE_EVENT_BUS": "bogus"},
            "dcore: DCORE_EVENT_BUS='bogus' is not valid: no EventBusInterface plugin named "
            "'bogus'; registered: memory, redis.\n",
        ),
        (
            {"DCORE_THREAD_WORKERS": "abc"},
            "dcore: DCORE_THREAD_WORKERS='abc' is not valid: expected an integer >= 1\n",
        ),
        (
            {"DCORE_EVENT_BUS": "redis", "DCORE_REDIS_URL": "redis://127.0.0.1:1/0"},
            "dcore: Redis at redis://127.0.0.1:1/0?socket_timeout=10 is unreachable",
        ),
    ],
)
def test_backend_and_settings_errors_are_one_line(env: dict[str, str], message: str) -> None:
    result = _cli("dlq", "list", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1


# -- a reader that stops early ------------------------------------------------------------------
class CliCtx(PipelineContext):
    name: str = "x"


def cli_core(ctx: CliCtx) -> str:
    return "ok"


@pytest.fixture
def dead_entry(dcore_env: Environment, dcore_registry: PluginRegistry) -> str:
    class Broken(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            raise RuntimeError("broken " + "x" * 5000)  # more than a pipe buffer of JSON

    dcore_registry.register("broken_for_pipe", Broken)
    pipeline = CliCtx().create_pipeline(cli_core)
    pipeline.chain(Dispatch("inline", raise_errors=False)).chain(Execute("broken_for_pipe"))
    pipeline.run()
    return str(dcore_env.events.entries(dcore_env.settings.dlq_topic)[0].id)


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader has already gone (``| head`` after it quit)."""
    read, write = os.pipe()
    os.close(read)
    yield write
    os.close(write)


def test_dlq_show_into_a_closed_pipe_exits_1_quietly(
    dead_entry: str,
    closed_pipe: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with os.fdopen(os.dup(closed_pipe), "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["dlq", "show", dead_entry]) == 1
        monkeypatch.undo()
    err = capsys.readouterr().err  # only the note that the bus is process-local
    assert err.startswith("dcore: note: the event bus is in memory")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["replay", "TRACE"], 1),
        (["--version"], 0),  # argparse drops what it cannot print and exits as usual
    ],
)
def test_a_closed_stdout_ends_the_process_without_a_traceback(
    argv: list[str], code: int, closed_pipe: int, tmp_path: Path
) -> None:
    trace = tmp_path / "big.jsonl"
    events = [
        {"t": 0.0, "ev": "call", "lane": "w1", "op": "storage.get", "key": f"k{i}"}
        for i in range(2000)
    ]
    trace.write_text("\n".join(json.dumps(e) for e in [{"dcore_trace": 1}, *events]) + "\n")
    result = _cli(*[str(trace) if a == "TRACE" else a for a in argv], stdout=closed_pipe)
    assert result.stderr == ""
    assert result.returncode == code
