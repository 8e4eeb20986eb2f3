"""``inline``: run the background part right away, in the caller (tests, scripts)."""

from __future__ import annotations

from typing import Any

from dcore._core.handle import JobHandle
from dcore._core.pipeline import Continuation
from dcore._plugins.interfaces import Dispatch
from dcore._plugins.registry import default_registry, register_plugin

__all__ = ["InlineDispatcher"]


@register_plugin("inline", registry=default_registry())
class InlineDispatcher(Dispatch[Any]):
    """Runs the remainder before returning. The job is recorded like any other; a
    failure is recorded and, with ``raise_errors`` (the default), re-raised."""

    def __init__(self, raise_errors: bool = True) -> None:
        self.raise_errors = raise_errors

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        try:
            next_fn(context)
        except Exception:
            if self.raise_errors:
                raise
            return JobHandle(job_id=context.job_id, status="failed")
        return JobHandle(job_id=context.job_id, status="succeeded")
