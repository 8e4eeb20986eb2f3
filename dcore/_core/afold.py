"""Async stages: folding a chain that mixes ``async def execute`` with plain stages.

An ``Execute`` stage whose ``execute`` is ``async def`` gets an awaitable ``next_fn``
(:data:`~dcore._plugins.interfaces.AsyncNextFn`). :func:`afold` folds a chain into one
coroutine function, segment by segment from the end: a run of async stages awaits
straight through, and a run of plain stages is folded by :func:`dcore._core.runner.fold`
as ever (retries, observers, pooling, compensation marks unchanged), its ``next_fn``
bridged to the async rest.

Where a plain segment runs is the one choice, ``offload``:

- ``offload=True`` (``await pipeline.arun()``, on the caller's event loop): the
  segment runs in a worker thread (``asyncio.to_thread``), so neither a plain stage nor
  the Dispatch hand-off (job record, send) blocks the loop; a segment's ``next_fn``
  hands the async rest back to the caller's loop and waits for it in its thread.
- ``offload=False`` (a background part, on its worker's own loop): the segment runs on
  the loop itself (the loop serves that job alone), and a ``next_fn`` with async
  stages after it runs them on a loop of its own to completion (``run_coroutine``).

A background part with async stages runs through ``run_coroutine``, on the event
loop kept for the worker's thread (``Environment.new_event_loop`` makes it: the
simulator's runs on virtual time), so a stage may keep a loop-bound client from one
job to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dcore._core.loops import CALLER_LOOP, run_coroutine
from dcore._core.retry import acall_with_retry
from dcore._core.runner import (
    Call,
    Stage,
    core_call,
    fold,
    plugin_pool,
    raised_downstream,
    retry_notice,
    stage_failed,
)
from dcore._core.saga import completed

if TYPE_CHECKING:
    from dcore._core.continuation import Continuation
    from dcore._core.environment import Environment
    from dcore._core.observe import PipelineObserver

__all__ = ["AsyncCall", "afold"]

T = TypeVar("T")

#: One step of an async-folded chain.
AsyncCall = Callable[[Any], Coroutine[Any, Any, Any]]


def afold(
    stages: Sequence[Stage],
    instances: Sequence[Any],
    core: Callable[[Any], Any],
    env: Environment,
    observers: Sequence[PipelineObserver],
    rest_after: Callable[[Stage], Continuation[Any]],
    *,
    offload: bool,
) -> AsyncCall:
    """``stages`` then ``core`` as one coroutine function (see the module docstring)."""
    sync_call: Call | None = core_call(core)
    async_call: AsyncCall | None = None
    for segment in reversed(_segments(stages)):
        if segment[0].is_async:
            nxt = _offloaded(sync_call, offload) if sync_call is not None else async_call
            assert nxt is not None
            for stage in reversed(segment):
                nxt = _async_stage_call(stage, instances[stage.index], nxt, env, observers)
            async_call, sync_call = nxt, None
        else:
            bridged = async_call is not None
            tail = sync_call if async_call is None else _bridge(async_call, env, offload)
            sync_call = fold(segment, instances, core, env, observers, rest_after, tail)
            async_call = None
            if bridged:  # offloaded on its own: its thread waits for the async rest
                async_call, sync_call = _offloaded(sync_call, offload, own_thread=True), None
    if sync_call is not None:
        return _offloaded(sync_call, offload)
    assert async_call is not None
    return async_call


def _segments(stages: Sequence[Stage]) -> list[list[Stage]]:
    """``stages`` cut into runs of async and of plain stages, in order."""
    runs: list[list[Stage]] = []
    for stage in stages:
        if runs and runs[-1][0].is_async == stage.is_async:
            runs[-1].append(stage)
        else:
            runs.append([stage])
    return runs


def _offloaded(call: Call, offload: bool, *, own_thread: bool = False) -> AsyncCall:
    """A plain segment as a coroutine function: in a worker thread, or on the loop.

    A segment with async stages after it (``own_thread``) gets a thread of its own, not
    one of the loop's default executor: its thread waits while the async rest runs,
    and the rest may need an executor thread itself (a later plain segment, the
    hand-off), so with as many such requests at once as the executor has threads every
    one of them would wait for ever."""
    if not offload:

        async def inline(ctx: Any) -> Any:
            return call(ctx)

        return inline

    async def in_thread(ctx: Any) -> Any:
        loop = asyncio.get_running_loop()
        token = CALLER_LOOP.set(loop)
        try:
            if own_thread:
                return await _in_own_thread(loop, call, ctx)
            return await asyncio.to_thread(call, ctx)
        finally:
            CALLER_LOOP.reset(token)

    return in_thread


async def _in_own_thread(loop: asyncio.AbstractEventLoop, call: Call, ctx: Any) -> Any:
    """``call(ctx)`` in a new thread (with this task's context variables), awaited."""
    done: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (context.run(call, ctx), None)
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            outcome = (None, exc)
        # the request may have been cancelled and its loop closed meanwhile: then
        # nobody waits for the outcome
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="dcore-arun", daemon=True).start()
    return await done


async def _off_loop(env: Environment, call: Callable[[], T]) -> T:
    """``call()`` in a worker thread, or on the loop where threads may not be used (the
    simulator's loop runs on virtual time, and a thread would escape its scheduler)."""
    if env.async_offload:
        return await asyncio.to_thread(call)
    return call()


def _bridge(rest: AsyncCall, env: Environment, offload: bool) -> Call:
    """A plain stage's ``next_fn`` when async stages follow it: on the caller's loop
    (this runs in the worker thread a segment was offloaded to), or to completion on a
    loop of its own."""
    if not offload:

        def nested(ctx: Any) -> Any:
            return run_coroutine(env, rest(ctx))

        return nested

    def on_caller_loop(ctx: Any) -> Any:
        loop = CALLER_LOOP.get()
        assert loop is not None, "an offloaded segment knows its caller's loop"
        return asyncio.run_coroutine_threadsafe(rest(ctx), loop).result()

    return on_caller_loop


def _async_stage_call(
    stage: Stage,
    instance: Any,
    next_call: AsyncCall,
    env: Environment,
    observers: Sequence[PipelineObserver],
) -> AsyncCall:
    """An async stage: its observers, failure tagging, own retries, pooled instance and
    compensation marks, as :func:`dcore._core.runner.fold` gives a plain one."""
    policy = stage.policy
    pool = plugin_pool(env) if stage.pooled else None
    ref, origin, index = stage.ref, stage.origin, stage.index
    if stage.compensates:  # it completed once it handed over (see dcore._core.saga)
        inner = next_call

        async def hand_over(ctx: Any) -> Any:
            completed(index)
            return await inner(ctx)

        next_call = hand_over

    async def body(ctx: Any) -> Any:
        if pool is None:
            return await instance.execute(next_call, ctx)
        # waiting for a free instance (and entering a new one) blocks: off the loop, or
        # requests beyond the pool's size would stall the loop and with it the leases'
        # holders, which could then never give their instances back
        leased = await _off_loop(
            env, functools.partial(pool.acquire, ref.interface, ref.plugin, **ref.options)
        )
        try:
            result = await leased.execute(next_call, ctx)
        except BaseException:
            # a discarded instance is exited, which may block
            await _off_loop(env, functools.partial(pool.release, leased, discard=True))
            raise
        pool.release(leased)  # back to the idle list: never blocks
        return result

    async def attempts(ctx: Any) -> Any:
        if policy.attempts == 1:
            return await body(ctx)

        async def attempt() -> Any:  # a coroutine function: tenacity awaits its result
            return await body(ctx)

        return await acall_with_retry(
            attempt,
            policy,
            rng=env.random,
            sleep=env.sleep_async,
            retry_if=lambda exc: not raised_downstream(exc),
            before_sleep=retry_notice(env, ctx, origin),
        )

    async def call(ctx: Any) -> Any:
        seen = tuple(observers)  # the environment's list is live: read it once per call
        for observer in seen:
            observer.stage_enter(stage, ctx)
        try:
            result = await attempts(ctx)
        except BaseException as exc:
            stage_failed(stage, env, ctx, exc)
            for observer in seen:
                observer.stage_exit(stage, ctx, exc)
            raise
        for observer in seen:
            observer.stage_exit(stage, ctx, None)
        if stage.compensates:  # ... or returned
            completed(index)
        return result

    return call
