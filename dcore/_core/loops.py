"""Running a coroutine to completion from synchronous code, on a loop kept per thread.

A background part with async stages runs this way on its worker's thread (one loop per
worker thread or Celery pool process, made by ``Environment.new_event_loop``, so the
simulator's runs on virtual time), as does an ``async def compensate``; a stage may keep
a loop-bound client from one job to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["CALLER_LOOP", "run_awaitable", "run_coroutine"]

T = TypeVar("T")

#: the loop of an ``arun()`` whose synchronous work runs in a worker thread: free while
#: it awaits that thread, and the loop the request's async stages ran on
CALLER_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "dcore_caller_loop", default=None
)


class _KeptLoop:
    """The loop kept for one thread and environment; closed when dropped."""

    __slots__ = ("env", "loop")

    def __init__(self, env: Environment, loop: asyncio.AbstractEventLoop) -> None:
        self.env = weakref.ref(env)
        self.loop = loop

    def __del__(self) -> None:
        loop = self.loop
        with contextlib.suppress(Exception):  # at interpreter exit, modules may be gone
            if not loop.is_running() and not loop.is_closed():
                loop.close()


_kept = threading.local()
#: loops kept per thread: one for each level of nesting (a job whose plain stage is
#: followed by async stages runs those on the next level's loop)
_LEVELS = 8


def _thread_loop(env: Environment) -> asyncio.AbstractEventLoop | None:
    """This thread's first idle loop for ``env``, made on first use: an outermost run
    takes the first, a run nested inside it the second, and so on, so every level keeps
    its loop from job to job. None when all of them are busy."""
    kept: list[_KeptLoop] | None = getattr(_kept, "loops", None)
    if kept is None or (kept and kept[0].env() is not env):
        kept = _kept.loops = []
    for level, held in enumerate(kept):
        if held.loop.is_closed():
            held = kept[level] = _KeptLoop(env, env.new_event_loop())
        if not held.loop.is_running():
            return held.loop
    if len(kept) < _LEVELS:
        kept.append(_KeptLoop(env, env.new_event_loop()))
        return kept[-1].loop
    return None


def _drop(loop: asyncio.AbstractEventLoop) -> None:
    """Forget ``loop`` as a kept loop of this thread (it is about to be closed)."""
    kept: list[_KeptLoop] = getattr(_kept, "loops", None) or []
    _kept.loops = [held for held in kept if held.loop is not loop]


def run_coroutine(env: Environment, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, on a loop this thread keeps
    (or a fresh one when all of them are busy), even inside a running loop's callback (that loop is
    set aside meanwhile). A ``BaseException`` out of the loop itself (a worker being
    killed, a simulated crash) closes the coroutine where it waits and drops the loop."""
    loop = _thread_loop(env)
    fresh = loop is None
    if loop is None:
        loop = env.new_event_loop()
    outer = asyncio._get_running_loop()
    if outer is not None:
        asyncio._set_running_loop(None)
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():  # the loop itself was interrupted: nothing may run on
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            with contextlib.suppress(RuntimeError):
                coro.close()
            fresh = True
            _drop(loop)
        raise
    finally:
        if fresh:
            loop.close()
        if outer is not None:
            asyncio._set_running_loop(outer)


def run_awaitable(env: Environment, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code: on the caller's loop when this
    is a worker thread of an ``arun()`` (so an ``async def compensate`` meets the loop
    its stage ran on), else as :func:`run_coroutine` does."""
    loop = CALLER_LOOP.get()
    if loop is not None and not loop.is_closed() and asyncio._get_running_loop() is None:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    return run_coroutine(env, coro)
