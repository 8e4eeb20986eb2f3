"""The celery dispatcher and the worker-side task logic, without a broker."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcore import (
    ContextSerializationError,
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobMessage,
    JobState,
    PipelineContext,
    PluginFactory,
    RetryPolicy,
    core_function,
)
from dcore._core.delivery import MAX_LOST_DELIVERIES, Action
from dcore.celery import (
    TASK_NAME,
    celery_config,
    execute,
    make_celery_app,
    message_for,
    queue_for,
    queue_names,
)
from dcore.dispatchers import celery as celery_dispatcher
from dcore.errors import DispatchError, ServiceUnavailableError


class ShipContext(PipelineContext):
    n: int = 0
    fail: bool = False


@core_function
def ship_core(ctx: ShipContext) -> dict[str, int]:
    if ctx.fail:
        raise RuntimeError(f"job {ctx.n} failed on purpose")
    return {"n": ctx.n}


class RecordingApp:
    """Stands in for the Celery app: records what would be sent."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.error = error
        self.conf = SimpleNamespace(broker_url="redis://:hunter2@127.0.0.1:1/0")

    def send_task(self, name: str, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append({"name": name, **options})

    def close(self) -> None:
        pass


@pytest.fixture
def sharded_env(dcore_env: Environment) -> Environment:
    dcore_env.memory_services_shared = True  # execute() runs the messages in this process
    dcore_env.settings.celery_queues = 4
    dcore_env.settings.celery_queue = "work"
    return dcore_env


def _pipeline(ctx: ShipContext, retry: RetryPolicy | None = None) -> Any:
    pipeline = ctx.create_pipeline(core_fn=ship_core)
    pipeline.chain(Dispatch, plugin="celery", retry=retry)
    pipeline.chain(Execute, plugin="logging")
    return pipeline


def _message(ctx: ShipContext, retry: RetryPolicy | None = None) -> JobMessage:
    return _pipeline(ctx, retry).continuation(1).to_message(ctx)


# -- routing ----------------------------------------------------------------------------
@given(shard=st.integers(min_value=0, max_value=2**64), queues=st.integers(1, 64))
def test_a_shard_always_maps_to_the_same_one_of_n_queues(shard: int, queues: int) -> None:
    settings = DcoreSettings(celery_queue="q", celery_queues=queues)
    name = queue_for(shard, settings)
    assert name == f"q.{shard % queues}"
    assert name in queue_names(settings)


def test_dispatch_sends_the_job_message_to_its_shard_queue(sharded_env: Environment) -> None:
    app = sharded_env.resource("dcore.celery_app", RecordingApp)
    ctx = ShipContext(n=5)

    handle = _pipeline(ctx).run()

    assert handle.job_id == ctx.job_id
    assert handle.status == "scheduled"
    [sent] = app.sent
    assert sent["name"] == TASK_NAME
    assert sent["queue"] == f"work.{ctx.shard_key % 4}"
    assert sent["task_id"] == ctx.job_id
    message = JobMessage.parse(sent["args"][0])
    assert message.job_id == ctx.job_id
    assert message.shard == ctx.shard_key
    assert sharded_env.jobs.get(ctx.job_id).state is JobState.PENDING


def test_queue_option_pins_every_job_to_one_queue(sharded_env: Environment) -> None:
    app = sharded_env.resource("dcore.celery_app", RecordingApp)
    for n in range(5):
        ctx = ShipContext(n=n)
        pipeline = ctx.create_pipeline(core_fn=ship_core)
        pipeline.chain(Dispatch, plugin="celery", queue="gpu").run()
    assert {sent["queue"] for sent in app.sent} == {"gpu"}


def test_a_broker_that_refuses_the_job_is_a_dispatch_error_and_the_job_is_dead(
    sharded_env: Environment,
) -> None:
    sharded_env.resource(
        "dcore.celery_app", lambda: RecordingApp(ConnectionRefusedError("refused"))
    )
    ctx = ShipContext(n=1)

    with pytest.raises(DispatchError, match=r"queue 'work\.\d'.*127\.0\.0\.1:1") as info:
        _pipeline(ctx).run()

    assert "hunter2" not in str(info.value)
    record = sharded_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    assert "refused" in (record.error or "")


def test_a_context_that_cannot_ship_fails_before_any_stage_runs(dcore_env: Environment) -> None:
    dcore_env.memory_services_shared = True  # the failure under test is the context's
    app = dcore_env.resource("dcore.celery_app", RecordingApp)

    def local_core(ctx: ShipContext) -> None: ...

    pipeline = ShipContext().create_pipeline(core_fn=local_core)
    pipeline.chain(Dispatch, plugin="celery")
    with pytest.raises(ContextSerializationError, match="local_core"):
        pipeline.run()
    assert app.sent == []


def test_dispatcher_without_celery_installed_is_a_clear_error(
    dcore_env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)
    celery_dispatcher._celery_installed.cache_clear()
    try:
        with pytest.raises(DispatchError, match=r"needs the 'celery' package.*\[celery\]"):
            PluginFactory(environment=dcore_env).create(Dispatch, "celery")
    finally:
        celery_dispatcher._celery_installed.cache_clear()


def test_import_dcore_works_without_celery_and_kombu() -> None:
    code = (
        "import sys; sys.modules['celery'] = None; sys.modules['kombu'] = None\n"
        "import dcore\n"
        "from dcore import Dispatch, current_registry\n"
        "print(current_registry().get(Dispatch, 'celery').__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "CeleryDispatcher"


# -- the app ------------------------------------------------------------------------------
def test_app_config_is_the_reliable_delivery_one() -> None:
    settings = DcoreSettings(
        redis_url="redis://127.0.0.1:1/2",
        celery_visibility_timeout=42,
        celery_queue="jobs",
        celery_queues=3,
        imports=["pkg.mod"],
    )
    config = celery_config(settings)

    assert config["broker_url"] == "redis://127.0.0.1:1/2"  # defaults to the redis_url
    assert config["broker_transport_options"]["visibility_timeout"] == 42
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["accept_content"] == ["json"]
    assert config["result_backend"] is None
    assert sorted(config["task_queues"]) == ["jobs.0", "jobs.1", "jobs.2"]
    assert config["imports"] == ("pkg.mod",)
    broker = DcoreSettings(celery_broker_url="redis://other:6379/1")
    assert celery_config(broker)["broker_url"] == "redis://other:6379/1"


def test_making_the_app_connects_to_nothing() -> None:
    app = make_celery_app(DcoreSettings(redis_url="redis://127.0.0.1:1/0"))
    assert TASK_NAME in app.tasks
    app.close()


def test_module_level_app_is_built_on_first_access() -> None:
    import dcore.celery as module

    assert module.app is module.app
    assert TASK_NAME in module.app.tasks


# -- the task's logic ------------------------------------------------------------------------
def test_a_delivery_that_succeeds_records_the_job_succeeded(dcore_env: Environment) -> None:
    ctx = ShipContext(n=3)
    outcome = execute(_message(ctx).to_json(), environment=dcore_env)

    assert outcome.action is Action.ACK
    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.SUCCEEDED
    assert record.result == {"n": 3}


def test_a_failed_attempt_asks_for_the_next_one_after_the_policy_delay(
    dcore_env: Environment,
) -> None:
    policy = RetryPolicy(attempts=3, initial=2.0, backoff=3.0)
    ctx = ShipContext(n=1, fail=True)
    first = _message(ctx, policy).to_json()

    outcome = execute(first, environment=dcore_env)
    assert (outcome.action, outcome.attempt, outcome.delay) == (Action.RETRY, 2, 2.0)
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.FAILED
    second = message_for(first, outcome)
    assert JobMessage.parse(second).attempt == 2

    outcome = execute(second, environment=dcore_env)
    assert (outcome.action, outcome.attempt, outcome.delay) == (Action.RETRY, 3, 6.0)

    outcome = execute(message_for(second, outcome), environment=dcore_env)
    assert outcome.action is Action.DEAD
    assert "failed on purpose" in (outcome.reason or "")
    record = dcore_env.jobs.get(ctx.job_id)
    assert record.state is JobState.DEAD
    assert record.attempts == 3


def test_without_a_stage_policy_the_workers_job_settings_apply(dcore_env: Environment) -> None:
    dcore_env.settings.job_attempts = 2
    dcore_env.settings.job_initial_delay = 7.0
    message = _message(ShipContext(fail=True))

    outcome = execute(message.to_json(), environment=dcore_env)
    assert (outcome.action, outcome.delay) == (Action.RETRY, 7.0)


def test_a_malformed_message_is_dead_lettered_and_not_retried(dcore_env: Environment) -> None:
    dcore_env.settings.job_attempts = 5
    data = json.loads(_message(ShipContext()).to_json())
    data["spec"][1]["plugin"] = "no_such_stage"

    outcome = execute(json.dumps(data), environment=dcore_env)

    assert outcome.action is Action.DEAD
    assert "MessageError" in (outcome.reason or "")
    assert "no_such_stage" in (outcome.reason or "")
    assert dcore_env.jobs.get(data["job_id"]).state is JobState.DEAD
    [letter] = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    assert letter.payload["job_id"] == data["job_id"]


def test_a_second_delivery_of_a_finished_job_is_skipped(dcore_env: Environment) -> None:
    raw = _message(ShipContext(n=2)).to_json()
    assert execute(raw, environment=dcore_env).action is Action.ACK
    assert execute(raw, environment=dcore_env).action is Action.SKIP


def test_a_job_lost_with_its_worker_too_often_goes_dead(dcore_manual_env: Environment) -> None:
    ctx = ShipContext(n=1)
    message = _message(ctx)
    dcore_manual_env.jobs.create(ctx.job_id)
    lease = dcore_manual_env.settings.lease_ttl
    for n in range(MAX_LOST_DELIVERIES):  # started, then the worker died each time
        dcore_manual_env.jobs.claim(ctx.job_id, attempt=1, owner=f"dead-{n}", lease=lease)
        dcore_manual_env.clock.sleep(lease + 1)

    outcome = execute(message.to_json(), environment=dcore_manual_env)

    assert outcome.action is Action.DEAD
    assert "WorkerLost" in (outcome.reason or "")
    assert dcore_manual_env.jobs.get(ctx.job_id).state is JobState.DEAD


def test_a_delivery_lost_once_is_taken_over_after_its_lease(dcore_manual_env: Environment) -> None:
    ctx = ShipContext(n=1)
    message = _message(ctx)
    dcore_manual_env.jobs.create(ctx.job_id)
    lease = dcore_manual_env.settings.lease_ttl
    dcore_manual_env.jobs.claim(ctx.job_id, attempt=1, owner="dead", lease=lease)

    outcome = execute(message.to_json(), environment=dcore_manual_env)
    assert (outcome.action, outcome.delay) == (Action.DEFER, lease)  # its lease is live

    dcore_manual_env.clock.sleep(lease)
    outcome = execute(message.to_json(), environment=dcore_manual_env)
    assert outcome.action is Action.ACK
    record = dcore_manual_env.jobs.get(ctx.job_id)
    assert (record.attempts, record.attempt, record.lost) == (2, 1, 1)


class UnreachableJobStore:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise ServiceUnavailableError("job store at redis://127.0.0.1:1 is unreachable")

        return fail


def test_an_unreachable_job_store_requeues_the_delivery(dcore_env: Environment) -> None:
    message = _message(ShipContext(n=1))
    env = Environment(
        dcore_env.settings,
        registry=dcore_env.registry,
        jobs=UnreachableJobStore(),
        events=dcore_env.events,
    )  # type: ignore[arg-type]

    outcome = execute(message.to_json(), environment=env)

    assert outcome.action is Action.REQUEUE
    assert "unreachable" in (outcome.reason or "")


def test_each_app_runs_jobs_in_the_environment_it_was_made_with(dcore_env: Environment) -> None:
    other = make_celery_app(DcoreSettings(redis_url="redis://127.0.0.1:1/0"))
    app = make_celery_app(environment=dcore_env)
    ctx = ShipContext(n=9)

    app.tasks[TASK_NAME].apply(args=[_message(ctx).to_json()])

    assert dcore_env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED
    assert other.tasks[TASK_NAME] is not app.tasks[TASK_NAME]
    other.close()
    app.close()
