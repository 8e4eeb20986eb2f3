"""DLQ round trip against real Redis: fail → DEAD → ``dcore dlq list`` → fix the plugin →
``dcore dlq replay`` → SUCCEEDED, the entry removed only after success."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
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
    reset_default_environment,
    use_environment,
)
from dcore.cli import main


class UploadCtx(PipelineContext):
    name: str


@core_function
def finish(ctx: UploadCtx) -> str:
    return f"stored {ctx.name}"


@pytest.fixture
def redis_settings(
    dcore_redis_client: Any, dcore_redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    values = {
        "DCORE_EVENT_BUS": "redis",
        "DCORE_JOB_STORE": "redis",
        "DCORE_REDIS_URL": dcore_redis_url,
        "DCORE_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}",
        "DCORE_STORAGE_ROOT": str(tmp_path),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_default_environment()
    yield values
    reset_default_environment()


def register_upload(registry: PluginRegistry, *, broken: bool, seen: list[int]) -> None:
    class Upload(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            env = Environment.from_env()
            seen.append(env.events.length(env.settings.dlq_topic))
            env.close()
            if broken:
                raise PermissionError(f"bucket refused {context.name}")
            return next_fn(context)

    registry.register("upload", Upload, replace=True)


def test_a_dead_job_is_replayed_from_the_redis_dlq_after_the_fix(
    redis_settings: dict[str, str],
    dcore_registry: PluginRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[int] = []
    register_upload(dcore_registry, broken=True, seen=seen)
    ctx = UploadCtx(name="a.txt")
    with Environment.from_env() as web, use_environment(web):
        pipeline = ctx.create_pipeline(finish)
        pipeline.chain(Dispatch("inline", raise_errors=False)).chain(Execute("upload"))
        pipeline.run()
        assert web.jobs.get(ctx.job_id).state is JobState.DEAD

    # the CLI builds its own environment from DCORE_* (new connections to the same Redis)
    capsys.readouterr()
    assert main(["dlq", "list"]) == 0
    listing = capsys.readouterr().out
    assert ctx.job_id in listing
    assert "PermissionError: bucket refused a.txt" in listing
    ops = Environment.from_env()
    (first,) = ops.events.entries(ops.settings.dlq_topic)

    # replayed while still broken: back on the DLQ once, with the new attempt's error
    assert main(["dlq", "replay", first.id]) == 1
    assert "failed again" in capsys.readouterr().err
    (second,) = ops.events.entries(ops.settings.dlq_topic)
    assert second.id != first.id
    assert second.payload["job_id"] == ctx.job_id
    assert second.payload["attempt"] == 2
    assert ops.jobs.get(ctx.job_id).state is JobState.DEAD

    register_upload(dcore_registry, broken=False, seen=seen)
    assert main(["dlq", "replay", second.id]) == 0
    assert "SUCCEEDED on attempt 3" in capsys.readouterr().out
    assert seen[-1] == 1  # the entry was still there while the fixed job ran
    assert ops.events.entries(ops.settings.dlq_topic) == []
    record = ops.jobs.get(ctx.job_id)
    assert record.state is JobState.SUCCEEDED
    assert record.result == "stored a.txt"

    assert main(["jobs", "show", ctx.job_id]) == 0
    shown = capsys.readouterr().out
    states = [line.split()[1] for line in shown.splitlines() if line.startswith("  20")]
    assert states == [
        "PENDING",
        "RUNNING",
        "FAILED",
        "DEAD",
        "PENDING",
        "RUNNING",
        "FAILED",
        "DEAD",
        "PENDING",
        "RUNNING",
        "SUCCEEDED",
    ]
    ops.close()


def test_the_dcore_command_lists_the_redis_dlq_from_its_own_process(
    redis_settings: dict[str, str], dcore_registry: PluginRegistry
) -> None:
    seen: list[int] = []
    register_upload(dcore_registry, broken=True, seen=seen)
    ctx = UploadCtx(name="b.txt")
    with Environment.from_env() as web, use_environment(web):
        pipeline = ctx.create_pipeline(finish)
        pipeline.chain(Dispatch("inline", raise_errors=False)).chain(Execute("upload"))
        pipeline.run()
    result = subprocess.run(
        [sys.executable, "-m", "dcore.cli", "dlq", "list"],
        env={**os.environ, **redis_settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ctx.job_id in result.stdout
    assert "1 entry in dcore.dlq" in result.stdout
