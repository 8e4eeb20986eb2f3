"""``dcore dlq`` and ``dcore jobs`` on the in-memory (process-local) event bus or job
store say so, and name the variables that point them at the workers' store; on Redis they
say nothing extra."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcore import Environment, reset_default_environment, use_environment
from dcore.backends.memory import MemoryEventBus
from dcore.cli import main

BUS_NOTE = (
    "dcore: note: the event bus is in memory, local to this process: it starts "
    "empty in every process, so it cannot show what your workers recorded. Point "
    "the command at their store: DCORE_EVENT_BUS=redis "
    "DCORE_REDIS_URL=redis://HOST:6379/0\n"
)
STORE_NOTE = (
    "dcore: note: the job store is in memory, local to this process: it starts "
    "empty in every process, so it cannot show what your workers recorded. Point "
    "the command at their store: DCORE_JOB_STORE=redis "
    "DCORE_REDIS_URL=redis://HOST:6379/0\n"
)


@pytest.mark.parametrize(
    ("argv", "out", "err"),
    [
        (["dlq", "list"], "the dead-letter queue (dcore.dlq) is empty\n", BUS_NOTE),
        (["dlq", "purge", "--yes"], "the dead-letter queue (dcore.dlq) is empty\n", BUS_NOTE),
        (["jobs", "list"], "no jobs\n", STORE_NOTE),
        (
            ["jobs", "resend-stale", "--older-than", "60", "--dry-run"],
            "would re-send 0 lost job(s)\n",
            STORE_NOTE,
        ),
    ],
)
def test_a_process_local_store_is_named_with_the_fix(
    dcore_env: Environment, argv: list[str], out: str, err: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    assert capsys.readouterr() == (out, err)


def test_dlq_replay_names_both_local_stores(
    dcore_env: Environment, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "replay", "--all"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "dcore: note: the event bus and the job store are in memory, local to this process"
    )
    assert "DCORE_EVENT_BUS=redis DCORE_JOB_STORE=redis DCORE_REDIS_URL=" in err


def test_the_note_follows_the_service_not_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an in-memory bus handed to the environment in code is process-local too
    with Environment(events=MemoryEventBus()) as env, use_environment(env):
        assert main(["dlq", "list"]) == 0
    assert capsys.readouterr().err == BUS_NOTE


@pytest.fixture
def on_redis(
    dcore_redis_client: Any, dcore_redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    for key, value in {
        "DCORE_EVENT_BUS": "redis",
        "DCORE_JOB_STORE": "redis",
        "DCORE_REDIS_URL": dcore_redis_url,
        "DCORE_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}",
        "DCORE_STORAGE_ROOT": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    reset_default_environment()
    yield
    reset_default_environment()


@pytest.mark.parametrize("argv", [["dlq", "list"], ["jobs", "list"], ["dlq", "replay", "--all"]])
def test_shared_redis_stores_get_no_note(
    on_redis: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
