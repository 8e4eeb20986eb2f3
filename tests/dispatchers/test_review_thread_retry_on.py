# mypy: disable-error-code="abstract,call-arg,arg-type"
"""The thread dispatcher honours the job policy's ``retry_on``, as the Celery task does:
a failure the policy does not name is dead-lettered at once, not re-delivered."""

from __future__ import annotations

from typing import Any

from dcore import Dispatch, Environment, Execute, JobState, NextFn, PipelineContext, RetryPolicy
from dcore.dispatchers.thread import ThreadDispatcher

WAIT = 30.0


class Ctx(PipelineContext):
    error: str = "value"


class Boom(Execute[Ctx]):
    calls = 0

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        type(self).calls += 1
        if context.error == "value":
            raise ValueError("bad input, retrying cannot help")
        raise ConnectionError("upstream went away")


def core(ctx: Ctx) -> str:
    return "done"


def _run(env: Environment, error: str) -> str:
    env.registry.register("review_boom", Boom, replace=True)
    Boom.calls = 0
    ctx = Ctx(error=error)
    pipeline = ctx.create_pipeline(core)
    policy = RetryPolicy(attempts=3, initial=1.0, retry_on=(ConnectionError,))
    pipeline.chain(Dispatch("thread"), retry=policy).chain(Execute("review_boom"))
    pipeline.run()
    ThreadDispatcher.drain(WAIT, environment=env)
    return ctx.job_id


def test_failure_outside_retry_on_is_dead_lettered_after_one_attempt(
    dcore_manual_env: Environment,
) -> None:
    job_id = _run(dcore_manual_env, "value")

    record = dcore_manual_env.jobs.get(job_id)
    assert Boom.calls == 1
    assert record.state is JobState.DEAD
    assert record.attempts == 1
    dlq = dcore_manual_env.events.entries(dcore_manual_env.settings.dlq_topic)
    assert [e.payload["job_id"] for e in dlq] == [job_id]
    assert "ValueError" in dlq[0].payload["error"]


def test_failure_named_in_retry_on_is_still_redelivered_up_to_the_attempts(
    dcore_manual_env: Environment,
) -> None:
    job_id = _run(dcore_manual_env, "connection")

    record = dcore_manual_env.jobs.get(job_id)
    assert Boom.calls == 3
    assert record.state is JobState.DEAD
    assert record.attempts == 3
    assert len(dcore_manual_env.events.entries(dcore_manual_env.settings.dlq_topic)) == 1
