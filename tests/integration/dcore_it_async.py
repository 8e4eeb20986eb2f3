"""Async stages for the Celery integration tests: the worker imports this module
(``DCORE_IMPORTS=...,dcore_it_async``) by this name, and the tests import it the same way.

``it_loop_probe`` records, per job, the worker process and the event loop its async
``execute`` ran on; ``it_async_undo`` is an async stage whose async ``compensate``
records the undo; ``it_async_fail`` fails every time (after awaiting)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

from dcore import AsyncNextFn, Execute, PipelineContext, core_function, register_plugin
from dcore._plugins.registry import default_registry
from dcore.services.storage import StorageInterface


class AsyncJob(PipelineContext):
    name: str


@register_plugin("it_loop_probe", registry=default_registry(), replace=True)
class LoopProbe(Execute[AsyncJob]):
    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    async def execute(self, next_fn: AsyncNextFn[AsyncJob], context: AsyncJob) -> Any:
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        if not hasattr(loop, "it_probe_tag"):  # a tag of its own: an id may be reused
            loop.it_probe_tag = uuid.uuid4().hex  # type: ignore[attr-defined]
        seen = {"pid": os.getpid(), "loop": loop.it_probe_tag}  # type: ignore[attr-defined]
        self.storage.put(f"probes/{context.name}", json.dumps(seen).encode())
        return await next_fn(context)


@register_plugin("it_async_undo", registry=default_registry(), replace=True)
class AsyncUndo(Execute[AsyncJob]):
    compensation_retry = None

    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    async def execute(self, next_fn: AsyncNextFn[AsyncJob], context: AsyncJob) -> Any:
        await asyncio.sleep(0)
        self.storage.put(f"done/{context.name}", b"1")
        return await next_fn(context)

    async def compensate(self, context: AsyncJob, error: BaseException) -> None:
        await asyncio.sleep(0)
        self.storage.put(f"undone/{context.name}", str(error).encode())


@register_plugin("it_async_fail", registry=default_registry(), replace=True)
class AsyncFail(Execute[AsyncJob]):
    async def execute(self, next_fn: AsyncNextFn[AsyncJob], context: AsyncJob) -> Any:
        await asyncio.sleep(0.01)
        raise ConnectionError(f"{context.name}: the service refused")


@core_function("dcore_it_async.finished")
def finished(context: AsyncJob) -> str:
    return f"finished {context.name}"
