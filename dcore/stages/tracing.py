"""``tracing``: an OpenTelemetry span for every stage of the pipeline, across the Dispatch.

Chain it once, first: ``pipeline.chain(Execute("tracing"))``. It observes every stage of
its pipeline (wherever it sits) and opens a span per stage, nested as the stages nest,
with attributes ``dcore.job_id``, ``dcore.stage`` (``plugin#index``), ``dcore.plugin``,
``dcore.interface`` and ``dcore.attempt`` (the job's delivery attempt). A failing stage's
span gets ``ERROR`` status and the exception event; the spans it fails through get
``ERROR`` status too.

The trace continues across the Dispatch: the stage installs an OpenTelemetry
:class:`~dcore._core.message.TracePropagator` (the globally configured text-map
propagator, W3C ``traceparent`` by default), so the ``JobMessage`` carries the trace
context of the hand-off and a worker's spans (Celery, or any ``run_message`` caller) are
children of the request's span. An in-process dispatcher (thread, FastAPI) runs the
continuation with the context captured at the hand-off, to the same effect.

Only the OpenTelemetry **API** is used, imported when the stage is built (``import
dcore`` does not need it). Spans go to the globally configured tracer provider, or to
the one given to :func:`use_tracer_provider` (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

from dcore._core.lifecycle import current_job, describe_error
from dcore._core.message import TracePropagator, set_trace_propagator, trace_propagator
from dcore._core.pipeline import origin_of
from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import PluginOptionsError

if TYPE_CHECKING:
    from dcore._core.pipeline import Stage

__all__ = ["OTelPropagator", "TracingStage", "use_tracer_provider"]

_provider: Any = None


@contextlib.contextmanager
def use_tracer_provider(provider: Any) -> Iterator[Any]:
    """Send the tracing stage's spans to ``provider`` until the block ends (then to the
    one used before)."""
    global _provider
    previous, _provider = _provider, provider
    try:
        yield provider
    finally:
        _provider = previous


class OTelPropagator(TracePropagator):
    """Carries the current OpenTelemetry context in a ``JobMessage``'s ``trace`` field."""

    def inject(self) -> dict[str, str]:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    @contextlib.contextmanager
    def _attached(self, carrier: dict[str, str]) -> Iterator[None]:
        from opentelemetry import context, propagate

        token = context.attach(propagate.extract(carrier))
        try:
            yield
        finally:
            context.detach(token)

    def extract(self, carrier: dict[str, str]) -> Any:
        return self._attached(dict(carrier))


class _Open(NamedTuple):
    stage: Any
    span: Any
    token: Any


_open_spans: ContextVar[tuple[_Open, ...]] = ContextVar("dcore_open_spans", default=())


def _install_propagator() -> None:
    """Replace the default propagator (which carries nothing), never one the app set."""
    if type(trace_propagator()) is TracePropagator:
        set_trace_propagator(OTelPropagator())


@register_plugin("tracing", registry=default_registry())
class TracingStage(Execute[Any]):
    """Passes the context on; its spans come from observing the pipeline's stages."""

    # a run's open spans live in a ContextVar, not on the instance; the cached tracer is
    # replaced whole (a tuple), so concurrent runs at worst look it up twice
    shareable = True

    def __init__(self, tracer: str = "dcore") -> None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace import Status, StatusCode
        except ImportError:
            raise PluginOptionsError(
                "the tracing stage needs the OpenTelemetry API; install it with: "
                "pip install 'distributed-core[otel]'"
            ) from None
        self._trace = trace
        self._context = context
        self._error = Status(StatusCode.ERROR)
        self.tracer_name = tracer
        self._tracers: tuple[Any, Any] = (object(), None)  # (provider, its tracer)
        _install_propagator()

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        return next_fn(context)

    # -- observer (see dcore._core.observe) ----------------------------------------------
    def stage_enter(self, stage: Stage, context: Any) -> None:
        provider, tracer = self._tracers
        if provider is not _provider or tracer is None:
            tracer = self._trace.get_tracer(self.tracer_name, tracer_provider=_provider)
            self._tracers = (_provider, tracer)
        job = current_job()
        span = tracer.start_span(
            f"dcore {stage.ref.plugin}",
            attributes={
                "dcore.job_id": str(context.job_id),
                "dcore.stage": stage.origin,
                "dcore.plugin": stage.ref.plugin,
                "dcore.interface": stage.ref.interface.__name__,
                "dcore.attempt": job.attempt if job is not None else 1,
            },
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        _open_spans.set((*_open_spans.get(), _Open(stage, span, token)))

    def stage_exit(self, stage: Stage, context: Any, error: BaseException | None) -> None:
        stack = _open_spans.get()
        if not stack or stack[-1].stage is not stage:
            return  # not entered in this thread (cannot happen for nested stage calls)
        entry = stack[-1]
        _open_spans.set(stack[:-1])
        span = entry.span
        if error is not None:
            origin = origin_of(error)
            if origin is None or origin == stage.origin:
                span.record_exception(error)
            span.set_attribute("dcore.error.origin", origin or stage.origin)
            span.set_status(type(self._error)(self._error.status_code, describe_error(error)[:512]))
        span.end()
        self._context.detach(entry.token)
