"""Benchmark the pipeline runner against hand-written nested closures.

Run: ``python benchmarks/bench_pipeline.py [--quick]``. Prints one table measured in this
run; ratios are against the closure baseline measured in the same process, so they do not
depend on how fast the machine is.

* run: a 10-stage Execute pipeline built once, run on a fresh context per call
  (target: at most 3x the closures)
* build + run: ``create_pipeline`` + 10 ``chain()`` + ``run()`` per request
  (target: at most 40x the closures)

Every variant does the same work per stage (increment a counter on the context) over
contexts created before the timer starts.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

from dcore import (
    DcoreSettings,
    Environment,
    Execute,
    NextFn,
    Pipeline,
    PipelineContext,
    register_plugin,
    use_environment,
    use_registry,
)
from dcore.core.plugins import default_registry

STAGES = 10


class BenchContext(PipelineContext):
    count: int = 0


class Increment(Execute[BenchContext]):
    """The stage under test: one attribute update, then continue."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def execute(self, next_fn: NextFn[BenchContext], context: BenchContext) -> Any:
        context.count += self.step
        return next_fn(context)


def core(ctx: BenchContext) -> int:
    return ctx.count


def closures() -> Callable[[BenchContext], Any]:
    """The same work as the pipeline, written by hand as nested closures."""

    def wrap(next_call: Callable[[BenchContext], Any], step: int) -> Callable[[BenchContext], Any]:
        def call(ctx: BenchContext) -> Any:
            ctx.count += step
            return next_call(ctx)

        return call

    call: Callable[[BenchContext], Any] = core
    for _ in range(STAGES):
        call = wrap(call, 1)
    return call


def build(ctx: BenchContext) -> Pipeline[BenchContext]:
    pipeline = ctx.create_pipeline(core)
    for _ in range(STAGES):
        pipeline.chain(Execute, plugin="bench_increment", step=1)
    return pipeline


def time_once(fn: Callable[[BenchContext], Any], n: int) -> float:
    """Seconds per call of ``fn`` over ``n`` fresh contexts made before the timer starts."""
    contexts = [BenchContext() for _ in range(n)]
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for ctx in contexts:
            fn(ctx)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    assert all(c.count == STAGES for c in contexts)
    return elapsed / n


def measure(
    variants: list[tuple[Callable[[BenchContext], Any], int]], repeats: int
) -> list[float]:
    """Best seconds per call of each variant. Rounds interleave the variants, so a burst
    of load elsewhere on the machine hits the baseline and the pipeline alike."""
    best = [float("inf")] * len(variants)
    for _ in range(repeats):
        for i, (fn, n) in enumerate(variants):
            best[i] = min(best[i], time_once(fn, n))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    n, repeats = (2_000, 3) if args.quick else (10_000, 11)

    registry = default_registry().copy()
    with use_registry(registry):
        register_plugin("bench_increment")(Increment)
        env = Environment(DcoreSettings(), registry=registry)
        with use_environment(env):
            baseline = closures()
            built = build(BenchContext())
            built.run(BenchContext())  # freeze outside the timer

            def build_and_run(ctx: BenchContext) -> Any:
                return build(ctx).run()

            closures_s, run_s, build_s = measure(
                [(baseline, n), (built.run, n), (build_and_run, n // 4)], repeats
            )
            rows = [
                ("closures (baseline)", closures_s, None),
                ("pipeline run (built once)", run_s, 3.0),
                ("build + run per request", build_s, 40.0),
            ]

    base = rows[0][1]
    print(f"{STAGES}-stage Execute pipeline, best of {repeats} rounds")
    print(f"{'variant':<28} {'µs/call':>9} {'x closures':>11} {'target':>8}  result")
    for name, seconds, target in rows:
        ratio = seconds / base
        verdict = "" if target is None else ("PASS" if ratio <= target else "MISS")
        shown = "" if target is None else f"<= {target:g}x"
        print(f"{name:<28} {seconds * 1e6:>9.2f} {ratio:>10.1f}x {shown:>8}  {verdict}")


if __name__ == "__main__":
    main()
