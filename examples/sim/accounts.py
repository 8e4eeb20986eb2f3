"""Per-key order across queues: an account's updates must apply in the order they were
sent.

Each job applies one update to an account. Sharded by job id (the default
``shard_key``), one account's updates land on different queues and their workers race:
a later update can apply before an earlier one. The fixed twin shards by account, so
an account's updates share one queue, served by one worker, in order.

    SimEnvironment(workers={"dcore.0": 1, "dcore.1": 1}, dcore... celery_queues=2)
"""

from __future__ import annotations

from typing import Any

from dcore import (
    SHARD_COUNT,
    Dispatch,
    Execute,
    NextFn,
    PipelineContext,
    core_function,
    default_registry,
    register_plugin,
    stable_hash,
)
from dcore_testing import invariants
from dcore_testing.sim import SimEnvironment, effect

QUEUES = {"dcore.0": 1, "dcore.1": 1}


class Update(PipelineContext):
    account: str
    seq: int


class KeyedUpdate(Update):
    @property
    def shard_key(self) -> int:
        return stable_hash(self.account) % SHARD_COUNT


@register_plugin("apply_update", registry=default_registry(), replace=True)
class ApplyUpdate(Execute[Update]):
    def execute(self, next_fn: NextFn[Update], context: Update) -> Any:
        effect("apply", account=context.account, seq=context.seq)
        return next_fn(context)


@core_function
def applied(context: Update) -> int:
    return context.seq


def send_updates(sim: SimEnvironment, kind: type[Update]) -> None:
    for seq in range(4):
        update = kind(account="acct-7", seq=seq)
        pipeline = update.create_pipeline(core_fn=applied)
        pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="apply_update")
        pipeline.run()
    sim.run_until_idle()
    invariants.per_key_order(sim, "apply", key="account")


def buggy(sim: SimEnvironment) -> None:
    send_updates(sim, Update)


def fixed(sim: SimEnvironment) -> None:
    send_updates(sim, KeyedUpdate)


buggy.sim_options = fixed.sim_options = {  # type: ignore[attr-defined]
    "workers": QUEUES,
    "celery_queues": 2,
}
