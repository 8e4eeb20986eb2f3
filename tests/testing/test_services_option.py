"""``--dcore-services fake|real``: the same test body runs against fakes or real servers."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BODY = """
from dcore.services import JobState


def test_services_behave(dcore_services, record_property):
    s = dcore_services
    record_property("kind", s.kind)
    record_property("backends", ",".join(type(x).__name__ for x in s[1:]))
    s.storage.put("a/b.txt", b"payload")
    assert s.storage.get("a/b.txt") == b"payload"
    s.jobs.create("job-1")
    assert s.jobs.transition("job-1", JobState.RUNNING).attempts == 1
    entry = s.events.append("dlq", {"job_id": "job-1"})
    assert [e.id for e in s.events.entries("dlq")] == [entry]
    lock = s.locks.lock("file:a", ttl=5)
    assert lock.acquire(blocking=False)
    assert not s.locks.lock("file:a", ttl=5).acquire(blocking=False)
    lock.release()
"""


def _properties(result: pytest.HookRecorder) -> dict[str, str]:
    (report,) = [r for r in result.getreports("pytest_runtest_logreport") if r.when == "call"]
    return dict(report.user_properties)


def test_fake_services_are_in_memory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_body=BODY)

    result = pytester.inline_run("--dcore-services=fake")

    result.assertoutcome(passed=1)
    props = _properties(result)
    assert props["kind"] == "fake"
    assert props["backends"] == "MemoryStorage,MemoryEventBus,MemoryJobStore,MemoryLocks"


@pytest.mark.integration
def test_real_services_are_redis_and_s3(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_body=BODY)

    # the inner session starts its own private redis-server and moto S3 server
    result = pytester.inline_run("--dcore-services=real")

    result.assertoutcome(passed=1)
    props = _properties(result)
    assert props["kind"] == "real"
    assert props["backends"] == "S3Storage,RedisEventBus,RedisJobStore,RedisLocks"
