"""Redis at 100 ms per reply: slow, but nothing breaks; and a client timeout is honoured.

The event bus and the job store both talk to Redis through the proxy. Latency is a
performance fault, not a correctness one: every job must still finish, with its record
and its events, only later. A client configured with a socket timeout shorter than the
latency must fail with a timeout (dcore's ``ServiceUnavailableError``, caused by redis'
``TimeoutError``) instead of waiting; under a one-way partition, where no reply ever
comes, that timeout is all that stands between the caller and a hang.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobState,
    PipelineContext,
    current_environment,
    use_environment,
)
from dcore._core.events import JOB_SUCCEEDED
from dcore.backends.redis_jobs import RedisJobStore
from dcore.dispatchers.thread import ThreadDispatcher
from dcore.errors import JobNotFoundError, ServiceUnavailableError
from dcore.services.events import Event
from dcore_testing.chaos.services import ChaosRedis

pytestmark = pytest.mark.chaos

JOBS = 12
LATENCY_MS = 100
DONE_TOPIC = "chaos.latency.done"
#: generous bound for waits that, with 100 ms per round trip, take a few seconds
WAIT = 60.0
#: a call that honours a 50 ms socket timeout returns long before this
HANG_BOUND = 10.0


class LatencyJob(PipelineContext):
    n: int


def record_done(ctx: LatencyJob) -> int:
    """The job's work: one entry on a durable topic (a Redis stream, through the proxy)."""
    current_environment().events.append(DONE_TOPIC, {"n": ctx.n, "job_id": ctx.job_id})
    return ctx.n


def redis_settings(chaos_redis: ChaosRedis, **overrides: Any) -> DcoreSettings:
    """``DCORE_*`` settings with every Redis-backed service going through the proxy."""
    values: dict[str, Any] = {
        "redis_url": chaos_redis.url,
        "key_prefix": chaos_redis.prefix,
        "job_store": "redis",
        "event_bus": "redis",
        "locks": "redis",
        "dispatcher": "thread",
        "thread_workers": 4,
    }
    values.update(overrides)
    return DcoreSettings(**values)


class Collector:
    """Event handler that lets the test wait (bounded) until it has seen ``expected``."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.seen: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.seen.add(str(event.payload.get("job_id")))
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.expected <= self.seen, timeout)


def test_jobs_complete_with_100ms_redis_latency_on_event_bus_and_job_store(
    dcore_chaos_redis: ChaosRedis,
) -> None:
    """Invariant: with every Redis reply 100 ms late, all N jobs run through the thread
    dispatcher end SUCCEEDED, each wrote its entry to the durable topic, and each one's
    ``job.succeeded`` event reached a subscriber — latency delays, never drops."""
    env = Environment(redis_settings(dcore_chaos_redis))
    try:
        with use_environment(env), dcore_chaos_redis.proxy.latency(LATENCY_MS):
            collector = Collector(set())
            with env.events.subscribe(JOB_SUCCEEDED, collector):
                handles = []
                for n in range(JOBS):
                    pipeline = LatencyJob(n=n).create_pipeline(core_fn=record_done)
                    pipeline.chain(Dispatch, plugin="thread").chain(Execute, plugin="logging")
                    handles.append(pipeline.run())
                job_ids = {h.job_id for h in handles}
                collector.expected = job_ids
                ThreadDispatcher.drain(WAIT, environment=env)
                all_events = collector.wait(WAIT)
        records = {job_id: env.jobs.get(job_id) for job_id in job_ids}
        entries = env.events.entries(DONE_TOPIC)
    finally:
        env.close()

    assert {r.state for r in records.values()} == {JobState.SUCCEEDED}
    assert sorted(r.result for r in records.values()) == list(range(JOBS))
    assert sorted(e.payload["n"] for e in entries) == list(range(JOBS))
    assert all_events, f"missing job.succeeded events: {sorted(job_ids - collector.seen)}"


def _call_bounded(fn: Any) -> BaseException | None:
    """Run ``fn`` in a thread; return what it raised (None if it returned). Fails the test
    if it is still running after HANG_BOUND seconds: a hang, not a timeout."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_BOUND)
    assert not thread.is_alive(), f"the call still hangs after {HANG_BOUND}s"
    return outcome[0]


@pytest.mark.parametrize("fault", ["latency", "one_way_partition"])
def test_a_50ms_socket_timeout_is_honoured_through_dcore_redis_settings(
    dcore_chaos_redis: ChaosRedis, fault: str
) -> None:
    """Invariant: a job store configured (``DCORE_REDIS_URL=...?socket_timeout=0.05``)
    with a 50 ms socket timeout fails with ``ServiceUnavailableError`` caused by redis'
    ``TimeoutError`` when replies are 100 ms late or never come — it neither waits for
    the late reply nor hangs — and works again once the fault is gone."""
    url = f"{dcore_chaos_redis.url}?socket_timeout=0.05"
    env = Environment(redis_settings(dcore_chaos_redis, redis_url=url))
    try:
        jobs = env.jobs
        with pytest.raises(JobNotFoundError):  # reachable before the fault
            jobs.get("no-such-job")
        if fault == "latency":
            context = dcore_chaos_redis.proxy.latency(LATENCY_MS)
        else:
            context = dcore_chaos_redis.proxy.one_way_partition("downstream")
        with context:
            error = _call_bounded(lambda: jobs.get("no-such-job"))
        assert isinstance(error, ServiceUnavailableError), repr(error)
        assert isinstance(error.__cause__, RedisTimeoutError), repr(error.__cause__)
        assert "127.0.0.1" in str(error)
        with pytest.raises(JobNotFoundError):  # healed: the same store answers again
            jobs.get("no-such-job")
    finally:
        env.close()


def test_the_socket_timeout_setting_alone_stops_a_partition_from_hanging_the_job_store(
    dcore_chaos_redis: ChaosRedis,
) -> None:
    """Invariant: with nothing in the URL, ``DCORE_REDIS_SOCKET_TIMEOUT`` bounds every
    job-store call: a one-way partition (requests swallowed, connection kept open) makes
    the call fail with ``ServiceUnavailableError`` instead of waiting for ever."""
    env = Environment(redis_settings(dcore_chaos_redis, redis_socket_timeout=0.3))
    try:
        jobs = env.jobs
        with pytest.raises(JobNotFoundError):  # reachable before the fault
            jobs.get("no-such-job")
        with dcore_chaos_redis.proxy.one_way_partition("downstream"):
            error = _call_bounded(lambda: jobs.get("no-such-job"))
        assert isinstance(error, ServiceUnavailableError), repr(error)
        assert isinstance(error.__cause__, RedisTimeoutError), repr(error.__cause__)
    finally:
        env.close()


def test_an_injected_client_with_a_50ms_timeout_raises_redis_timeout_not_a_late_reply(
    dcore_chaos_redis: ChaosRedis,
) -> None:
    """Invariant: a job store on a ready client with a 50 ms socket timeout, behind
    100 ms of latency, raises (ServiceUnavailableError from redis' TimeoutError) rather
    than returning the late reply; the same store without latency answers."""
    store = RedisJobStore(
        dcore_chaos_redis.connect(socket_timeout=0.05), prefix=dcore_chaos_redis.prefix
    )
    store.create("job-1")
    with dcore_chaos_redis.proxy.latency(LATENCY_MS):
        error = _call_bounded(lambda: store.get("job-1"))
    assert isinstance(error, ServiceUnavailableError), repr(error)
    assert isinstance(error.__cause__, RedisTimeoutError)
    assert store.get("job-1").state is JobState.PENDING
