"""A report published under a lock, with the lock's fence: a job whose lock ran out (a
long pause, a partition) cannot overwrite the report of the job that took the lock over.
The fencing guide (docs/how-to/fencing.md) shows this code; ``test_fencing_guide.py`` runs it.

Run it: ``python -m examples.fencing.reports``
"""

from __future__ import annotations

from typing import Any

from dcore import (
    DcoreSettings,
    Environment,
    Execute,
    Fence,
    NextFn,
    Pipeline,
    PipelineContext,
    core_function,
    current_fence,
    default_registry,
    register_plugin,
    use_environment,
)
from dcore.errors import StaleFenceError
from dcore.services.storage import StorageInterface


class Report(PipelineContext):
    name: str
    body: bytes


@register_plugin("publish_report", registry=default_registry(), replace=True)
class PublishReport(Execute[Report]):
    """Writes ``reports/<name>.csv`` with the fence of the lock stage before it."""

    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    def execute(self, next_fn: NextFn[Report], context: Report) -> Any:
        key = f"reports/{context.name}.csv"
        self.storage.put_fenced(key, context.body, current_fence())
        return next_fn(context)


@core_function("examples.fencing.published")
def published(context: Report) -> str:
    return f"reports/{context.name}.csv"


def report_pipeline(context: Report) -> Pipeline[Report]:
    pipeline = context.create_pipeline(core_fn=published)
    pipeline.chain(Execute, plugin="lock", key="report:{name}", ttl=60, timeout=5)
    pipeline.chain(Execute, plugin="publish_report")
    return pipeline


def late_holder(env: Environment, ttl: float = 60.0) -> str:
    """A holder paused past its lock's TTL writes after another job took the lock over:
    refused. Returns the refusal."""
    late = env.locks.lock("report:daily", ttl=ttl)
    assert late.acquire()
    env.clock.sleep(ttl + 1)  # paused past its TTL: it does not know the lock is gone
    report_pipeline(Report(name="daily", body=b"fresh")).run()  # another job takes over
    try:
        env.storage.put_fenced("reports/daily.csv", b"stale", Fence.of(late))
    except StaleFenceError as refused:
        return str(refused)
    raise AssertionError("the late holder's write landed")


if __name__ == "__main__":
    # memory storage: memory locks number their fences from 1 in every process, so their
    # fences must not meet records a previous run left in local files (see docs/how-to/fencing.md)
    with Environment(DcoreSettings(storage="memory")) as env, use_environment(env):
        print(report_pipeline(Report(name="daily", body=b"day,total\n1,42\n")).run())
        print(env.storage.fence_of("reports/daily.csv"))
        print(late_holder(env, ttl=0.2))
