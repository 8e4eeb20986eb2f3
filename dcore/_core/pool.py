"""Bounded, thread-safe pools of plugin instances that hold resources.

A plugin with ``__enter__``/``__exit__`` is entered when it is created for the pool and
exited when the pool closes (or an instance is discarded after an error), so a
connection is opened once and reused instead of once per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dcore._core.clock import Clock, SystemClock
from dcore.errors import PoolExhausted

__all__ = ["InstancePool", "PluginPool"]


class InstancePool:
    """At most ``max_size`` instances made by ``make``; ``acquire`` blocks for a free one."""

    def __init__(
        self,
        make: Callable[[], Any],
        *,
        max_size: int = 8,
        label: str = "plugin",
        clock: Clock | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._make = make
        self.max_size = max_size
        self.label = label
        self._clock = clock or SystemClock()
        self._idle: list[Any] = []
        self._created = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def size(self) -> int:
        with self._cond:
            return self._created

    @property
    def idle(self) -> int:
        with self._cond:
            return len(self._idle)

    def acquire(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError(f"pool of {self.label} is closed")
                if self._idle:
                    return self._idle.pop()
                if self._created < self.max_size:
                    self._created += 1
                    break
                remaining = None if deadline is None else deadline - self._clock.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PoolExhausted(
                        f"all {self.max_size} pooled {self.label} instances stayed in use for "
                        f"{timeout}s; raise max_size or release instances sooner"
                    )
                self._cond.wait(remaining)
        try:
            instance = self._make()
            enter = getattr(instance, "__enter__", None)
            if enter is not None:
                enter()
            return instance
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def release(self, instance: Any, *, discard: bool = False) -> None:
        """Return ``instance``; ``discard=True`` exits it instead (it may be broken)."""
        with self._cond:
            if discard or self._closed:
                self._created -= 1
            else:
                self._idle.append(instance)
            self._cond.notify()
        if discard or self._closed:
            _exit(instance)

    @contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[Any]:
        yield from _lend(self.acquire(timeout), self.release)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._created -= len(idle)
            self._cond.notify_all()
        for instance in idle:
            _exit(instance)


def _lend(instance: Any, release: Callable[..., None]) -> Iterator[Any]:
    """The body of both ``lease`` methods: yield ``instance``, then give it back; an
    instance whose block raised is discarded, as it may be broken."""
    try:
        yield instance
    except BaseException:
        release(instance, discard=True)
        raise
    release(instance)


def _exit(instance: Any) -> None:
    exit_ = getattr(instance, "__exit__", None)
    if exit_ is not None:
        exit_(None, None, None)


class PluginPool:
    """Pools keyed by (interface, plugin name, options), built through a PluginFactory."""

    def __init__(self, factory: Any = None, *, max_size: int = 8) -> None:
        from dcore._core.factory import PluginFactory

        self.factory = factory or PluginFactory()
        self.max_size = max_size
        self._pools: dict[tuple[type, str, type, str], InstancePool] = {}
        self._owner: dict[int, InstancePool] = {}
        self._lock = threading.Lock()

    def _pool(self, interface: type, name: str, options: dict[str, Any]) -> InstancePool:
        # keyed by the class the name resolves to now, so a plugin replaced in the
        # registry is served by a new pool rather than the old class's instances
        cls = self.factory.resolve(interface, name)
        key = (interface, name, cls, repr(sorted(options.items())))
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                self.factory.validate(interface, name, options)  # fail fast, before blocking
                pool = InstancePool(
                    lambda: self.factory.create(interface, name, **options),
                    max_size=self.max_size,
                    label=f"{interface.__name__}:{name}",
                )
                self._pools[key] = pool
            return pool

    def acquire(
        self, interface: type, name: str, *, timeout: float | None = None, **options: Any
    ) -> Any:
        pool = self._pool(interface, name, options)
        instance = pool.acquire(timeout)
        with self._lock:
            self._owner[id(instance)] = pool
        return instance

    def release(self, instance: Any, *, discard: bool = False) -> None:
        with self._lock:
            pool = self._owner.pop(id(instance), None)
        if pool is None:
            raise ValueError(f"{instance!r} was not acquired from this pool")
        pool.release(instance, discard=discard)

    @contextmanager
    def lease(
        self, interface: type, name: str, *, timeout: float | None = None, **options: Any
    ) -> Iterator[Any]:
        yield from _lend(self.acquire(interface, name, timeout=timeout, **options), self.release)

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()
