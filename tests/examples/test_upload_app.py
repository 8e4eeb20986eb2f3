"""The seed's upload endpoint, end to end on embedded defaults (in-process ASGI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dcore import Environment
from dcore._core.pipeline import Stage
from examples.upload_app.main import app


class Timeline:
    """One ordered list of what happened: stages entering/exiting and the response."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def stage_enter(self, stage: Stage, context: Any) -> None:
        self.events.append(f"enter:{stage.label}")

    def stage_exit(self, stage: Stage, context: Any, error: BaseException | None) -> None:
        self.events.append(f"exit:{stage.label}" + ("!" if error else ""))

    def asgi(self, inner: Any) -> Any:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            async def recording_send(message: dict[str, Any]) -> None:
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    self.events.append("response-sent")

            await inner(scope, receive, recording_send)

        return wrapped


@pytest.fixture
def timeline(dcore_env: Environment) -> Timeline:
    line = Timeline()
    dcore_env.observers.append(line)
    return line


@pytest.fixture
def client(timeline: Timeline) -> TestClient:
    return TestClient(timeline.asgi(app))


def test_upload_returns_job_id_then_stores_file_in_background(
    client: TestClient, timeline: Timeline, dcore_env: Environment
) -> None:
    response = client.post("/upload", files={"file": ("report.csv", b"a,b\n1,2\n")})

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "scheduled"
    job_id = body["job_id"]
    assert len(job_id) == 32
    # the background stages ran after the response was sent, in chain order
    assert timeline.events == [
        "response-sent",
        "enter:storage_write",
        "enter:logging",
        "exit:logging",
        "exit:storage_write",
    ]
    stored = Path(dcore_env.settings.storage_root) / "uploads" / "report.csv"
    assert stored.read_bytes() == b"a,b\n1,2\n"
    record = dcore_env.jobs.get(job_id)
    assert record.state == "SUCCEEDED"
    assert [t.state for t in record.history] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert record.result == {"stored_path": "uploads/report.csv", "ok": True}


# --8<-- [start:upload_test]
def test_job_status_endpoint_reports_final_state(client: TestClient) -> None:
    job_id = client.post("/upload", files={"file": ("a.txt", b"x")}).json()["job_id"]

    status = client.get(f"/jobs/{job_id}").json()

    assert status["state"] == "SUCCEEDED"
    assert status["attempts"] == 1
    assert client.get("/jobs/nope").status_code == 404


# --8<-- [end:upload_test]


@pytest.mark.parametrize("filename", ["../../etc/passwd", "../escape.txt", "a/../../b.txt"])
def test_traversal_filename_stores_nothing_outside_root(
    client: TestClient, dcore_env: Environment, tmp_path: Path, filename: str
) -> None:
    root = Path(dcore_env.settings.storage_root)
    before = set(tmp_path.rglob("*"))

    response = client.post("/upload", files={"file": (filename, b"pwned")})

    assert response.status_code == 200
    job_id = response.json()["job_id"]
    record = dcore_env.jobs.get(job_id)
    # the key was rejected: nothing written anywhere, the job is dead with the reason
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert not written
    assert not [p for p in root.rglob("*") if p.is_file()]
    assert record.state == "DEAD"
    assert "InvalidKeyError" in (record.error or "")
    entries = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    assert [e.payload["job_id"] for e in entries] == [job_id]


def test_v2_endpoint_uses_module_level_core(client: TestClient, dcore_env: Environment) -> None:
    job_id = client.post("/v2/upload", files={"file": ("b.bin", b"\x00\xff")}).json()["job_id"]

    record = dcore_env.jobs.get(job_id)

    assert record.state == "SUCCEEDED"
    assert (Path(dcore_env.settings.storage_root) / "uploads" / "b.bin").read_bytes() == b"\x00\xff"
    # an in-process hand-off (BackgroundTasks) keeps no message on the record; the core
    # function is registered, so the same pipeline can cross a process (Celery) as it is
    assert record.message is None
    from dcore._plugins.registry import core_function_name
    from examples.upload_app.main import finalize_upload

    assert core_function_name(finalize_upload) == "examples.upload_app.main:finalize_upload"


def test_demo_prints_job_id_path_and_status(
    dcore_env: Environment, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.upload_app import demo

    assert demo.main() == 0

    out = capsys.readouterr().out
    assert "job id:" in out
    assert "uploads/hello.txt" in out
    assert "final status: SUCCEEDED" in out
