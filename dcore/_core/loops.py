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
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["run_coroutine"]

T = TypeVar("T")


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


def _thread_loop(env: Environment) -> asyncio.AbstractEventLoop | None:
    """This thread's loop for ``env``, made on first use; None while it is busy (a
    nested run, or, in the simulator, another simulated task suspended inside it)."""
    kept: _KeptLoop | None = getattr(_kept, "loop", None)
    if kept is None or kept.env() is not env or kept.loop.is_closed():
        kept = _kept.loop = _KeptLoop(env, env.new_event_loop())
    return None if kept.loop.is_running() else kept.loop


def run_coroutine(env: Environment, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, on this thread's loop (or a
    fresh one when that is busy), even inside a running loop's callback (that loop is
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
            if getattr(_kept, "loop", None) is not None and _kept.loop.loop is loop:
                _kept.loop = None
        raise
    finally:
        if fresh:
            loop.close()
        if outer is not None:
            asyncio._set_running_loop(outer)
