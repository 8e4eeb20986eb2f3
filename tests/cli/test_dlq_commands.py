"""``dcore dlq`` on the embedded environment: output, errors that name
the culprit, purge confirmation, replay of everything."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from dcore import (
    Dispatch,
    Environment,
    Execute,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
    core_function,
)
from dcore.cli import main


class CliCtx(PipelineContext):
    name: str = "x"


@core_function
def cli_core(ctx: CliCtx) -> str:
    return "ok"


@pytest.fixture
def broken(dcore_registry: PluginRegistry) -> dict[str, bool]:
    state = {"broken": True}

    class Step(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            if state["broken"]:
                raise RuntimeError(f"step broke on {context.name}")
            return next_fn(context)

    dcore_registry.register("step", Step)
    return state


def dead_job(name: str = "x") -> str:
    ctx = CliCtx(name=name)
    pipeline = ctx.create_pipeline(cli_core)
    pipeline.chain(Dispatch("inline", raise_errors=False)).chain(Execute("step")).run()
    return ctx.job_id


def entry_ids(env: Environment) -> list[str]:
    return [e.id for e in env.events.entries(env.settings.dlq_topic)]


def test_list_of_an_empty_dlq_says_so(dcore_env: Environment, capsys: Any) -> None:
    assert main(["dlq", "list"]) == 0
    assert capsys.readouterr().out == "the dead-letter queue (dcore.dlq) is empty\n"


def test_list_json_prints_one_entry_per_line(
    dcore_env: Environment, broken: dict[str, bool], capsys: Any
) -> None:
    job_id = dead_job()
    assert main(["dlq", "list", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["job_id"] == job_id


def test_show_prints_error_history_and_the_parsed_message(
    dcore_env: Environment, broken: dict[str, bool], capsys: Any
) -> None:
    job_id = dead_job()
    (entry_id,) = entry_ids(dcore_env)
    assert main(["dlq", "show", entry_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == entry_id
    assert shown["error"] == "RuntimeError: step broke on x"
    assert shown["message"]["job_id"] == job_id
    assert [h["state"] for h in shown["history"]] == ["PENDING", "RUNNING", "FAILED"]
    assert shown["history"][0]["at_utc"].endswith("+00:00")


@pytest.mark.parametrize("entry_id", ["1-0", "not-an-id"])
def test_show_of_an_unknown_entry_names_it(
    dcore_env: Environment, capsys: Any, entry_id: str
) -> None:
    assert main(["dlq", "show", entry_id]) == 1
    assert entry_id in capsys.readouterr().err


def test_replay_all_runs_every_entry_and_empties_the_queue(
    dcore_env: Environment, broken: dict[str, bool], capsys: Any
) -> None:
    jobs = [dead_job("a"), dead_job("b")]
    broken["broken"] = False
    assert main(["dlq", "replay", "--all"]) == 0
    assert "replayed 2 of 2" in capsys.readouterr().out
    assert entry_ids(dcore_env) == []
    assert [dcore_env.jobs.get(j).state for j in jobs] == [JobState.SUCCEEDED] * 2


def test_replay_of_an_entry_without_a_message_names_it_and_keeps_it(
    dcore_env: Environment, broken: dict[str, bool], capsys: Any
) -> None:
    pipeline = CliCtx().create_pipeline(cli_core)
    pipeline.chain(Execute("dead_letter", reraise=False)).chain(Execute("step")).run()
    (entry_id,) = entry_ids(dcore_env)
    assert main(["dlq", "replay", entry_id]) == 1
    assert f"entry {entry_id} (job " in capsys.readouterr().err
    assert entry_ids(dcore_env) == [entry_id]


def test_replay_of_a_stale_entry_for_a_job_that_succeeded_just_removes_it(
    dcore_env: Environment, broken: dict[str, bool], capsys: Any
) -> None:
    dead_job()
    (entry,) = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    broken["broken"] = False
    assert main(["dlq", "replay", entry.id]) == 0
    # as if a replayer died between the job's success and the entry's removal
    stale = dcore_env.events.append(dcore_env.settings.dlq_topic, entry.payload)
    assert main(["dlq", "replay", stale]) == 0
    assert "already SUCCEEDED; stale entry removed" in capsys.readouterr().out
    assert entry_ids(dcore_env) == []


def test_a_failed_replay_keeps_its_entry_when_no_fresh_one_was_written(
    dcore_env: Environment,
    broken: dict[str, bool],
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead_job()
    (entry,) = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    # an older entry of the same job (a replayer died after a failed attempt)
    duplicate = dcore_env.events.append(dcore_env.settings.dlq_topic, entry.payload)

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise OSError("dlq unavailable")

    monkeypatch.setattr(dcore_env.events, "append", refuse)
    assert main(["dlq", "replay", duplicate]) == 1
    err = capsys.readouterr().err
    assert "failed (OSError: dlq unavailable)" in err
    assert "back on the dead-letter queue" not in err  # the older entry is not its failure
    monkeypatch.undo()
    assert entry_ids(dcore_env) == [entry.id, duplicate]  # nothing was dropped


def test_purge_without_yes_refuses_when_it_cannot_ask(
    dcore_env: Environment,
    broken: dict[str, bool],
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead_job()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["dlq", "purge"]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert len(entry_ids(dcore_env)) == 1
    assert main(["dlq", "purge", "--yes"]) == 0
    assert entry_ids(dcore_env) == []
