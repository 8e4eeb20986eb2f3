"""error_handler, retry and dead_letter stages, and ``context.error_bus.report``."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import (
    Dispatch,
    Environment,
    Execute,
    JobState,
    NextFn,
    PipelineContext,
    PluginOptionsError,
    PluginRegistry,
    RetryPolicy,
    core_function,
)
from dcore.dispatchers.thread import ThreadDispatcher
from dcore.services.events import Event
from dcore_testing import ManualClock


class Ctx(PipelineContext):
    name: str = "a.txt"


class Broken(Exception):
    pass


@core_function
def core(ctx: Ctx) -> str:
    return "core"


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    return dcore_manual_env


@pytest.fixture
def calls(dcore_registry: PluginRegistry) -> dict[str, int]:
    """Registers ``flaky`` (fails its first ``fail_first`` calls) and ``counter``."""
    counts = {"flaky": 0, "counter": 0, "fail_first": 0}

    class Flaky(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            counts["flaky"] += 1
            if counts["flaky"] <= counts["fail_first"]:
                raise Broken(f"flaky call {counts['flaky']}")
            return next_fn(context)

    class Counter(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            counts["counter"] += 1
            return next_fn(context)

    dcore_registry.register("flaky", Flaky)
    dcore_registry.register("counter", Counter)
    return counts


# -- error_bus / error_handler ---------------------------------------------------------
def test_error_bus_report_records_on_the_context_and_publishes_on_errors(
    env: Environment,
) -> None:
    got: list[Event] = []
    env.events.subscribe("errors", got.append)
    ctx = Ctx()
    record = ctx.error_bus.report(ValueError("bad row 3"), stage="parse#2")
    assert ctx.failed
    assert ctx.errors == [record]
    assert (record.type, record.message, record.stage) == (
        "builtins.ValueError",
        "bad row 3",
        "parse#2",
    )
    assert record.at == env.clock.time()
    (event,) = got
    assert event.payload == {
        "job_id": ctx.job_id,
        "type": "builtins.ValueError",
        "message": "bad row 3",
        "stage": "parse#2",
        "at": record.at,
    }


def test_error_handler_reports_the_failing_stage_then_reraises_the_same_error(
    env: Environment, calls: dict[str, int]
) -> None:
    calls["fail_first"] = 1
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core).chain(Execute("error_handler")).chain(Execute("flaky"))
    with pytest.raises(Broken, match="flaky call 1"):
        pipeline.run()
    (error,) = ctx.errors
    assert error.stage == "flaky#1"
    assert error.message == "flaky call 1"


def test_error_handler_swallows_with_reraise_false(env: Environment, calls: dict[str, int]) -> None:
    calls["fail_first"] = 1
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Execute("error_handler", reraise=False)).chain(Execute("flaky"))
    assert pipeline.run() is None
    assert ctx.failed


def test_error_handler_lets_uncaught_types_through_unreported(
    env: Environment, calls: dict[str, int]
) -> None:
    calls["fail_first"] = 1
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Execute("error_handler", reraise=False, catch=["ConnectionError"]))
    pipeline.chain(Execute("flaky"))
    with pytest.raises(Broken):
        pipeline.run()
    assert not ctx.failed


def test_error_handler_names_an_unknown_exception_class(env: Environment) -> None:
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("error_handler", catch=["NoSuchError"]))
    with pytest.raises(PluginOptionsError, match="error_handler: catch entry 'NoSuchError'"):
        pipeline.run()


# -- retry stage -------------------------------------------------------------------------
def test_retry_stage_reruns_the_whole_suffix_on_a_later_failure(
    env: Environment, calls: dict[str, int], dcore_manual_clock: ManualClock
) -> None:
    calls["fail_first"] = 2
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("retry", attempts=3, initial=1.0, backoff=2.0))
    pipeline.chain(Execute("counter")).chain(Execute("flaky"))
    assert pipeline.run() == "core"
    assert (calls["counter"], calls["flaky"]) == (3, 3)
    assert dcore_manual_clock.sleeps == [1.0, 2.0]


def test_retry_stage_gives_up_after_attempts_with_the_original_error(
    env: Environment, calls: dict[str, int], dcore_manual_clock: ManualClock
) -> None:
    calls["fail_first"] = 99
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("retry", attempts=2, initial=1.0)).chain(Execute("flaky"))
    with pytest.raises(Broken, match="flaky call 2"):
        pipeline.run()
    assert calls["flaky"] == 2


def test_retry_stage_only_retries_retry_on(
    env: Environment, calls: dict[str, int], dcore_manual_clock: ManualClock
) -> None:
    calls["fail_first"] = 99
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("retry", attempts=4, retry_on=["TimeoutError"]))
    pipeline.chain(Execute("flaky"))
    with pytest.raises(Broken):
        pipeline.run()
    assert calls["flaky"] == 1


def test_retry_stage_names_a_retry_on_module_that_is_not_imported(env: Environment) -> None:
    pipeline = Ctx().create_pipeline(core)
    pipeline.chain(Execute("retry", retry_on=["not_a_module_xyz:Err"]))
    with pytest.raises(PluginOptionsError, match="module 'not_a_module_xyz' is not imported"):
        pipeline.run()


def test_retry_stage_names_a_bad_policy_option(env: Environment) -> None:
    with pytest.raises(PluginOptionsError, match="attempts"):
        Ctx().create_pipeline(core).chain(Execute("retry", attempts=0)).run()


# -- dead_letter stage -----------------------------------------------------------------
def dlq(env: Environment) -> list[Event]:
    return env.events.entries(env.settings.dlq_topic)


def test_dead_letter_in_a_job_sends_it_to_the_dlq_at_once_instead_of_retrying(
    env: Environment, calls: dict[str, int], dcore_manual_clock: ManualClock
) -> None:
    calls["fail_first"] = 99
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Dispatch("thread"), retry=RetryPolicy(attempts=4))
    pipeline.chain(Execute("dead_letter")).chain(Execute("flaky"))
    pipeline.run()
    ThreadDispatcher.drain(10)
    assert calls["flaky"] == 1
    (entry,) = dlq(env)
    assert entry.payload["job_id"] == ctx.job_id
    assert entry.payload["error"] == "Broken: flaky call 1"
    assert entry.payload["message"]  # replayable
    assert env.jobs.get(ctx.job_id).state is JobState.DEAD


def test_dead_letter_in_a_job_turns_reported_errors_into_a_dead_job(
    env: Environment, calls: dict[str, int]
) -> None:
    calls["fail_first"] = 1
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Dispatch("inline", raise_errors=False)).chain(Execute("dead_letter"))
    pipeline.chain(Execute("error_handler", reraise=False)).chain(Execute("flaky"))
    pipeline.run()
    (entry,) = dlq(env)
    assert entry.payload["error"].startswith("FailedContextError: job ")
    assert "Broken: flaky call 1 (stage flaky#3)" in entry.payload["error"]
    assert env.jobs.get(ctx.job_id).state is JobState.DEAD


def test_dead_letter_before_any_dispatch_appends_the_context_and_reraises(
    env: Environment, calls: dict[str, int]
) -> None:
    calls["fail_first"] = 1
    ctx = Ctx(name="b.txt")
    pipeline = ctx.create_pipeline(core).chain(Execute("dead_letter")).chain(Execute("flaky"))
    with pytest.raises(Broken):
        pipeline.run()
    (entry,) = dlq(env)
    assert entry.payload["stage"] == "flaky#1"
    assert entry.payload["message"] is None
    assert entry.payload["context"]["data"]["name"] == "b.txt"


def test_dead_letter_before_any_dispatch_can_swallow_a_failed_context(
    env: Environment, calls: dict[str, int]
) -> None:
    calls["fail_first"] = 1
    ctx = Ctx()
    pipeline = ctx.create_pipeline(core)
    pipeline.chain(Execute("dead_letter", reraise=False))
    pipeline.chain(Execute("error_handler", reraise=False)).chain(Execute("flaky"))
    assert pipeline.run() is None
    (entry,) = dlq(env)
    assert [e["stage"] for e in entry.payload["errors"]] == ["flaky#2"]
