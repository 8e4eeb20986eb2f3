"""The upload example end to end through Celery: file → worker → S3, job SUCCEEDED in
the Redis job store. The web side is the example's FastAPI app (in-process client);
the worker is a real subprocess reaching the same S3 endpoint through DCORE_S3_*."""

from __future__ import annotations

import pytest
from celery_support import HERE, wait_terminal

from dcore import Environment, JobState, use_environment

pytestmark = pytest.mark.integration

REPO = HERE.parent.parent
TIMEOUT = 30.0


def test_upload_example_through_celery_stores_the_file_in_s3_and_succeeds(
    dcore_celery_worker, dcore_s3_endpoint, dcore_s3_bucket, monkeypatch
):
    monkeypatch.syspath_prepend(str(REPO))
    from fastapi.testclient import TestClient

    from examples.upload_app.main import app

    worker = dcore_celery_worker(
        ["examples.upload_app.main"],
        pool="solo",
        pythonpath=[str(REPO)],
        dispatcher="celery",
        storage="s3",
        s3_endpoint=dcore_s3_endpoint.url,
        s3_bucket=dcore_s3_bucket,
        s3_region=dcore_s3_endpoint.region,
        s3_access_key=dcore_s3_endpoint.access_key,
        s3_secret_key=dcore_s3_endpoint.secret_key,
    )
    env = Environment(worker.settings)
    content = b"hello through celery\n" * 100
    with use_environment(env), TestClient(app) as client:
        response = client.post("/v2/upload", files={"file": ("hello.txt", content)})
        assert response.status_code == 200, response.text
        handle = response.json()
        assert handle["status"] == "scheduled"

        record = wait_terminal(env, [handle["job_id"]], TIMEOUT)[handle["job_id"]]
        assert record.state is JobState.SUCCEEDED, f"{record}\n{worker.log_tail()}"
        assert record.result == {"stored_path": "uploads/hello.txt", "ok": True}
        assert env.storage.get("uploads/hello.txt") == content
        status = client.get(f"/jobs/{handle['job_id']}").json()
        assert status["state"] == "SUCCEEDED"
    env.close()
