"""Simulator throughput, measured against simpy in the same run.

1. Timer workload: 1,000 tasks each sleeping 100 random delays (100,000 timeouts) on
   the simulator's scheduler and on simpy, in interleaved rounds (both see the same
   machine load); min and median of the rounds; target: at least 1.0x simpy's events/s.
   ``--instructions`` also counts both variants' instructions under callgrind (see
   ``_instructions.py``): a ratio that machine load cannot move.
2. A job workload: 1,000 jobs through a Dispatch and 5 stages (one flaky, retried by
   the job policy with backoff) dispatched over one virtual hour; target: < 5 s wall.

    .venv/bin/python benchmarks/bench_sim.py [--rounds 11] [--instructions]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _instructions

from dcore import Execute, NextFn, PipelineContext, register_plugin
from dcore._plugins.registry import default_registry
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


def simpy_timers() -> Callable[[], object]:
    """simpy's timer workload, set up; returns the run to measure."""
    import simpy

    env = simpy.Environment()

    def proc(ds: list[float]) -> Any:
        for d in ds:
            yield env.timeout(d)

    for ds in delays():
        env.process(proc(ds))
    return env.run


def dcore_timers() -> Callable[[], object]:
    """The same workload on the simulator's scheduler; returns the run to measure."""
    from dcore_testing.sim import SimEnvironment

    sim = SimEnvironment(seed=1, patch_time=False)
    sleep = sim.clock.sleep

    def proc(ds: list[float]) -> None:
        for d in ds:
            sleep(d)

    for ds in delays():
        sim.spawn(proc, ds)

    return sim.run_until_idle


def timed(spec: Callable[[], Callable[[], object]]) -> float:
    """Seconds taken by one run of a variant (its setup not counted)."""
    measured = spec()
    gc.collect()
    start = time.perf_counter()
    measured()
    return time.perf_counter() - start


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11,
                        help="interleaved timed rounds of each timer variant (default 11)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count the timer variants' instructions under callgrind")
    args = parser.parse_args(argv)
    if args.instructions and not _instructions.available():
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    # interleaved rounds: both variants see the same machine load
    simpy_runs, dcore_runs = [], []
    for _ in range(args.rounds):
        simpy_runs.append(timed(simpy_timers))
        dcore_runs.append(timed(dcore_timers))
    events = TASKS * TIMEOUTS
    ratios = sorted(s / d for s, d in zip(simpy_runs, dcore_runs, strict=True))

    def rate(runs: list[float]) -> str:
        return (f"{events / min(runs):,.0f} / {events / statistics.median(runs):,.0f} ev/s")

    best = min(simpy_runs) / min(dcore_runs)
    median = statistics.median(ratios)
    rows = [
        ("simpy timers (100k timeouts, 1k tasks), best / median", "baseline",
         rate(simpy_runs), ""),
        ("dcore sim timers (same workload), best / median", "-", rate(dcore_runs), ""),
        ("dcore / simpy events/s: best / median (round range)", ">= 1.00x",
         f"{best:.2f}x / {median:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})",
         "PASS" if median >= 1.0 else "MISS"),
    ]
    if args.instructions:
        counts = _instructions.compare(simpy_timers, dcore_timers)
        rows += [
            ("simpy timers, instructions per timeout", "baseline",
             f"{counts.baseline / events:,.0f}", ""),
            ("dcore sim timers, instructions per timeout", "-",
             f"{counts.candidate / events:,.0f}", ""),
            ("dcore / simpy by instructions", ">= 1.00x", f"{counts.speed:.2f}x",
             "PASS" if counts.speed >= 1.0 else "MISS"),
        ]
    jobs_s, virtual, counts_by_kind = bench_jobs()
    rows.append((f"1,000 jobs x 5 stages, {counts_by_kind['retry']} retries, "
                 f"{virtual / 3600:.2f} h virtual", "< 5.00 s", f"{jobs_s:.2f} s",
                 "PASS" if jobs_s < 5.0 else "MISS"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("benchmark", "target", "measured", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\njob workload: {counts_by_kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
