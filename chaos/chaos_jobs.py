"""The pipeline the Celery partition scenario ships to a real worker.

The worker imports this module by name (``DCORE_IMPORTS=chaos_jobs``, with this
directory on its PYTHONPATH), so the context type and the core function resolve there.
"""

from __future__ import annotations

import time
from typing import Any

from dcore import Dispatch, Execute, PipelineContext, core_function


class ChaosWork(PipelineContext):
    n: int
    #: how long the core function works, so a partition lands while jobs are running
    work_seconds: float = 0.0


@core_function
def do_work(ctx: ChaosWork) -> dict[str, int]:
    if ctx.work_seconds:
        time.sleep(ctx.work_seconds)  # a stand-in for work, not synchronisation
    return {"n": ctx.n}


def build(ctx: ChaosWork) -> Any:
    pipeline = ctx.create_pipeline(core_fn=do_work)
    pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="logging")
    return pipeline
