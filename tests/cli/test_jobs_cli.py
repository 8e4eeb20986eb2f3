"""``dcore jobs show | list`` on the embedded environment."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import (
    Dispatch,
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PluginRegistry,
    core_function,
)
from dcore.cli import main


class JobsCtx(PipelineContext):
    pass


@core_function
def jobs_core(ctx: JobsCtx) -> str:
    return "ok"


@pytest.fixture
def dead_job(dcore_registry: PluginRegistry) -> str:
    class Broken(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            raise RuntimeError("always")

    dcore_registry.register("broken", Broken)
    ctx = JobsCtx()
    pipeline = ctx.create_pipeline(jobs_core)
    pipeline.chain(Dispatch("inline", raise_errors=False)).chain(Execute("broken")).run()
    return ctx.job_id


def test_jobs_show_prints_state_error_and_timestamped_history(
    dcore_env: Environment, dead_job: str, capsys: Any
) -> None:
    assert main(["jobs", "show", dead_job]) == 0
    out = capsys.readouterr().out
    assert f"job       {dead_job}" in out
    assert "state     DEAD" in out
    assert "error     RuntimeError: always" in out
    history = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [h[1] for h in history] == ["PENDING", "RUNNING", "FAILED", "DEAD"]
    assert all(h[0].endswith("+00:00") for h in history)


def test_jobs_show_of_an_unknown_job_names_it(dcore_env: Environment, capsys: Any) -> None:
    assert main(["jobs", "show", "nope"]) == 1
    assert "'nope'" in capsys.readouterr().err


def test_jobs_list_filters_by_state_and_names_a_bad_state(
    dcore_env: Environment, dead_job: str, capsys: Any
) -> None:
    job_id = dead_job
    assert main(["jobs", "list", "--state", "dead"]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "list", "--state", "zombie"]) == 1
    assert "unknown state 'ZOMBIE'" in capsys.readouterr().err
