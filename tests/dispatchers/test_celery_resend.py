"""Re-sending Celery jobs whose delivery was lost: still PENDING after a while with an
empty queue, RUNNING with a lease nobody renews, FAILED with a retry that never came."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    JobMessage,
    JobState,
    PipelineContext,
    core_function,
    use_environment,
)
from dcore.celery import TASK_NAME, resend_stale
from dcore.cli import main
from dcore_testing import ManualClock


class LostContext(PipelineContext):
    n: int = 0


@core_function
def lost_core(ctx: LostContext) -> int:
    return ctx.n


class RecordingApp:
    """Records what would be sent; ``queued`` says how many messages each queue holds."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.queued: dict[str, int] = {}

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append({"name": name, **options})

    @contextlib.contextmanager
    def connection_for_read(self) -> Iterator[Any]:
        declare = lambda queue, passive: SimpleNamespace(  # noqa: E731
            message_count=self.queued.get(queue, 0)
        )
        yield SimpleNamespace(
            default_channel=SimpleNamespace(queue_declare=declare), channel_errors=()
        )

    def close(self) -> None:
        pass


@pytest.fixture
def env(dcore_registry: Any, tmp_path: Any) -> Any:
    clock = ManualClock()
    environment = Environment(
        DcoreSettings(storage_root=tmp_path, celery_queue="work", celery_queues=2),
        clock=clock,
        registry=dcore_registry,
    )
    environment.memory_services_shared = True  # the recording app's "worker" is this process
    with use_environment(environment):
        yield environment
    environment.close()


def _dispatch(n: int) -> LostContext:
    ctx = LostContext(n=n)
    ctx.create_pipeline(lost_core).chain(Dispatch, plugin="celery").run()
    return ctx


def test_only_jobs_pending_longer_than_the_cutoff_are_sent_again(env: Environment) -> None:
    app = env.resource("dcore.celery_app", RecordingApp)
    old = _dispatch(1)
    env.clock.sleep(120)
    young = _dispatch(2)
    env.clock.sleep(30)
    app.sent.clear()  # the broker "lost" both original messages

    resent = resend_stale(env, older_than=60)

    assert resent == [old.job_id]
    [sent] = app.sent
    assert sent["name"] == TASK_NAME
    assert sent["task_id"] == old.job_id
    assert sent["queue"] == f"work.{old.shard_key % 2}"
    assert json.loads(sent["args"][0])["job_id"] == old.job_id
    assert env.jobs.get(young.job_id).state is JobState.PENDING


def test_a_pending_job_behind_a_backlog_is_left_in_its_queue(env: Environment) -> None:
    app = env.resource("dcore.celery_app", RecordingApp)
    job = _dispatch(1)
    env.clock.sleep(120)
    app.sent.clear()
    app.queued[f"work.{job.shard_key % 2}"] = 500  # its message may still be in there

    assert resend_stale(env, older_than=60) == []
    assert app.sent == []


def test_a_running_job_is_sent_again_only_once_its_lease_ran_out(env: Environment) -> None:
    app = env.resource("dcore.celery_app", RecordingApp)
    running, done = _dispatch(1), _dispatch(2)
    lease = env.settings.lease_ttl
    env.jobs.claim(running.job_id, attempt=1, owner="worker-a", lease=lease)
    env.jobs.claim(done.job_id, attempt=1, owner="worker-b", lease=lease)
    env.jobs.end_attempt(done.job_id, JobState.SUCCEEDED, owner="worker-b")
    app.sent.clear()

    assert resend_stale(env, older_than=3600) == []  # its worker is renewing the lease
    env.clock.sleep(lease + 1)  # ... and then it stopped (died)
    assert resend_stale(env, older_than=3600) == [running.job_id]
    [sent] = app.sent
    assert JobMessage.parse(sent["args"][0]).attempt == 1  # the same attempt, taken over


def test_a_retry_that_never_came_is_sent_as_the_next_attempt(env: Environment) -> None:
    app = env.resource("dcore.celery_app", RecordingApp)
    job = _dispatch(1)
    env.jobs.claim(job.job_id, attempt=1, owner="worker-a", lease=env.settings.lease_ttl)
    env.jobs.end_attempt(
        job.job_id, JobState.FAILED, owner="worker-a", error="boom", retry_at=env.clock.time() + 5
    )
    app.sent.clear()

    assert resend_stale(env, older_than=3600) == []  # not due yet
    env.clock.sleep(5 + env.settings.lease_ttl + 1)
    assert resend_stale(env, older_than=3600) == [job.job_id]
    assert JobMessage.parse(app.sent[0]["args"][0]).attempt == 2


def test_dry_run_lists_without_sending_and_a_negative_age_is_refused(env: Environment) -> None:
    app = env.resource("dcore.celery_app", RecordingApp)
    job = _dispatch(1)
    env.clock.sleep(100)
    app.sent.clear()

    assert resend_stale(env, older_than=10, dry_run=True) == [job.job_id]
    assert app.sent == []
    with pytest.raises(ValueError, match="older_than must be >= 0"):
        resend_stale(env, older_than=-1)


def test_cli_resend_stale_reports_what_it_sent(
    env: Environment, capsys: pytest.CaptureFixture[str]
) -> None:
    app = env.resource("dcore.celery_app", RecordingApp)
    job = _dispatch(1)
    env.clock.sleep(100)
    app.sent.clear()

    assert main(["jobs", "resend-stale", "--older-than", "10"]) == 0

    out = capsys.readouterr().out
    assert "re-sent 1 lost job(s)" in out
    assert job.job_id in out
    assert [s["task_id"] for s in app.sent] == [job.job_id]


@pytest.mark.integration
def test_a_lost_message_is_back_on_the_real_broker_queue(
    dcore_redis_url: str, dcore_registry: Any, tmp_path: Any
) -> None:
    import redis

    queue = "lost.0"
    settings = DcoreSettings(
        storage_root=tmp_path,
        celery_broker_url=dcore_redis_url,
        celery_queue="lost",
        job_store="redis",
        redis_url=dcore_redis_url,
        key_prefix="resend-test",
    )
    environment = Environment(settings, registry=dcore_registry)
    client = redis.Redis.from_url(dcore_redis_url)
    try:
        with use_environment(environment):
            job = _dispatch(7)
        assert client.llen(queue) == 1
        client.delete(queue)  # the broker lost it; the record still says PENDING

        assert resend_stale(environment, older_than=0) == [job.job_id]

        [raw] = client.lrange(queue, 0, -1)
        body = json.loads(raw)
        assert body["headers"]["id"] == job.job_id
    finally:
        client.close()
        environment.close()
