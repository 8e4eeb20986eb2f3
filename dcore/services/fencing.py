"""The fence of the lock the running pipeline holds, for the stages after the ``lock`` stage.

A TTL lock cannot stop a holder that was paused or partitioned past its TTL from writing
after someone else took the lock: the late holder does not know it lost it. The lock's
fence (a number that grows with every acquisition of the name) fixes that when the
storage checks it: :meth:`~dcore.services.storage.StorageInterface.put_fenced` refuses a
write whose fence is older than the one that last wrote the key.

The ``lock`` stage makes its fence visible to the rest of the pipeline through a context
variable, read with :func:`current_fence`::

    pipeline.chain(Execute("lock", key="report:{name}", ttl=60))
    ...
    def execute(self, next_fn, context):       # a stage after the lock
        env.storage.put_fenced(f"reports/{context.name}", data, current_fence())

Why a context variable and not a context field: the fence belongs to one delivery, in one
process, for as long as the lock stage is running the rest; it must not be serialized
into a ``JobMessage``, retried with the context or seen by another job. A context
variable is exactly that scope: set when the lock is taken, reset when the lock stage
returns (also on error), private to the thread (or asyncio task) running the delivery,
and nested locks stack (the innermost is the current one; each is found by name).
A Dispatch does not carry it: the part of a pipeline that runs elsewhere holds no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, NamedTuple

__all__ = ["Fence", "current_fence", "holding_fence"]


class Fence(NamedTuple):
    """A fencing token: the lock's name and the number its acquisition was given.

    Numbers are only ordered within one lock name: ``Fence("a", 7)`` and ``Fence("b", 3)``
    cannot be compared, so storage refuses to mix them on one key."""

    lock: str
    number: int

    @classmethod
    def of(cls, lock: Any) -> Fence:
        """The fence of a lock handle you acquired yourself (``lock.name``, ``lock.fence``)."""
        name, number = getattr(lock, "name", None), getattr(lock, "fence", None)
        if number is None:
            raise ValueError(
                f"lock {name!r} has no fence: acquire() it first (a lock backend that "
                "issues no fences cannot be used for fenced writes)"
            )
        return check_fence((name, number), "Fence.of(lock)")

    def __str__(self) -> str:
        return f"fence {self.number} of lock {self.lock!r}"


_held: ContextVar[tuple[Fence, ...]] = ContextVar("dcore_held_fences", default=())


def current_fence(lock: str | None = None) -> Fence | None:
    """The fence of the innermost lock the running pipeline holds through a ``lock``
    stage, or of the innermost one named ``lock``; None outside any (or no such) lock."""
    held = _held.get()
    if lock is None:
        return held[-1] if held else None
    return next((f for f in reversed(held) if f.lock == lock), None)


@contextlib.contextmanager
def holding_fence(fence: Fence) -> Iterator[Fence]:
    """Make ``fence`` the current one for the block (the ``lock`` stage's side of
    :func:`current_fence`); the previous fences come back when it ends."""
    fence = check_fence(fence, "holding_fence()")
    token = _held.set((*_held.get(), fence))
    try:
        yield fence
    finally:
        _held.reset(token)


def check_fence(fence: object, where: str) -> Fence:
    """``fence`` as a :class:`Fence` (a ``(lock, number)`` pair is accepted), or a clear
    TypeError/ValueError naming ``where`` and the fix."""
    if fence is None:
        raise TypeError(
            f"{where} needs the writer's fence, got None: inside a pipeline chain "
            "Execute('lock', key=...) before this stage and pass dcore.current_fence(); "
            "with a lock you acquired yourself pass Fence.of(lock)"
        )
    if not isinstance(fence, tuple) or len(fence) != 2:
        raise TypeError(
            f"{where}: fence must be a Fence(lock, number), got {type(fence).__name__} {fence!r}"
        )
    name, number = fence
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: a fence's lock must be a non-empty str, got {name!r}")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(
            f"{where}: a fence's number must be an int >= 1 (from lock.fence), got {number!r}"
        )
    return fence if type(fence) is Fence else Fence(name, number)
