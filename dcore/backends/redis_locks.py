"""Redis locks on redis-py's ``Lock``, with a fence counter taken atomically on acquire.

redis-py gives the token-checked Lua release and extend and the TTL; we replace only its
``do_acquire`` with one script that does ``SET NX PX`` and, when that succeeds, ``INCR``
of ``<prefix>:lockfence:<name>`` — so a fence is issued exactly to the holder, in the same
atomic step, and grows with every acquisition. The fence key never expires (one small
integer per lock name) so fences stay monotonic across the lock key's lifetimes.

Handles are built with ``thread_local=False``: the token lives on the handle, so a lock
taken in a request thread can be released by the worker thread that finishes the job.
The price is that one handle must not be acquired concurrently from two threads —
contenders each take their own handle from :meth:`RedisLocks.lock`.

Blocking acquire polls every ``poll_interval`` seconds (redis-py's design: Redis has no
blocking SET), bounded by the ``timeout``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar, Self

from dcore._plugins.registry import register_plugin
from dcore.backends._redis import RedisBackend, require_redis, settings_url
from dcore.backends._shared import at_least
from dcore.errors import LockLostError
from dcore.services.locks import Lock, LockInterface

if TYPE_CHECKING:
    from redis.commands.core import Script
    from redis.exceptions import LockError

    from dcore._core.environment import Environment
    from dcore.backends._redis import RedisClient

__all__ = ["RedisLock", "RedisLocks"]

ACQUIRE_LUA = """
local ok
if ARGV[2] == '0' then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if ok then return redis.call('INCR', KEYS[2]) end
return 0
"""


@functools.cache
def _fenced_lock_class() -> Any:
    """redis-py's Lock whose acquire also issues the fence, in one script. Built on first
    use, so that importing this module (``import dcore`` does) needs no redis-py."""
    require_redis()
    from redis.lock import Lock as RedisPyLock

    class FencedLock(RedisPyLock):
        lua_acquire: ClassVar[Script | None] = None

        def __init__(
            self, client: RedisClient, name: str, fence_key: str, ttl: float | None, poll: float
        ) -> None:
            super().__init__(client, name, timeout=ttl, sleep=poll, thread_local=False)
            self.fence_key = fence_key
            self.ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
            self.last_fence: int | None = None
            if FencedLock.lua_acquire is None:
                FencedLock.lua_acquire = client.register_script(ACQUIRE_LUA)

        def do_acquire(self, token: Any) -> bool:
            assert FencedLock.lua_acquire is not None
            fence = FencedLock.lua_acquire(
                keys=[self.name, self.fence_key], args=[token, self.ttl_ms], client=self.redis
            )
            if fence:
                self.last_fence = int(fence)
                return True
            return False

    return FencedLock


class RedisLock(Lock):
    """A dcore lock handle over one fenced redis-py ``Lock``."""

    def __init__(
        self, owner: RedisLocks, name: str, ttl: float | None, timeout: float | None = None
    ) -> None:
        self._owner = owner
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self._lock = _fenced_lock_class()(
            owner.client, owner.key("lock", name), owner.key("lockfence", name), ttl,
            owner.poll_interval,
        )  # fmt: skip

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = self.timeout if timeout is None else timeout
        with self._owner.translating():
            got = bool(self._lock.acquire(blocking=blocking, blocking_timeout=timeout))
        if got:
            self.fence = self._lock.last_fence
        return got

    def _lost(self, exc: LockError, action: str) -> LockLostError:
        if self._lock.local.token is None and "unlocked" in str(exc):
            return LockLostError(f"lock {self.name!r} is not held by this handle")
        return LockLostError(
            f"lock {self.name!r} expired before it was {action} and may have been taken by "
            "another holder; use a longer ttl or extend() in time"
        )

    def release(self) -> None:
        if self._lock.local.token is None:
            raise LockLostError(f"lock {self.name!r} is not held by this handle")
        from redis.exceptions import LockError

        try:
            with self._owner.translating():
                self._lock.release()
        except LockError as exc:
            raise self._lost(exc, "released") from None

    def extend(self, additional: float) -> None:
        at_least("additional", additional, 0, unit="seconds")
        if self._lock.local.token is None:
            raise LockLostError(f"lock {self.name!r} is not held by this handle")
        if self.ttl is None:
            raise ValueError(f"lock {self.name!r} has no ttl; there is nothing to extend")
        from redis.exceptions import LockError

        try:
            with self._owner.translating():
                self._lock.extend(additional)
        except LockError as exc:
            self._lock.local.token = None
            raise self._lost(exc, "extended") from None

    def owned(self) -> bool:
        with self._owner.translating():
            return bool(self._lock.owned())

    def __repr__(self) -> str:
        return f"RedisLock({self.name!r}, ttl={self.ttl!r}, fence={self.fence!r})"


@register_plugin("redis")
class RedisLocks(RedisBackend, LockInterface):
    """Lock handles on keys ``<prefix>:lock:<name>``."""

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        url: str | None = None,
        prefix: str = "dcore",
        poll_interval: float = 0.02,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        super().__init__(client, url=url, prefix=prefix)
        self.poll_interval = poll_interval

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        return cls(url=settings_url(env.settings), prefix=env.settings.key_prefix, **options)

    def lock(
        self, name: str, *, ttl: float | None = 30.0, timeout: float | None = None
    ) -> RedisLock:
        """A handle on ``name``. ``timeout`` is how long ``with lock:`` (and ``acquire()``
        without one) waits before giving up with LockNotAcquired; None waits for ever."""
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds or None, got {ttl!r}")
        return RedisLock(self, name, ttl, timeout)
