"""Simulator throughput, measured against simpy in the same run.

1. Timer workload: 1,000 tasks each sleeping 100 random delays (100,000 timeouts) on
   the simulator's scheduler and on simpy; target: at least 0.5x simpy's events/s.
2. A job workload: 1,000 jobs through a Dispatch and 5 stages (one flaky, retried by
   the job policy with backoff) dispatched over one virtual hour; target: < 5 s wall.

    .venv/bin/python benchmarks/bench_sim.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcore import Execute, NextFn, PipelineContext, register_plugin
from dcore.core.plugins import default_registry
from dcore.services.storage import StorageInterface


class BenchContext(PipelineContext):
    n: int


@register_plugin("bench_step", registry=default_registry(), replace=True)
class Step(Execute[Any]):
    """Writes one object: a service call, so a yield point."""

    def __init__(self, storage: StorageInterface, name: str = "step") -> None:
        self.storage = storage
        self.name = name

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        self.storage.put(f"{self.name}/{context.n}", b"x")
        return next_fn(context)


FAILED_ONCE: set[int] = set()


@register_plugin("bench_flaky", registry=default_registry(), replace=True)
class Flaky(Execute[Any]):
    """Every fifth job fails its first attempt."""

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        if context.n % 5 == 0 and context.n not in FAILED_ONCE:
            FAILED_ONCE.add(context.n)
            raise RuntimeError("transient")
        return next_fn(context)


def core(context: BenchContext) -> int:
    return context.n


TASKS, TIMEOUTS = 1_000, 100


def delays() -> list[list[float]]:
    rng = random.Random(1)
    return [[rng.uniform(0.001, 10.0) for _ in range(TIMEOUTS)] for _ in range(TASKS)]


def bench_simpy(plan: list[list[float]]) -> float:
    import simpy

    env = simpy.Environment()

    def proc(ds: list[float]) -> Any:
        for d in ds:
            yield env.timeout(d)

    for ds in plan:
        env.process(proc(ds))
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start


def bench_dcore_timers(plan: list[list[float]]) -> tuple[float, float]:
    from dcore_testing.sim import SimEnvironment

    sim = SimEnvironment(seed=1, patch_time=False)
    sleep = sim.clock.sleep

    def proc(ds: list[float]) -> None:
        for d in ds:
            sleep(d)

    for ds in plan:
        sim.spawn(proc, ds)
    start = time.perf_counter()
    sim.run_until_idle()
    elapsed = time.perf_counter() - start
    sim.close()
    return elapsed, sim.now


def bench_jobs(jobs: int = 1_000) -> tuple[float, float, dict[str, int]]:
    from dcore import Dispatch, Execute
    from dcore_testing import invariants
    from dcore_testing.sim import SimEnvironment

    sim = SimEnvironment(seed=1, workers=8, patch_time=False, job_attempts=3,
                         job_initial_delay=30.0)
    first = BenchContext(n=0)
    pipeline = first.create_pipeline(core_fn=core)
    pipeline.chain(Dispatch, plugin="schedule_job")
    for name in ("a", "b", "c", "d"):
        pipeline.chain(Execute, plugin="bench_step", name=name)
    pipeline.chain(Execute, plugin="bench_flaky")

    def client() -> None:
        for n in range(jobs):
            pipeline.run(BenchContext(n=n))
            sim.clock.sleep(3600.0 / jobs)

    start = time.perf_counter()
    with sim:
        sim.spawn(client, name="client")
        sim.run_until_idle()
        elapsed = time.perf_counter() - start
        invariants.no_job_lost(sim)
    counts = {k: len(sim.trace.of(k)) for k in ("dispatch", "deliver", "retry", "ack")}
    return elapsed, sim.now, counts


def main() -> int:
    plan = delays()
    # interleaved, best of 5 each: both see the same machine load
    simpy_runs, dcore_runs = [], []
    for _ in range(5):
        simpy_runs.append(bench_simpy(plan))
        dcore_runs.append(bench_dcore_timers(plan)[0])
    simpy_s, dcore_s = min(simpy_runs), min(dcore_runs)
    events = TASKS * TIMEOUTS
    ratio = (events / dcore_s) / (events / simpy_s)
    jobs_s, virtual, counts = bench_jobs()
    rows = [
        ("simpy timers (100k timeouts, 1k tasks)", "baseline", f"{events / simpy_s:,.0f} ev/s", ""),
        ("dcore sim timers (same workload)", "-", f"{events / dcore_s:,.0f} ev/s", ""),
        ("dcore / simpy events per second", ">= 0.50x", f"{ratio:.2f}x",
         "PASS" if ratio >= 0.5 else "MISS"),
        (f"1,000 jobs x 5 stages, {counts['retry']} retries, {virtual / 3600:.2f} h virtual",
         "< 5.00 s", f"{jobs_s:.2f} s", "PASS" if jobs_s < 5.0 else "MISS"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("benchmark", "target", "measured", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\njob workload: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
