"""One trace across the Celery Dispatch: a request span, the stages before the hand-off,
and the stages a real Celery worker runs from the ``JobMessage`` over a real Redis broker.

The worker runs in this process (``celery.contrib.testing.worker.start_worker``, solo
pool, in a thread), so its spans reach the same SDK ``InMemorySpanExporter``; the only
thing linking its spans to the request is the ``trace`` the message carries, as between
processes: the worker thread starts with no trace context of its own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobState,
    NextFn,
    PipelineContext,
    PluginRegistry,
    core_function,
    use_environment,
)
from dcore._core.message import (
    JobMessage,
    TracePropagator,
    set_trace_propagator,
    trace_propagator,
)
from dcore.stages.tracing import use_tracer_provider

pytestmark = pytest.mark.integration

#: bound on one job's round trip through the broker and the worker
JOB_TIMEOUT = 15.0


class CeleryTracedCtx(PipelineContext):
    n: int = 0


#: thread that ran the core function, per job (the worker's, not the test's)
core_threads: dict[str, str] = {}


@core_function
def traced_core(ctx: CeleryTracedCtx) -> dict[str, int]:
    core_threads[ctx.job_id] = threading.current_thread().name
    return {"n": ctx.n}


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    previous = trace_propagator()
    with use_tracer_provider(tracer_provider):
        yield tracer_provider
    set_trace_propagator(previous)
    tracer_provider.shutdown()


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    exp = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return exp


@pytest.fixture
def settings(dcore_redis_url: str, tmp_path: Path) -> DcoreSettings:
    """Redis job store and broker; a queue and key prefix of this test's own."""
    token = uuid.uuid4().hex[:8]
    return DcoreSettings(
        redis_url=dcore_redis_url, celery_broker_url=dcore_redis_url, job_store="redis",
        event_bus="redis", key_prefix=f"dcore-{token}", celery_queue=f"dcore-{token}",
        storage_root=tmp_path / "storage",
    )  # fmt: skip


@pytest.fixture
def steps(dcore_registry: PluginRegistry) -> None:
    class Step(Execute[Any]):
        def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
            return next_fn(context)

    dcore_registry.register("step", Step)


@contextmanager
def embedded_worker(settings: DcoreSettings, registry: PluginRegistry) -> Iterator[Any]:
    """A real Celery worker (solo pool) in a thread of this process, consuming the
    settings' queues, running jobs in an Environment of its own; stopped on exit."""
    from celery.contrib.testing.app import setup_default_app
    from celery.contrib.testing.worker import start_worker

    from dcore.celery import make_celery_app, queue_names

    env = Environment(settings, registry=registry)
    app = make_celery_app(settings, environment=env)
    app.conf.worker_hijack_root_logger = False  # leave pytest's log capture alone
    try:
        # setup_default_app restores Celery's current/default app, which the worker sets
        with setup_default_app(app), start_worker(
            app, pool="solo", concurrency=1, perform_ping_check=False,
            queues=queue_names(settings), hostname=f"tracing-{uuid.uuid4().hex[:8]}@127.0.0.1",
            loglevel="WARNING", shutdown_timeout=10.0,
        ) as worker:  # fmt: skip
            yield worker
    finally:
        env.close()


@contextmanager
def task_finished(job_id: str) -> Iterator[threading.Event]:
    """An event set when the worker has finished the Celery task of ``job_id``
    (``task_postrun``: after ``run_message`` recorded the job's outcome)."""
    from celery.signals import task_postrun

    done = threading.Event()

    def on_postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if task_id == job_id:
            done.set()

    task_postrun.connect(on_postrun, weak=False)
    try:
        yield done
    finally:
        task_postrun.disconnect(on_postrun)


@pytest.fixture
def worker(settings: DcoreSettings, dcore_registry: PluginRegistry, steps: None) -> Iterator[Any]:
    with embedded_worker(settings, dcore_registry) as w:
        yield w


@pytest.fixture
def env(
    settings: DcoreSettings, dcore_registry: PluginRegistry, worker: Any
) -> Iterator[Environment]:
    """The sending side (web process): its own Environment on the same Redis."""
    e = Environment(settings, registry=dcore_registry)
    with use_environment(e):
        yield e
    e.close()


def by_stage(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {str(s.attributes["dcore.stage"]): s for s in spans if s.attributes}


def ancestry(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> list[str]:
    """Names of ``span``'s ancestors, nearest first, following parent links within the
    exported spans (a link to a span not exported ends the walk)."""
    by_id = {s.context.span_id: s for s in spans}
    names: list[str] = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        ancestor = by_id[parent.span_id]
        names.append(ancestor.name)
        parent = ancestor.parent
    return names


def run_traced_job(
    env: Environment, provider: TracerProvider, exporter: InMemorySpanExporter
) -> tuple[CeleryTracedCtx, ReadableSpan, tuple[ReadableSpan, ...]]:
    """``tracing → step → Dispatch celery → step → step → core`` under a request span;
    waits (bounded) for the worker to finish the job. Returns the context, the request
    span and every finished span."""
    ctx = CeleryTracedCtx(n=7)
    pipeline = ctx.create_pipeline(traced_core)
    pipeline.chain(Execute, plugin="tracing").chain(Execute, plugin="step")
    pipeline.chain(Dispatch, plugin="celery")
    pipeline.chain(Execute, plugin="step").chain(Execute, plugin="step")
    tracer = provider.get_tracer("tests.web")
    with task_finished(ctx.job_id) as done:
        with tracer.start_as_current_span("POST /jobs"):
            handle = pipeline.run()
        assert handle.status == "scheduled"
        assert done.wait(JOB_TIMEOUT), f"worker did not finish job {ctx.job_id}"
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.name == "POST /jobs"]
    return ctx, request, spans


def assert_one_trace_across_the_handoff(
    request: ReadableSpan, spans: tuple[ReadableSpan, ...]
) -> None:
    """Every span is in the request's trace, and the worker's stage spans descend from
    ``step#1``: the request-side span active when the Dispatch handed the job off."""
    stages = by_stage(spans)
    assert set(stages) == {"tracing#0", "step#1", "step#3", "step#4"}
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}
    assert stages["step#3"].parent is not None
    assert stages["step#3"].parent.span_id == stages["step#1"].context.span_id
    assert ancestry(stages["step#4"], spans) == [
        "dcore step",
        "dcore step",
        "dcore tracing",
        "POST /jobs",
    ]


def test_celery_worker_spans_continue_the_request_trace_from_the_handoff(
    env: Environment, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ctx, request, spans = run_traced_job(env, provider, exporter)

    record = env.jobs.get(ctx.job_id)
    assert record.state is JobState.SUCCEEDED, record
    assert record.result == {"n": 7}
    # the core ran on the Celery worker's thread, not inline in the request
    assert core_threads[ctx.job_id] != threading.current_thread().name
    assert_one_trace_across_the_handoff(request, spans)
    stages = by_stage(spans)
    # the message the broker carried names the hand-off span as the parent
    traceparent = JobMessage.parse(record.message or "").trace["traceparent"]
    assert traceparent.split("-")[2] == format(stages["step#1"].context.span_id, "016x")
    assert dict(stages["step#4"].attributes or {}) == {
        "dcore.job_id": ctx.job_id,
        "dcore.stage": "step#4",
        "dcore.plugin": "step",
        "dcore.interface": "Execute",
        "dcore.attempt": 1,
    }
    assert stages["tracing#0"].attributes is not None
    assert stages["tracing#0"].attributes["dcore.job_id"] == ctx.job_id


def test_without_a_trace_propagator_the_worker_spans_start_a_new_trace(
    env: Environment,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above depends on the message's trace context: with the carrier-less
    default propagator (which the tracing stage would otherwise replace), it fails."""

    def keep_current_propagator() -> None:
        pass

    monkeypatch.setattr("dcore.stages.tracing._install_propagator", keep_current_propagator)
    set_trace_propagator(TracePropagator())

    ctx, request, spans = run_traced_job(env, provider, exporter)

    assert env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED
    assert JobMessage.parse(env.jobs.get(ctx.job_id).message or "").trace == {}
    with pytest.raises(AssertionError):
        assert_one_trace_across_the_handoff(request, spans)
    stages = by_stage(spans)
    assert stages["step#3"].parent is None  # a new root on the worker
