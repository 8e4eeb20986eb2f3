"""``celery``: ship the background part to Celery workers as a ``JobMessage``.

The message (JSON) is the task's only argument; the worker runs it with
``dcore.run_message`` (see :mod:`dcore.celery`). A context's ``shard_key`` picks
one of ``DCORE_CELERY_QUEUES`` queues named ``<DCORE_CELERY_QUEUE>.<n>``, so one shard's
jobs always share a queue. The Celery app is made once per Environment, on the first
dispatch, and closed with it.

Celery is imported only here and in ``dcore.celery``, on first use: ``import dcore``
works without it, and choosing this dispatcher without it installed is a clear error.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING, Any

from dcore._core.environment import Environment
from dcore._core.handle import JobHandle
from dcore._core.pipeline import Continuation
from dcore._plugins.interfaces import Dispatch
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import DispatchError

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["CeleryDispatcher", "celery_app"]

_INSTALL_HINT = "install it with: pip install 'distributed-core[celery]'"


@functools.cache
def _celery_installed() -> bool:
    return importlib.util.find_spec("celery") is not None


def celery_app(env: Environment) -> Celery:
    """The environment's Celery app (made on first use from its settings)."""
    from dcore.celery import celery_app as engine_app

    return engine_app(env)


def _redact(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


@register_plugin("celery", registry=default_registry())
class CeleryDispatcher(Dispatch[Any]):
    """Sends the remainder to ``dcore.run`` on the shard's queue and returns a handle.

    ``queue`` pins every job of the pipeline to one queue (a dedicated worker pool)
    instead of sharding over ``DCORE_CELERY_QUEUES``."""

    remote = True

    def __init__(self, env: Environment, queue: str | None = None) -> None:
        if not _celery_installed():
            raise DispatchError(
                f"the celery dispatcher needs the 'celery' package; {_INSTALL_HINT}"
            )
        if queue is not None and not queue.strip():
            raise DispatchError("the celery dispatcher's queue option must be a non-empty name")
        self.env = env
        self.queue = queue

    def queue_for(self, shard: int | None) -> str:
        from dcore._celery_config import queue_for

        return self.queue or queue_for(shard, self.env.settings)

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        from dcore._celery_config import TASK_NAME

        message = next_fn.to_message(context)
        queue = self.queue_for(message.shard)
        app = celery_app(self.env)
        try:
            app.send_task(
                TASK_NAME, args=[next_fn.to_json(context)], queue=queue, task_id=message.job_id
            )
        except Exception as exc:
            broker = _redact(str(app.conf.broker_url))
            raise DispatchError(
                f"could not send job {message.job_id} to queue {queue!r} on the Celery "
                f"broker {broker}: {type(exc).__name__}: {exc}"
            ) from exc
        return JobHandle(job_id=context.job_id, status="scheduled")
