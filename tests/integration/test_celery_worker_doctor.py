"""A real Celery worker logs the doctor's findings as it starts."""

from __future__ import annotations

import re

import pytest
import redis
from celery_support import HERE

pytestmark = pytest.mark.integration


def test_a_worker_on_a_redis_without_persistence_says_so_as_it_starts(
    dcore_celery_worker, dcore_redis_url
):
    client = redis.Redis.from_url(dcore_redis_url, decode_responses=True)
    try:
        persisted = client.config_get("appendonly")["appendonly"] == "yes" or bool(
            client.config_get("save")["save"]
        )
    finally:
        client.close()
    if persisted:
        pytest.skip("the session's Redis persists; this test needs one that does not")

    worker = dcore_celery_worker(
        ["dcore_it_jobs"], pool="solo", pythonpath=[str(HERE)], recovery_interval=0
    )

    log = worker.log_tail(100_000)
    found = {
        check: level
        for level, check in re.findall(r"(\w+)/MainProcess\] dcore doctor: (\w+): ", log)
    }
    assert found["persistence"] == "ERROR", log
    assert "Fix: appendonly yes" in log
    assert found["recovery"] == "WARNING", log
    assert found["dispatch"] == "INFO", log  # the worker's services are Redis
