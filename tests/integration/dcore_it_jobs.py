"""Pipelines the integration tests ship to a real Celery worker.

The worker imports this module by name (``DCORE_IMPORTS=dcore_it_jobs``, with this
directory on its PYTHONPATH), so the context type and core functions resolve there.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from dcore import (
    Dispatch,
    Execute,
    PipelineContext,
    RetryPolicy,
    core_function,
    current_environment,
)


class WorkContext(PipelineContext):
    n: int
    #: how long the core function works, so a kill can land in the middle of it
    work_seconds: float = 0.0
    #: fail this many first attempts (job-level retry)
    fail_attempts: int = 0


def _redis() -> redis.Redis[Any]:
    return redis.Redis.from_url(current_environment().settings.redis_url)


def _counter_key(suffix: str) -> str:
    return f"{current_environment().settings.key_prefix}:it:{suffix}"


@core_function
def do_work(ctx: WorkContext) -> dict[str, int]:
    """Sleeps (a stand-in for work), counts each completed execution per job, and fails
    its first ``fail_attempts`` executions. Two executions of one job at the same time
    are counted in ``overlaps``."""
    client = _redis()
    try:
        if int(client.hincrby(_counter_key("active"), ctx.job_id, 1)) > 1:
            client.hincrby(_counter_key("overlaps"), ctx.job_id, 1)
        if ctx.work_seconds:
            time.sleep(ctx.work_seconds)
        client.hincrby(_counter_key("active"), ctx.job_id, -1)
        runs = int(client.hincrby(_counter_key("runs"), ctx.job_id, 1))
    finally:
        client.close()
    if runs <= ctx.fail_attempts:
        raise RuntimeError(f"planned failure {runs} of {ctx.fail_attempts}")
    return {"n": ctx.n, "runs": runs}


def runs_per_job(job_ids: list[str], counter: str = "runs") -> dict[str, int]:
    client = _redis()
    try:
        values = client.hmget(_counter_key(counter), job_ids)
    finally:
        client.close()
    return {job_id: int(v or 0) for job_id, v in zip(job_ids, values, strict=True)}


def build(ctx: WorkContext, retry: RetryPolicy | None = None) -> Any:
    pipeline = ctx.create_pipeline(core_fn=do_work)
    pipeline.chain(Dispatch, plugin="celery", retry=retry)
    pipeline.chain(Execute, plugin="logging")
    return pipeline
