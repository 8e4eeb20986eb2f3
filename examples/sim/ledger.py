"""A crash right after a write: the redelivery writes again.

``post_entry`` appends the job's line to one ledger object (read, append, write back).
If the worker dies just after the write reached storage, before the job was recorded
done, the redelivery appends the line a second time. The fixed twin writes one object
per job (``ledger/<order>``): writing it again writes the same thing.

    FaultPlan(Crash(op="storage.put", when="after"))     # the planted crash
    FaultPlan(crash_op=0.2)                              # or drawn at any call
"""

from __future__ import annotations

import json
from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    PipelineContext,
    core_function,
    default_registry,
    register_plugin,
)
from dcore.services.storage import StorageInterface
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import SimEnvironment

LEDGER = "ledger.json"


class Posting(PipelineContext):
    order: str
    amount: int


@register_plugin("post_entry", registry=default_registry(), replace=True)
class PostEntry(Execute[Posting]):
    def __init__(self, storage: StorageInterface, per_job: bool = False) -> None:
        self.storage = storage
        self.per_job = per_job

    def execute(self, next_fn: NextFn[Posting], context: Posting) -> Any:
        line = {"order": context.order, "amount": context.amount}
        if self.per_job:
            self.storage.put(f"ledger/{context.order}", json.dumps(line).encode())
        else:
            lines = json.loads(self.storage.get(LEDGER)) if self.storage.exists(LEDGER) else []
            self.storage.put(LEDGER, json.dumps([*lines, line]).encode())
        return next_fn(context)


@core_function
def posted(context: Posting) -> str:
    return context.order


def post(sim: SimEnvironment, *, fixed: bool) -> None:
    """One order through the ledger, then check it holds the order exactly once."""
    ctx = Posting(order="o-1", amount=250)
    pipeline = ctx.create_pipeline(core_fn=posted)
    pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="post_entry", per_job=fixed)
    pipeline.run()
    sim.run_until_idle()
    storage = sim.storage.inner  # type: ignore[attr-defined]
    if fixed:
        orders = [json.loads(storage.get(i.key))["order"] for i in storage.list("ledger/")]
    else:
        orders = [line["order"] for line in json.loads(storage.get(LEDGER))]
    if orders != ["o-1"]:
        raise InvariantViolation(f"the ledger holds {orders}, expected the order once")


def buggy(sim: SimEnvironment) -> None:
    post(sim, fixed=False)


def fixed(sim: SimEnvironment) -> None:
    post(sim, fixed=True)
