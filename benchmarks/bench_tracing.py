"""Benchmark the tracing stage: what a span per stage costs.

Run: ``python benchmarks/bench_tracing.py [--quick]``. A 10-stage pass-through pipeline
is run on fresh contexts in three variants, all measured in this process:

* no tracing stage (the baseline)
* tracing with OpenTelemetry's no-op tracer provider (the API without an SDK)
* tracing with the SDK (TracerProvider + SimpleSpanProcessor, exporter that drops spans)

The table shows time per run, the ratio to the baseline and the added cost per stage.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from dcore import (
    DcoreSettings,
    Environment,
    Execute,
    NextFn,
    Pipeline,
    PipelineContext,
    use_environment,
    use_registry,
)
from dcore._plugins.registry import default_registry
from dcore.stages.tracing import use_tracer_provider

STAGES = 10


class BenchContext(PipelineContext):
    n: int = 0


class Step(Execute[Any]):
    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        context.n += 1
        return next_fn(context)


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def core(ctx: BenchContext) -> int:
    return ctx.n


def build(traced: bool) -> Pipeline[Any]:
    pipeline = BenchContext().create_pipeline(core)
    if traced:
        pipeline.chain(Execute, plugin="tracing")
    for _ in range(STAGES - traced):
        pipeline.chain(Execute, plugin="bench_step")
    return pipeline


def measure(pipeline: Pipeline[Any], runs: int) -> float:
    contexts = [BenchContext() for _ in range(runs)]
    pipeline.run(BenchContext())  # freeze outside the timer
    gc.collect()
    start = time.perf_counter()
    for ctx in contexts:
        pipeline.run(ctx)
    return (time.perf_counter() - start) / runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    runs = 2_000 if parser.parse_args().quick else 20_000
    registry = default_registry().copy()
    registry.register("bench_step", Step)
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(Drop()))
    env = Environment(DcoreSettings(storage_root=".dcore/bench"), registry=registry)
    rows = []
    with use_registry(registry), use_environment(env):
        base = measure(build(traced=False), runs)
        rows.append(("no tracing stage", base))
        with use_tracer_provider(NoOpTracerProvider()):
            rows.append(("tracing, no-op tracer", measure(build(traced=True), runs)))
        with use_tracer_provider(sdk):
            rows.append(("tracing, SDK tracer", measure(build(traced=True), runs)))
    sdk.shutdown()
    print(f"{STAGES} stages, {runs} runs each")
    print(f"{'variant':<24} {'µs/run':>9} {'ratio':>7} {'µs/stage added':>15}")
    for name, t in rows:
        print(f"{name:<24} {t * 1e6:>9.1f} {t / base:>6.1f}x {(t - base) * 1e6 / STAGES:>15.1f}")


if __name__ == "__main__":
    main()
