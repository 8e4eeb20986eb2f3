"""Async stages before and after the hand-off, behind an async FastAPI endpoint.

``lookup_profile`` runs in the request, before the Dispatch: it awaits the profile
service, and the event loop serves other requests meanwhile. ``render_report`` runs in
the background, after the Dispatch: the worker runs it on its own event loop. The
endpoint awaits ``pipeline.arun()``, which runs the plain parts (here the hand-off: the
job record and the send) in a worker thread, so nothing blocks the loop::

    uvicorn examples.async_stages.app:app
    curl -X POST localhost:8000/reports/ada
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import BackgroundTasks, FastAPI

from dcore import (
    AsyncNextFn,
    Dispatch,
    Execute,
    Pipeline,
    PipelineContext,
    Runtime,
    core_function,
    default_registry,
    register_plugin,
)
from dcore.services.storage import StorageInterface


class ReportContext(PipelineContext):
    user: str
    display_name: str = ""
    background_tasks: Runtime[BackgroundTasks] = None


class ProfileService:
    """Stands for an async client of a remote service (an HTTP API, a database)."""

    def __init__(self, latency: float = 0.01) -> None:
        self.latency = latency

    async def lookup(self, user: str) -> dict[str, str]:
        await asyncio.sleep(self.latency)
        return {"user": user, "name": user.title()}


PROFILES = ProfileService()


@register_plugin("lookup_profile", registry=default_registry(), replace=True)
class LookupProfile(Execute[ReportContext]):
    """Before the hand-off: fills in the user's display name."""

    async def execute(self, next_fn: AsyncNextFn[ReportContext], context: ReportContext) -> Any:
        profile = await PROFILES.lookup(context.user)
        context.display_name = profile["name"]
        return await next_fn(context)


@register_plugin("render_report", registry=default_registry(), replace=True)
class RenderReport(Execute[ReportContext]):
    """After the hand-off: renders the report (an async renderer) and stores it."""

    def __init__(self, storage: StorageInterface, seconds: float = 0.01) -> None:
        self.storage = storage
        self.seconds = seconds

    async def execute(self, next_fn: AsyncNextFn[ReportContext], context: ReportContext) -> Any:
        await asyncio.sleep(self.seconds)  # the renderer at work
        self.storage.put(report_key(context), f"Report for {context.display_name}".encode())
        return await next_fn(context)


def report_key(context: ReportContext) -> str:
    return f"reports/{context.user}.txt"


@core_function
def report_ready(context: ReportContext) -> dict[str, str]:
    return {"report": report_key(context)}


def report_pipeline(
    context: ReportContext, dispatcher: str = "schedule_job", render_seconds: float = 0.01
) -> Pipeline[ReportContext]:
    pipeline = context.create_pipeline(core_fn=report_ready)
    pipeline.chain(Execute, plugin="lookup_profile")
    pipeline.chain(Dispatch, plugin=dispatcher)
    pipeline.chain(Execute, plugin="render_report", seconds=render_seconds)
    return pipeline


app = FastAPI()


@app.post("/reports/{user}")
async def create_report(user: str, background_tasks: BackgroundTasks) -> Any:
    context = ReportContext(user=user, background_tasks=background_tasks)
    return await report_pipeline(context).arun()
