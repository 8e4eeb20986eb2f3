"""State events published by the Redis job store's own script (AnnouncingJobStore).

With the job store and the event bus on one Redis server, a job's ``job.scheduled``,
``job.started`` and ``job.succeeded`` go out inside the transition that makes them true:
one round trip each instead of two, and never an event for a move that was refused.
The random-sequence check of the same promise is in ``test_jobs_statemachine.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
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
    use_environment,
)
from dcore._core.lifecycle import SkippedDuplicate, deliver, schedule
from dcore._core.retry import NO_RETRY
from dcore._core.settings import DcoreSettings
from dcore.backends.memory import MemoryEventBus
from dcore.backends.redis_events import RedisEventBus
from dcore.backends.redis_jobs import RedisJobStore
from dcore.dispatchers.thread import ThreadDispatcher
from dcore.errors import IllegalTransitionError, JobNotFoundError
from dcore.services.jobs import JobState

Published = list[tuple[str, dict[str, Any]]]


class Ctx(PipelineContext):
    pass


@core_function
def core(ctx: Ctx) -> str:
    return "done"


class ChannelLog:
    """Everything published on dcore's pub/sub channels, in the server's order (one
    pattern subscription, so events of different topics keep their relative order)."""

    def __init__(self, client: Any, prefix: str = "dcore") -> None:
        self.prefix = f"{prefix}:pubsub:"
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe(f"{self.prefix}*")
        assert self.pubsub.get_message(timeout=5)["type"] == "psubscribe"

    def read(self, expected: int) -> Published:
        """The events seen until ``expected`` arrived and then 0.2 s of quiet (5 s at most)."""
        seen: Published = []
        deadline = time.monotonic() + 5
        quiet_until = None
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "pmessage":
                topic = message["channel"].decode().removeprefix(self.prefix)
                seen.append((topic, json.loads(message["data"])))
                quiet_until = None
            elif len(seen) >= expected:
                quiet_until = quiet_until or time.monotonic() + 0.2
                if time.monotonic() >= quiet_until:
                    break
        return seen


@pytest.fixture
def redis_env(
    dcore_redis_url: str, dcore_redis_client: Any, tmp_path: Path, dcore_registry: PluginRegistry
) -> Iterator[Environment]:
    """Job store and event bus on one Redis server, current for the test."""
    settings = DcoreSettings(redis_url=dcore_redis_url, job_store="redis", event_bus="redis",
                             storage_root=tmp_path)  # fmt: skip
    with Environment(settings, registry=dcore_registry) as env, use_environment(env):
        yield env


@pytest.fixture
def channels(dcore_redis_client: Any) -> Iterator[ChannelLog]:
    log = ChannelLog(dcore_redis_client)
    yield log
    log.pubsub.close()


def test_a_redis_store_announces_only_on_a_redis_bus_of_its_own_server(
    dcore_redis_url: str, dcore_redis_client: Any, dcore_fake_redis: Any
) -> None:
    store = RedisJobStore(url=dcore_redis_url)
    same = RedisEventBus(
        url=dcore_redis_url, prefix="elsewhere"
    )  # another prefix: still one server
    other_db = RedisEventBus(url=dcore_redis_url.rsplit("/", 1)[0] + "/1")
    injected = RedisEventBus(dcore_redis_client)  # the same server, but only known by identity
    try:
        assert store.announces_on(same)
        assert not store.announces_on(other_db)
        assert not store.announces_on(injected)
        assert not store.announces_on(MemoryEventBus())
        assert RedisJobStore(dcore_fake_redis).announces_on(RedisEventBus(dcore_fake_redis))
        store.create("j1")
        with pytest.raises(ValueError, match=r"cannot publish on .*same server"):
            store.transition_announced("j1", JobState.RUNNING, other_db, "job.started", {})
        assert store.get("j1").state is JobState.PENDING  # nothing was moved
    finally:
        for backend in (store, same, other_db, injected):
            backend.close()


def test_the_event_goes_out_on_the_bus_prefix_with_the_move_and_not_for_a_refused_one(
    dcore_redis_url: str, dcore_redis_client: Any
) -> None:
    store = RedisJobStore(url=dcore_redis_url, prefix="jobs1")
    bus = RedisEventBus(url=dcore_redis_url, prefix="bus1")
    log = ChannelLog(dcore_redis_client, prefix="bus1")
    try:
        store.create_announced("j1", bus, "job.scheduled", {"job_id": "j1"}, message="{}")
        store.transition_announced("j1", JobState.RUNNING, bus, "job.started",
                                   {"job_id": "j1", "attempt": 1}, note="attempt 1")  # fmt: skip
        with pytest.raises(IllegalTransitionError, match="cannot go from RUNNING to PENDING"):
            store.transition_announced("j1", JobState.PENDING, bus, "job.bogus", {})
        with pytest.raises(IllegalTransitionError, match="expected PENDING"):
            store.transition_announced("j1", JobState.RUNNING, bus, "job.raced", {},
                                       expect=[JobState.PENDING])  # fmt: skip
        with pytest.raises(JobNotFoundError):
            store.transition_announced("nope", JobState.RUNNING, bus, "job.lost", {})
        store.transition_announced("j1", JobState.SUCCEEDED, bus, "job.succeeded",
                                   {"job_id": "j1"}, result={"rows": 2})  # fmt: skip

        assert log.read(expected=3) == [
            ("job.scheduled", {"job_id": "j1"}),
            ("job.started", {"job_id": "j1", "attempt": 1}),
            ("job.succeeded", {"job_id": "j1"}),
        ]
        record = store.get("j1")
        assert (record.state, record.attempts) == (JobState.SUCCEEDED, 1)
        assert record.result == {"rows": 2}
        assert [t.state for t in record.history] == ["PENDING", "RUNNING", "SUCCEEDED"]
        assert record.history[1].note == "attempt 1"
        assert 0 < dcore_redis_client.pttl("jobs1:job:j1") <= store.ttl * 1000
    finally:
        log.pubsub.close()
        store.close()
        bus.close()


def test_a_job_through_redis_publishes_its_state_events_inside_its_transitions(
    redis_env: Environment,
    dcore_redis_client: Any,
    channels: ChannelLog,
    dcore_registry: PluginRegistry,
) -> None:
    failures = {"left": 1}

    class Flaky(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise OSError("disk hiccup")
            return next_fn(context)

    dcore_registry.register("flaky", Flaky, replace=True)
    bus_publishes: list[str] = []
    publish = redis_env.events.publish

    def counted(topic: str, payload: Any) -> int:
        bus_publishes.append(topic)
        return publish(topic, payload)

    redis_env.events.publish = counted  # type: ignore[method-assign]
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Dispatch("thread"), retry={"attempts": 2, "initial": 0.01})
    pipeline.chain(Execute("flaky"))
    pipeline.run()
    ThreadDispatcher.drain(10)

    events = channels.read(expected=6)
    assert [topic for topic, _ in events] == [
        "job.scheduled",
        "job.started",
        "stage.failed",
        "job.retrying",
        "job.started",
        "job.succeeded",
    ]
    assert {p["job_id"] for _, p in events} == {ctx.job_id}
    assert [p["attempt"] for t, p in events if t == "job.started"] == [1, 2]
    # only the two events without a transition of their own went through the bus
    assert bus_publishes == ["stage.failed", "job.retrying"]
    record = redis_env.jobs.get(ctx.job_id)
    assert (record.state, record.attempts, record.result) == (JobState.SUCCEEDED, 2, "done")


def run_job(env: Environment, job_id: str, fn: Any) -> Any:
    """One delivery of attempt 1, its value or its error."""
    return deliver(env, job_id, fn, attempt=1, policy=NO_RETRY).value(job_id)


def test_a_duplicate_delivery_of_a_finished_job_announces_nothing(
    redis_env: Environment, channels: ChannelLog
) -> None:
    schedule(redis_env, "j1")
    assert run_job(redis_env, "j1", lambda: 42) == 42
    with pytest.raises(SkippedDuplicate) as skipped:
        run_job(redis_env, "j1", lambda: pytest.fail("a finished job ran again"))
    assert "the job is SUCCEEDED" in str(skipped.value)
    assert [topic for topic, _ in channels.read(expected=3)] == [
        "job.scheduled",
        "job.started",
        "job.succeeded",
    ]


def test_a_store_on_another_server_still_gets_its_events_published_by_the_bus(
    dcore_redis_url: str, dcore_redis_client: Any, tmp_path: Path
) -> None:
    # the bus on db 1 is another keyspace: the store cannot publish for it, lifecycle does
    other = dcore_redis_url.rsplit("/", 1)[0] + "/1"
    settings = DcoreSettings(redis_url=dcore_redis_url, job_store="redis", storage_root=tmp_path)
    with Environment(settings, events=RedisEventBus(url=other)) as env:
        assert isinstance(env.jobs, RedisJobStore)
        assert not env.jobs.announces_on(env.events)
        log = ChannelLog(dcore_redis_client)  # pub/sub is server-wide: db 1's events arrive too
        try:
            schedule(env, "j1")
            run_job(env, "j1", lambda: None)
            assert [t for t, _ in log.read(expected=3)] == [
                "job.scheduled",
                "job.started",
                "job.succeeded",
            ]
        finally:
            log.pubsub.close()
