"""``fastapi``: run the background part in FastAPI's ``BackgroundTasks``, after the
response is sent.

The job policy applies as on every engine: a failed attempt is retried in the same
background task after its backoff (see ``Continuation.deliver_in_place``).

The context must carry the request's ``BackgroundTasks`` in a runtime-only field (any
name; ``background_tasks: Runtime[BackgroundTasks]`` in the examples). This is
at-most-once: if the web process dies before the task runs, the job stays PENDING.
"""

from __future__ import annotations

import logging
from typing import Any

from dcore._core.handle import JobHandle
from dcore._core.pipeline import Continuation
from dcore._plugins.interfaces import Dispatch
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import DispatchError

__all__ = ["FastAPIDispatcher", "find_background_tasks"]


def find_background_tasks(context: Any) -> Any | None:
    """The context's BackgroundTasks-like object (it has ``add_task``), if any."""
    for name in type(context).runtime_fields():
        value = getattr(context, name, None)
        if value is not None and callable(getattr(value, "add_task", None)):
            return value
    return None


def _run_quietly(next_fn: Continuation[Any], context: Any) -> None:
    # every failure is already recorded (retried per the job policy, then DEAD + DLQ);
    # raising it into the ASGI server after the response would only produce a second,
    # context-free traceback
    delivered = next_fn.deliver_in_place(context)
    if delivered.error is not None:
        logging.getLogger("dcore.dispatch.fastapi").error(
            "background job %s failed (%s)",
            context.job_id,
            delivered.outcome.action,
            exc_info=delivered.error,
        )


@register_plugin("fastapi", registry=default_registry())
class FastAPIDispatcher(Dispatch[Any]):
    """Adds the remainder to the request's BackgroundTasks."""

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        tasks = find_background_tasks(context)
        if tasks is None:
            raise DispatchError(
                f"the fastapi dispatcher needs the request's BackgroundTasks on the context, "
                f"but {type(context).__name__} has none; declare "
                "`background_tasks: Runtime[BackgroundTasks]` and pass it in"
            )
        tasks.add_task(_run_quietly, next_fn, context)
        return JobHandle(job_id=context.job_id, status="scheduled")
