"""Simulator throughput, measured against simpy in the same run.

1. Timer workload: 1,000 tasks each sleeping 100 random delays (100,000 timeouts) on
   the simulator's scheduler and on simpy, in interleaved rounds (both see the same
   machine load); min and median of the rounds; target: at least 1.0x simpy's events/s.
   ``--instructions`` also counts both variants' instructions under callgrind (see
   ``_instructions.py``): a ratio that machine load cannot move.
2. One simulated job against the same pipeline inline: a Dispatch and 5 stages (each
   writes one object) run by ``pipeline.run(ctx)`` and ``sim.run_until_idle()`` in a
   ``SimEnvironment``, against the strict baseline, the very same pipeline in a plain
   ``Environment`` with the same in-memory services, where the ``inline`` Dispatch runs
   the rest in the caller (the job is recorded, claimed and finished there as well).
   The simulated run adds what simulating is: the hand-off through the broker, a worker
   task, a yield and a trace event per service call. Target: at most 1.5x the inline
   cost per job. A lenient baseline, the same inline pipeline inside the
   ``SimEnvironment`` (its proxied services, no broker), is printed beside it.
3. ``explore`` over a 2-job scenario (2 jobs shipped through the ``celery`` Dispatch
   to 2 simulated workers, ``no_job_lost`` checked): seeds per second; target: at least
   2,500. Printed as references, per seed: the same scenario's jobs run inline in a
   plain ``Environment``, and shipped through production's own message path with no
   simulation (record, message, ``deliver_message``), which a seed cannot undercut.
4. A job workload: 1,000 jobs through a Dispatch and 5 stages (one flaky, retried by
   the job policy with backoff) dispatched over one virtual hour; target: < 5 s wall.

Every timed figure is the min and median of rounds that interleave the variants in a
rotating order. ``--instructions`` counts each variant under callgrind.

    .venv/bin/python benchmarks/bench_sim.py [--rounds 11] [--instructions] [--quick]
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

from dcore import (
    Dispatch,
    Execute,
    JobHandle,
    NextFn,
    PipelineContext,
    core_function,
    default_registry,
    register_plugin,
)
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


# -- one job: simulated vs inline ---------------------------------------------------------------
JOBS_PER_ROUND = 200
STAGES = ("a", "b", "c", "d", "e")


def _job_pipeline(dispatch: str, first: BenchContext) -> Any:
    """A Dispatch (``dispatch``) and 5 stages that each write one object, then ``core``."""
    from dcore import Dispatch

    pipeline = first.create_pipeline(core_fn=core)
    pipeline.chain(Dispatch, plugin=dispatch)
    for name in STAGES:
        pipeline.chain(Execute, plugin="bench_step", name=name)
    return pipeline


def _plain_environment() -> Any:
    """A plain Environment with the in-memory services the simulator starts from."""
    from dcore import DcoreSettings, Environment

    return Environment(
        DcoreSettings(storage="memory", event_bus="memory", job_store="memory", locks="memory")
    )


def inline_jobs() -> Callable[[], object]:
    """Strict baseline: the same pipeline in a plain Environment, its Dispatch ``inline``
    (the rest runs in the caller); returns JOBS_PER_ROUND runs (pipeline built and run
    once before, so the measured runs find it compiled)."""
    from dcore import use_environment

    env = _plain_environment()
    pipeline = _job_pipeline("inline", BenchContext(n=0))
    contexts = [BenchContext(n=n) for n in range(1, JOBS_PER_ROUND + 1)]
    with use_environment(env):
        pipeline.run()

    def run() -> None:
        with use_environment(env):
            for ctx in contexts:
                pipeline.run(ctx)

    return run


def sim_inline_jobs() -> Callable[[], object]:
    """Lenient baseline: the same inline pipeline inside a SimEnvironment (its proxied
    services and trace, but no hand-off: the Dispatch is not simulated, since the
    caller runs outside any simulated task)."""
    from dcore_testing.sim import SimEnvironment

    sim = SimEnvironment(seed=1, workers=2, patch_time=False)
    sim.dispatch_wrapper = None  # keep the inline Dispatch as it is
    pipeline = _job_pipeline("inline", BenchContext(n=0))
    with sim:
        contexts = [BenchContext(n=n) for n in range(1, JOBS_PER_ROUND + 1)]
        pipeline.run()

    def run() -> None:
        with sim:
            for ctx in contexts:
                pipeline.run(ctx)

    return run


def sim_jobs() -> Callable[[], object]:
    """The same pipeline in a SimEnvironment: each job handed to the broker and run by a
    simulated worker (``run(ctx)`` then ``run_until_idle()``), every step traced."""
    from dcore_testing.sim import SimEnvironment

    sim = SimEnvironment(seed=1, workers=2, patch_time=False)
    pipeline = _job_pipeline("inline", BenchContext(n=0))
    with sim:
        contexts = [BenchContext(n=n) for n in range(1, JOBS_PER_ROUND + 1)]
        pipeline.run()
        sim.run_until_idle()

    def run() -> None:
        with sim:
            for ctx in contexts:
                pipeline.run(ctx)
                sim.run_until_idle()
        assert len(sim.trace.of("ack")) == JOBS_PER_ROUND + 1, "a simulated job did not end"

    return run


# -- explore: a 2-job scenario ------------------------------------------------------------------
SEEDS_PER_ROUND = 200


class TwoJobs(PipelineContext):
    order: int


@register_plugin("bench_write", registry=default_registry(), replace=True)
class Write(Execute[Any]):
    """Writes the order's object (a service call: a yield point in the simulator)."""

    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        self.storage.put(f"orders/{context.order}", b"x")
        return next_fn(context)


@core_function("bench_sim.two_jobs_done", replace=True)
def two_jobs_done(context: TwoJobs) -> int:
    return context.order


def two_jobs_pipeline(ctx: TwoJobs, dispatch: str) -> Any:
    from dcore import Dispatch

    pipeline = ctx.create_pipeline(core_fn=two_jobs_done)
    pipeline.chain(Dispatch, plugin=dispatch).chain(Execute, plugin="bench_write")
    return pipeline


def two_jobs(sim: Any) -> None:
    """The scenario: two orders shipped to the workers, run, no job lost."""
    from dcore_testing import invariants

    for order in (1, 2):
        two_jobs_pipeline(TwoJobs(order=order), "celery").run()
    sim.run_until_idle()
    invariants.no_job_lost(sim)


def explore_seeds() -> Callable[[], object]:
    """``explore(two_jobs, SEEDS_PER_ROUND seeds)`` (one seed run before, so imports and
    caches are warm); every seed must pass."""
    from dcore_testing.sim import explore

    assert not explore(two_jobs, range(1))

    def run() -> None:
        failures = explore(two_jobs, range(SEEDS_PER_ROUND))
        assert not failures, failures[0].error

    return run


def inline_two_jobs() -> Callable[[], object]:
    """Reference for a seed: the scenario's two jobs run inline in a plain Environment
    (new pipelines each time, as the scenario builds them), SEEDS_PER_ROUND times."""
    from dcore import use_environment

    env = _plain_environment()
    with use_environment(env):
        two_jobs_pipeline(TwoJobs(order=0), "inline").run()

    def run() -> None:
        with use_environment(env):
            for _ in range(SEEDS_PER_ROUND):
                for order in (1, 2):
                    two_jobs_pipeline(TwoJobs(order=order), "inline").run()

    return run


class _Captured(Dispatch[Any]):
    """A Dispatch's stand-in that keeps each shipped job's message instead of sending
    it (what the celery Dispatch would send: the job record is written before)."""

    def __init__(self, inner: Any, sent: list[str]) -> None:
        self.inner = inner
        self.sent = sent

    def is_remote(self) -> bool:
        return True

    def dispatch(self, next_fn: Any, context: Any) -> JobHandle:
        self.sent.append(next_fn.to_json(context))
        return JobHandle(job_id=context.job_id, status="scheduled")


class _NoHeartbeat:
    def stop(self) -> None:
        pass


def shipped_two_jobs() -> Callable[[], object]:
    """Reference for a seed: the scenario's two jobs through production's own message
    path with no simulation, SEEDS_PER_ROUND times. Each time a fresh plain Environment
    (as each seed has a fresh simulation) ships both orders through the celery Dispatch
    (job record written, message built and kept) and delivers each message with
    ``deliver_message`` (parsed, pipeline rebuilt and compiled, claimed, run, ended).
    Leases are not renewed: a worker's lease thread is started once per process, not
    per job (and the simulator renews on virtual time)."""
    from dcore import Environment, use_environment
    from dcore.engine import deliver_message

    class Shared(Environment):
        memory_services_shared = True  # (as in the simulator: one process's services)

        def keep_lease(self, job_id: str, owner: str, lease: float) -> Any:
            return _NoHeartbeat()

    settings = _plain_environment().settings

    def seed() -> None:
        env = Shared(settings.model_copy())
        sent: list[str] = []
        env.dispatch_wrapper = lambda inner: _Captured(inner, sent)
        with use_environment(env):
            for order in (1, 2):
                two_jobs_pipeline(TwoJobs(order=order), "celery").run()
            for raw in sent:
                assert deliver_message(raw, environment=env).error is None
        env.close()

    seed()

    def run() -> None:
        for _ in range(SEEDS_PER_ROUND):
            seed()

    return run


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


def interleaved(
    specs: dict[str, Callable[[], Callable[[], object]]], rounds: int
) -> dict[str, list[float]]:
    """Seconds of each variant per round; each round runs every variant once, in an
    order rotated from round to round, so load elsewhere hits them alike."""
    names = list(specs)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(timed(specs[name]))
    return runs


def per_round_ratios(runs: dict[str, list[float]], candidate: str, baseline: str) -> list[float]:
    """candidate time / baseline time within each round, sorted."""
    return sorted(c / b for c, b in zip(runs[candidate], runs[baseline], strict=True))


def bench_jobs(jobs: int = 1_000) -> tuple[float, float, dict[str, int]]:
    from dcore import Dispatch, Execute
    from dcore_testing import invariants
    from dcore_testing.sim import SimEnvironment

    sim = SimEnvironment(
        seed=1, workers=8, patch_time=False, job_attempts=3, job_initial_delay=30.0
    )
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


def _ms(runs: list[float], per: int) -> str:
    return f"{min(runs) / per * 1e6:,.1f} / {statistics.median(runs) / per * 1e6:,.1f} us"


def _ratio(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=11,
        help="interleaved timed rounds of each variant (default 11)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each variant's instructions under callgrind",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    parser.add_argument(
        "--only",
        choices=("timers", "jobs", "explore", "workload"),
        action="append",
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.instructions and not _instructions.available():
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    rounds = 3 if args.quick else args.rounds
    parts = set(args.only or ("timers", "jobs", "explore", "workload"))
    rows: list[tuple[str, str, str, str]] = []

    if "timers" in parts:
        runs = interleaved({"simpy": simpy_timers, "dcore": dcore_timers}, rounds)
        simpy_runs, dcore_runs = runs["simpy"], runs["dcore"]
        events = TASKS * TIMEOUTS
        ratios = sorted(s / d for s, d in zip(simpy_runs, dcore_runs, strict=True))

        def rate(runs: list[float]) -> str:
            return f"{events / min(runs):,.0f} / {events / statistics.median(runs):,.0f} ev/s"

        best = min(simpy_runs) / min(dcore_runs)
        median = statistics.median(ratios)
        rows += [
            (
                "simpy timers (100k timeouts, 1k tasks), best / median",
                "baseline",
                rate(simpy_runs),
                "",
            ),
            ("dcore sim timers (same workload), best / median", "-", rate(dcore_runs), ""),
            (
                "dcore / simpy events/s: best / median (round range)",
                ">= 1.00x",
                f"{best:.2f}x / {median:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})",
                "PASS" if median >= 1.0 else "MISS",
            ),
        ]
        if args.instructions:
            counts = _instructions.compare(simpy_timers, dcore_timers)
            rows += [
                (
                    "simpy timers, instructions per timeout",
                    "baseline",
                    f"{counts.baseline / events:,.0f}",
                    "",
                ),
                (
                    "dcore sim timers, instructions per timeout",
                    "-",
                    f"{counts.candidate / events:,.0f}",
                    "",
                ),
                (
                    "dcore / simpy by instructions",
                    ">= 1.00x",
                    f"{counts.speed:.2f}x",
                    "PASS" if counts.speed >= 1.0 else "MISS",
                ),
            ]

    if "jobs" in parts:
        runs = interleaved(
            {"inline": inline_jobs, "sim_inline": sim_inline_jobs, "sim": sim_jobs}, rounds
        )
        strict = per_round_ratios(runs, "sim", "inline")
        lenient = per_round_ratios(runs, "sim", "sim_inline")
        n = JOBS_PER_ROUND
        rows += [
            (
                "strict: Dispatch + 5 stages inline, plain Environment, per job (min / median)",
                "baseline",
                _ms(runs["inline"], n),
                "",
            ),
            (
                "lenient: the same inline inside the SimEnvironment, per job",
                "-",
                _ms(runs["sim_inline"], n),
                "",
            ),
            ("a simulated job (Dispatch + 5 stages), per job", "-", _ms(runs["sim"], n), ""),
            (
                "simulated job / strict inline (median of rounds)",
                "<= 1.50x",
                _ratio(strict),
                "PASS" if statistics.median(strict) <= 1.5 else "MISS",
            ),
            ("simulated job / lenient inline (median of rounds)", "-", _ratio(lenient), ""),
        ]
        if args.instructions:
            counts = _instructions.compare(inline_jobs, sim_jobs)
            lenient_count = _instructions.count(sim_inline_jobs)
            rows += [
                (
                    "strict inline, instructions per job",
                    "baseline",
                    f"{counts.baseline / n:,.0f}",
                    "",
                ),
                (
                    "lenient inline in the SimEnvironment, instructions per job",
                    "-",
                    f"{lenient_count / n:,.0f}",
                    "",
                ),
                ("simulated job, instructions per job", "-", f"{counts.candidate / n:,.0f}", ""),
                (
                    "simulated / strict inline by instructions",
                    "<= 1.50x",
                    f"{1 / counts.speed:.2f}x",
                    "PASS" if 1 / counts.speed <= 1.5 else "MISS",
                ),
            ]

    if "explore" in parts:
        runs = interleaved(
            {"inline": inline_two_jobs, "shipped": shipped_two_jobs, "explore": explore_seeds},
            rounds,
        )
        n = SEEDS_PER_ROUND
        seeds = runs["explore"]
        best, median = n / min(seeds), n / statistics.median(seeds)
        ratios = per_round_ratios(runs, "explore", "inline")
        shipped = per_round_ratios(runs, "explore", "shipped")
        rows += [
            (
                "reference: the scenario's 2 jobs inline, plain Environment, per seed",
                "-",
                _ms(runs["inline"], n),
                "",
            ),
            (
                "reference: the 2 jobs shipped and delivered by production, no simulation",
                "-",
                _ms(runs["shipped"], n),
                "",
            ),
            ("explore, a 2-job scenario, per seed", "-", _ms(seeds, n), ""),
            (
                "explore, a 2-job scenario: seeds/s best / median",
                ">= 2,500/s",
                f"{best:,.0f} / {median:,.0f}",
                "PASS" if median >= 2500 else "MISS",
            ),
            ("explore seed / the 2 jobs inline (median of rounds)", "-", _ratio(ratios), ""),
            ("explore seed / the 2 jobs shipped (median of rounds)", "-", _ratio(shipped), ""),
        ]
        if args.instructions:
            counts = _instructions.compare(inline_two_jobs, explore_seeds)
            shipped_count = _instructions.count(shipped_two_jobs)
            rows += [
                (
                    "the 2 jobs inline, instructions per seed",
                    "-",
                    f"{counts.baseline / n:,.0f}",
                    "",
                ),
                (
                    "the 2 jobs shipped by production, instructions per seed",
                    "-",
                    f"{shipped_count / n:,.0f}",
                    "",
                ),
                ("explore, instructions per seed", "-", f"{counts.candidate / n:,.0f}", ""),
            ]

    counts_by_kind: dict[str, int] = {}
    if "workload" in parts:
        jobs_s, virtual, counts_by_kind = bench_jobs()
        rows.append(
            (
                f"1,000 jobs x 5 stages, {counts_by_kind['retry']} retries, "
                f"{virtual / 3600:.2f} h virtual",
                "< 5.00 s",
                f"{jobs_s:.2f} s",
                "PASS" if jobs_s < 5.0 else "MISS",
            )
        )

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("benchmark", "target", "measured", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print(f"{rounds} interleaved rounds")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if counts_by_kind:
        print(f"\njob workload: {counts_by_kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
