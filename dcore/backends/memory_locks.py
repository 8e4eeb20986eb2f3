"""``memory`` locks: token-checked release, TTL on the injected clock and a fence counter,
like the Redis locks. Waiters are woken by a release; while a TTL'd lock is held they
re-check its expiry every ``_EXPIRY_RECHECK`` real seconds, so a virtual clock moved by
another thread is noticed."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from dcore._core.clock import Clock, SystemClock
from dcore._plugins.registry import register_plugin
from dcore.backends._shared import (
    at_least,
    positive,
)
from dcore.errors import LockLostError
from dcore.services.locks import Lock, LockInterface

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["MemoryLock", "MemoryLocks"]

#: While a TTL'd lock is held, waiters re-check its expiry this often (real seconds), so
#: a virtual clock moved by another thread is noticed; a release wakes them at once.
_EXPIRY_RECHECK = 0.05


@dataclass
class _Held:
    token: str
    expires_at: float | None  # clock.monotonic()


class MemoryLock(Lock):
    """One handle on a name in a :class:`MemoryLocks`; not re-entrant, like Redis's.

    The handle may be released from another thread than the one that acquired it."""

    def __init__(
        self, owner: MemoryLocks, name: str, ttl: float | None, timeout: float | None = None
    ) -> None:
        self._owner = owner
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self._token: str | None = None

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = self.timeout if timeout is None else timeout
        o = self._owner
        token = uuid.uuid4().hex
        # the blocking timeout is real (thread) time, as for threading.Lock and Redis;
        # only the TTL runs on the clock
        deadline = None if timeout is None else time.monotonic() + timeout
        with o.cond:
            while True:
                fence = o.try_take(self.name, token, self.ttl)
                if fence is not None:
                    self._token, self.fence = token, fence
                    return True
                if not blocking:
                    return False
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                if o.held[self.name].expires_at is not None:
                    wait = _EXPIRY_RECHECK if wait is None else min(wait, _EXPIRY_RECHECK)
                o.cond.wait(wait)

    def _mine(self) -> _Held:
        """The live hold of this handle, else LockLostError (expired, taken or never held)."""
        if self._token is None:
            raise LockLostError(f"lock {self.name!r} is not held by this handle")
        held = self._owner.live(self.name)
        if held is None or held.token != self._token:
            self._token = None
            raise LockLostError(
                f"lock {self.name!r} expired before it was released or extended and may "
                "have been taken by another holder; use a longer ttl or extend() in time"
            )
        return held

    def release(self) -> None:
        with self._owner.cond:
            self._mine()
            self._token = None
            del self._owner.held[self.name]
            self._owner.cond.notify_all()

    def extend(self, additional: float) -> None:
        at_least("additional", additional, 0, unit="seconds")
        with self._owner.cond:
            held = self._mine()
            if held.expires_at is None:
                raise ValueError(f"lock {self.name!r} has no ttl; there is nothing to extend")
            held.expires_at += additional

    def owned(self) -> bool:
        with self._owner.cond:
            held = self._owner.live(self.name)
            return self._token is not None and held is not None and held.token == self._token

    def __repr__(self) -> str:
        return f"MemoryLock({self.name!r}, ttl={self.ttl!r}, fence={self.fence!r})"


@register_plugin("memory")
class MemoryLocks(LockInterface):
    """Locks within one process; TTLs run on the injected clock."""

    process_local = True

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.cond = threading.Condition()
        self.held: dict[str, _Held] = {}
        self._fences: dict[str, int] = {}

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        return cls(clock=env.clock, **options)

    def lock(
        self, name: str, *, ttl: float | None = 30.0, timeout: float | None = None
    ) -> MemoryLock:
        """A handle on ``name``. ``timeout`` is how long ``with lock:`` (and ``acquire()``
        without one) waits before giving up with LockNotAcquired; None waits for ever."""
        positive("ttl", ttl)
        return MemoryLock(self, name, ttl, timeout)

    def live(self, name: str) -> _Held | None:
        """The current hold of ``name`` unless its TTL ran out. Call with ``cond`` held."""
        held = self.held.get(name)
        if held is None or held.expires_at is None or self.clock.monotonic() < held.expires_at:
            return held
        del self.held[name]
        return None

    def try_take(self, name: str, token: str, ttl: float | None) -> int | None:
        """Take ``name`` if free and return its new fence. Call with ``cond`` held."""
        if self.live(name) is not None:
            return None
        expires = None if ttl is None else self.clock.monotonic() + ttl
        self.held[name] = _Held(token, expires)
        self._fences[name] = fence = self._fences.get(name, 0) + 1
        return fence
