"""The tracing stage: a span per stage with dcore.* attributes and error status, and one
trace across the Dispatch boundary (thread dispatcher, and a JobMessage run elsewhere)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dcore import (
    Dispatch,
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PluginRegistry,
    RetryPolicy,
    core_function,
    run_message,
)
from dcore._core.message import (
    JobMessage,
    TracePropagator,
    set_trace_propagator,
    trace_propagator,
)
from dcore.dispatchers.thread import ThreadDispatcher
from dcore.stages.tracing import OTelPropagator, use_tracer_provider


class TracedCtx(PipelineContext):
    fail_until: int = 0


@core_function
def traced_core(ctx: TracedCtx) -> str:
    return "done"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    previous = trace_propagator()
    with use_tracer_provider(provider):
        yield exp
    set_trace_propagator(previous)
    provider.shutdown()


@pytest.fixture
def env(dcore_manual_env: Environment) -> Environment:
    dcore_manual_env.memory_services_shared = True  # its worker is this process
    return dcore_manual_env


@pytest.fixture
def steps(dcore_registry: PluginRegistry) -> dict[str, int]:
    """``step`` passes; ``shaky`` fails while its call count <= ctx.fail_until."""
    count = {"shaky": 0}

    class Step(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            return next_fn(context)

    class Shaky(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            count["shaky"] += 1
            if count["shaky"] <= context.fail_until:
                raise ConnectionError(f"shaky call {count['shaky']}")
            return next_fn(context)

    dcore_registry.register("step", Step)
    dcore_registry.register("shaky", Shaky)
    return count


def by_stage(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {str(s.attributes["dcore.stage"]): s for s in spans}  # type: ignore[index]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_thread_dispatch_background_spans_are_children_in_the_request_trace(
    env: Environment, exporter: InMemorySpanExporter, steps: dict[str, int]
) -> None:
    ctx = TracedCtx()
    pipeline = ctx.create_pipeline(traced_core)
    pipeline.chain(Execute("tracing")).chain(Execute("step")).chain(Dispatch("thread"))
    pipeline.chain(Execute("step")).chain(Execute("shaky"))
    pipeline.run()
    ThreadDispatcher.drain(10)
    spans = by_stage(exporter.get_finished_spans())
    assert set(spans) == {"tracing#0", "step#1", "step#3", "shaky#4"}
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert parent_of(spans["tracing#0"]) is None
    assert parent_of(spans["step#1"]) == spans["tracing#0"].context.span_id
    # the hand-off happened inside step#1: the background part continues from there
    assert parent_of(spans["step#3"]) == spans["step#1"].context.span_id
    assert parent_of(spans["shaky#4"]) == spans["step#3"].context.span_id
    assert dict(spans["shaky#4"].attributes or {}) == {
        "dcore.job_id": ctx.job_id,
        "dcore.stage": "shaky#4",
        "dcore.plugin": "shaky",
        "dcore.interface": "Execute",
        "dcore.attempt": 1,
    }


def test_a_message_run_elsewhere_continues_the_trace_it_carries(
    env: Environment, exporter: InMemorySpanExporter, steps: dict[str, int]
) -> None:
    ctx = TracedCtx()
    shipped: list[str] = []

    class Ship(Dispatch[Any]):
        remote = True

        def dispatch(self, next_fn: Any, context: Any) -> str:
            shipped.append(next_fn.to_message(context).to_json())
            return "shipped"

    env.registry.register("ship", Ship)
    pipeline = ctx.create_pipeline(traced_core)
    pipeline.chain(Execute("tracing")).chain(Dispatch("ship")).chain(Execute("step"))
    assert pipeline.run() == "shipped"
    (raw,) = shipped
    assert JobMessage.parse(raw).trace["traceparent"].startswith("00-")

    # a worker thread with no trace context of its own, as in a Celery worker process
    worker = threading.Thread(target=run_message, args=(raw,), kwargs={"environment": env})
    worker.start()
    worker.join()
    spans = by_stage(exporter.get_finished_spans())
    assert spans["step#2"].context.trace_id == spans["tracing#0"].context.trace_id
    assert parent_of(spans["step#2"]) == spans["tracing#0"].context.span_id


def test_a_failing_stage_span_has_error_status_and_the_exception(
    env: Environment, exporter: InMemorySpanExporter, steps: dict[str, int]
) -> None:
    pipeline = TracedCtx(fail_until=1).create_pipeline(traced_core)
    pipeline.chain(Execute("tracing")).chain(Execute("shaky"))
    with pytest.raises(ConnectionError):
        pipeline.run()
    spans = by_stage(exporter.get_finished_spans())
    failed, outer = spans["shaky#1"], spans["tracing#0"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ConnectionError: shaky call 1"
    assert [e.name for e in failed.events] == ["exception"]
    assert outer.status.status_code is StatusCode.ERROR
    assert outer.events == ()  # recorded once, where it was raised
    assert outer.attributes is not None
    assert outer.attributes["dcore.error.origin"] == "shaky#1"


def test_each_job_attempt_is_traced_with_its_attempt_number(
    env: Environment, exporter: InMemorySpanExporter, steps: dict[str, int]
) -> None:
    pipeline = TracedCtx(fail_until=1).create_pipeline(traced_core)
    pipeline.chain(Execute("tracing")).chain(Dispatch("thread"), retry=RetryPolicy(attempts=2))
    pipeline.chain(Execute("shaky"))
    pipeline.run()
    ThreadDispatcher.drain(10)
    shaky = [s for s in exporter.get_finished_spans() if s.name == "dcore shaky"]
    assert sorted((s.attributes or {})["dcore.attempt"] for s in shaky) == [1, 2]
    statuses = {(s.attributes or {})["dcore.attempt"]: s.status.status_code for s in shaky}
    assert statuses == {1: StatusCode.ERROR, 2: StatusCode.UNSET}


def test_the_tracing_stage_installs_the_otel_propagator(
    env: Environment, exporter: InMemorySpanExporter
) -> None:
    set_trace_propagator(TracePropagator())
    TracedCtx().create_pipeline(traced_core).chain(Execute("tracing")).run()
    assert isinstance(trace_propagator(), OTelPropagator)


def test_the_tracing_stage_keeps_a_propagator_the_app_installed(
    env: Environment, exporter: InMemorySpanExporter
) -> None:
    class TenantPropagator(TracePropagator):
        def inject(self) -> dict[str, str]:
            return {"tenant": "t-1"}

    custom = TenantPropagator()
    set_trace_propagator(custom)
    TracedCtx().create_pipeline(traced_core).chain(Execute("tracing")).run()
    assert trace_propagator() is custom


def test_async_stages_get_spans_in_the_same_trace_on_both_sides_of_the_hand_off(
    env: Environment, exporter: InMemorySpanExporter, steps: dict[str, int]
) -> None:
    import asyncio

    from dcore import AsyncNextFn

    class Awaiting(Execute[Any]):
        async def execute(self, next_fn: AsyncNextFn[Any], context: Any) -> Any:
            await asyncio.sleep(0)
            return await next_fn(context)

    env.registry.register("awaiting", Awaiting)
    ctx = TracedCtx()
    pipeline = ctx.create_pipeline(traced_core)
    pipeline.chain(Execute("tracing")).chain(Execute("awaiting")).chain(Dispatch("thread"))
    pipeline.chain(Execute("awaiting")).chain(Execute("step"))
    asyncio.run(pipeline.arun())
    ThreadDispatcher.drain(10)
    spans = by_stage(exporter.get_finished_spans())
    assert set(spans) == {"tracing#0", "awaiting#1", "awaiting#3", "step#4"}
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert parent_of(spans["awaiting#1"]) == spans["tracing#0"].context.span_id
    assert parent_of(spans["awaiting#3"]) == spans["awaiting#1"].context.span_id
    assert parent_of(spans["step#4"]) == spans["awaiting#3"].context.span_id
