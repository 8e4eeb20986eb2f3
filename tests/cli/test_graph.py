"""``dcore graph MODULE:OBJECT [--mermaid]`` prints a pipeline's stages and boundary."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcore import Environment
from dcore.cli import main

PIPELINE_MODULE = """
from dcore import Dispatch, Execute, PipelineContext


class GraphContext(PipelineContext):
    file_path: str = "a.txt"
    file_content: bytes = b""


def finish(ctx):
    return ctx.job_id


pipeline = GraphContext().create_pipeline(finish)
pipeline.chain(Execute, plugin="logging").chain(Dispatch("schedule_job"))
pipeline.chain(Execute("storage_write", prefix="uploads/"))


def make_pipeline():
    return GraphContext().create_pipeline(finish).chain(Execute("logging"))


not_a_pipeline = 42
"""


@pytest.fixture
def module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dcore_env: Environment
) -> Iterator[str]:
    """A uniquely named module in the working directory defining pipelines."""
    name = f"graph_target_{uuid.uuid4().hex[:8]}"
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{name}.py").write_text(textwrap.dedent(PIPELINE_MODULE))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI adds the cwd, as python -m
    yield name
    sys.modules.pop(name, None)


def test_graph_prints_text_with_async_boundary(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", f"{module}:pipeline"]) == 0
    assert capsys.readouterr().out == (
        "[sync] logging ⇒ dispatch(schedule_job) ┆ async ┆ [background] storage_write → core\n"
    )


def test_graph_mermaid_prints_flowchart(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", f"{module}:pipeline", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR\n")
    assert '{{"dispatch(schedule_job)"}}' in out
    assert "-. async .->" in out


def test_graph_calls_a_factory_that_returns_a_pipeline(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", f"{module}:make_pipeline"]) == 0
    assert capsys.readouterr().out == "[sync] logging → core\n"


def test_graph_of_something_else_fails_naming_it(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", f"{module}:not_a_pipeline"]) == 1
    assert f"{module}:not_a_pipeline is an int, not a Pipeline" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:OBJECT or FILE.py:OBJECT, got 'no_colon'"),
        ("no_such_module_xyz:p", "cannot import 'no_such_module_xyz'"),
    ],
)
def test_graph_bad_target_exits_with_clear_message(module: str, target: str, message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["graph", target])
    assert message in str(info.value.code)


def test_graph_missing_attribute_names_it(module: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["graph", f"{module}:nope"])
    assert f"{module!r} has no attribute 'nope'" in str(info.value.code)
