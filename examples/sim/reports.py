"""A partition longer than the lease: another worker takes the job over while the first
one still runs it.

``build_report`` works for 30 s. If its worker is cut off from the job store for longer
than ``DCORE_LEASE_TTL`` (15 s), it cannot renew the job's lease; the broker's
redelivery finds the lease run out and a second worker runs the job alongside the first
(the first one's moves are refused afterwards, but its work is done twice). The fixed
twin runs with a lease longer than the partitions it must survive.

    FaultPlan(Partition(service="jobs", workers=(1,), start=1.0, seconds=40.0),
              Crash(...)/Duplicate() ...)
"""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    PipelineContext,
    core_function,
    current_environment,
    default_registry,
    register_plugin,
)
from dcore_testing import invariants
from dcore_testing.sim import SimEnvironment


class Report(PipelineContext):
    month: str


@register_plugin("build_report", registry=default_registry(), replace=True)
class BuildReport(Execute[Report]):
    def execute(self, next_fn: NextFn[Report], context: Report) -> Any:
        current_environment().clock.sleep(30.0)  # the slow part
        return next_fn(context)


@core_function
def built(context: Report) -> str:
    return context.month


def build(sim: SimEnvironment) -> None:
    pipeline = Report(month="2026-11").create_pipeline(core_fn=built)
    pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="build_report")
    pipeline.run()
    sim.run_until_idle()
    invariants.no_concurrent_runs(sim)
    invariants.no_job_lost(sim)


def buggy(sim: SimEnvironment) -> None:
    build(sim)


def fixed(sim: SimEnvironment) -> None:
    build(sim)


fixed.sim_options = {"lease_ttl": 120.0}  # type: ignore[attr-defined]
