"""Built-in Dispatch plugins: ``inline``, ``thread``, ``fastapi``, ``celery`` and
``schedule_job`` (whichever ``DCORE_DISPATCHER`` names). Each class is loaded on first
use, so Celery and FastAPI are needed only by the dispatchers that use them."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcore.dispatchers.celery import CeleryDispatcher
    from dcore.dispatchers.fastapi import FastAPIDispatcher
    from dcore.dispatchers.inline import InlineDispatcher
    from dcore.dispatchers.schedule_job import ScheduleJob
    from dcore.dispatchers.thread import ThreadDispatcher

_WHERE = {
    "CeleryDispatcher": "celery",
    "FastAPIDispatcher": "fastapi",
    "InlineDispatcher": "inline",
    "ScheduleJob": "schedule_job",
    "ThreadDispatcher": "thread",
}

__all__ = [
    "CeleryDispatcher",
    "FastAPIDispatcher",
    "InlineDispatcher",
    "ScheduleJob",
    "ThreadDispatcher",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dcore.dispatchers' has no attribute {name!r}")
    return getattr(import_module(f"dcore.dispatchers.{_WHERE[name]}"), name)
