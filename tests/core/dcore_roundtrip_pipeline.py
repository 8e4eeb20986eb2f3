"""A pipeline module a worker process imports (``DCORE_IMPORTS``) to run messages from
tests/core/test_message_roundtrip.py. Plugins go into the default registry, as a
third-party package's would."""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    JobHandle,
    NextFn,
    PipelineContext,
    core_function,
    migration,
    register_plugin,
)
from dcore._core.pipeline import Continuation
from dcore._plugins.registry import default_registry


class RoundTripContext(PipelineContext):
    __version__ = "1.0"
    name: str
    payload: bytes = b""
    steps: list[str] = []

    @migration("0.9")
    @classmethod
    def title_became_name(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["name"] = data.pop("title")  # a KeyError for data that never had a title
        return data


@register_plugin("rt_mark", registry=default_registry())
class Mark(Execute[RoundTripContext]):
    """Appends its tag to ``steps`` (the trail travels in the context)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def execute(self, next_fn: NextFn[RoundTripContext], context: RoundTripContext) -> Any:
        context.steps.append(self.tag)
        return next_fn(context)


@register_plugin("rt_capture", registry=default_registry())
class Capture(Dispatch[RoundTripContext]):
    """A remote dispatcher that only keeps the continuation, for the test to ship."""

    remote = True
    captured: list[tuple[Continuation[Any], RoundTripContext]] = []

    def dispatch(
        self, next_fn: Continuation[RoundTripContext], context: RoundTripContext
    ) -> JobHandle:
        type(self).captured.append((next_fn, context))
        return JobHandle(job_id=context.job_id)


@core_function
def summarize(ctx: RoundTripContext) -> dict[str, Any]:
    """The core function: what the worker saw and did."""
    return {
        "name": ctx.name,
        "steps": [*ctx.steps, "core"],
        "size": len(ctx.payload),
        "head": ctx.payload[:4].hex(),
    }
