"""Service proxies: every call a simulated task makes to storage, the event bus, the job
store or the locks is a yield point, a fault point and an event in the trace.

The proxies wrap real backends (dcore's in-memory ones by default, or Redis/S3 ones)
without copying their behaviour. Calls from the test's own code (outside any task) go
straight through and are only recorded. A task whose worker crashed is a dead process:
its further calls (``finally`` blocks, ``with`` exits while the crash unwinds) do
nothing, so a lock it held stays held until its TTL runs out, as in production.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dcore.errors import LockLostError
from dcore.services.locks import Lock
from dcore_testing.sim.errors import Deadlock

if TYPE_CHECKING:
    from dcore_testing.sim.environment import SimEnvironment

__all__ = ["LockProxy", "LocksProxy", "ServiceProxy"]

#: methods that do no I/O: no yield point, no event
_LOCAL = frozenset({"close", "from_environment", "lock", "stream_keys"})
#: the announced forms of a move are the same step as the plain one (same fault target)
_ALIASES = {"create_announced": "create", "transition_announced": "transition"}
#: how often (virtual seconds) a waiter re-checks a lock whose expiry it cannot see
_LOCK_POLL = 0.1


class ServiceProxy:
    """Wraps one backend; its public methods become simulated calls."""

    def __init__(self, sim: SimEnvironment, service: str, inner: Any) -> None:
        self._sim = sim
        self._service = service
        self._inner = inner

    @property
    def inner(self) -> Any:
        """The wrapped backend (calls on it bypass the simulator)."""
        return self._inner

    def announces_on(self, bus: Any) -> bool:
        """Whether the wrapped job store publishes on ``bus`` itself (no I/O)."""
        announces = getattr(self._inner, "announces_on", None)
        if isinstance(bus, ServiceProxy):
            bus = bus._inner
        return callable(announces) and bool(announces(bus))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        if name in _LOCAL:
            return _unwrapping(attr)
        op = f"{self._service}.{_ALIASES.get(name, name)}"
        sim = self._sim

        def call(*args: Any, **kwargs: Any) -> Any:
            if not kwargs:  # (unwrapped's check, without the call)
                for value in args:
                    if isinstance(value, _WRAPPING):
                        break
                else:
                    return sim.service_call(op, attr, args, kwargs)
            return sim.service_call(op, attr, *unwrapped(args, kwargs))

        call.__name__ = name
        call.__doc__ = getattr(attr, "__doc__", None)
        self.__dict__[name] = call
        return call

    def __repr__(self) -> str:
        return f"Simulated({self._inner!r})"


#: what an argument must be for ``unwrapped`` to look inside it
_WRAPPING = (ServiceProxy, tuple)


def unwrapped(args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[tuple[Any, ...], dict[str, Any]]:  # fmt: skip
    """Arguments with every simulated service replaced by the backend it wraps: a
    backend handed another service (the job store publishing on the bus) talks to it
    directly, inside its own single step. Only what may hold a service (a service, or a
    tuple such as an Announcement) is replaced, in copies; arguments holding none (nearly
    every call) are returned as they are."""
    items: list[Any] | None = None
    for i, value in enumerate(args):
        if isinstance(value, _WRAPPING):
            if items is None:
                items = list(args)
            items[i] = _real(value)
    new_kwargs = kwargs
    for key, value in kwargs.items():
        if isinstance(value, _WRAPPING):
            if new_kwargs is kwargs:
                new_kwargs = dict(kwargs)
            new_kwargs[key] = _real(value)
    return (args if items is None else tuple(items)), new_kwargs


def _real(value: Any) -> Any:
    """``value`` with the simulated service it is (or that a NamedTuple, such as an
    Announcement, holds) replaced by the backend it wraps."""
    if isinstance(value, ServiceProxy):
        return value._inner
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*[_real(v) if isinstance(v, _WRAPPING) else v for v in value])
    return value


def _unwrapping(fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = unwrapped(args, kwargs)
        return fn(*args, **kwargs)

    return call


class LocksProxy(ServiceProxy):
    """The lock service: ``lock()`` hands out :class:`LockProxy` handles."""

    def lock(self, name: str, *, ttl: float | None = 30.0) -> LockProxy:
        return LockProxy(self._sim, self._inner, self._inner.lock(name, ttl=ttl), name, ttl)


class LockProxy(Lock):
    """A lock handle whose blocking waits are virtual: a waiter parks until the holder
    releases, its TTL runs out, or the blocking timeout (virtual seconds) passes."""

    def __init__(
        self, sim: SimEnvironment, service: Any, inner: Lock, name: str, ttl: float | None
    ) -> None:
        self._sim = sim
        self._service = service
        self._inner = inner
        self.name = name
        self.ttl = ttl

    @property
    def fence(self) -> int | None:  # type: ignore[override]
        return self._inner.fence

    def _expires_in(self) -> float | None:
        """Seconds until the current hold expires, when the backend lets us see it."""
        held = getattr(self._service, "held", None)
        if isinstance(held, dict):
            hold = held.get(self.name)
            at = getattr(hold, "expires_at", None)
            if hold is None:
                return 0.0
            return None if at is None else max(at - self._sim.clock.monotonic(), 0.0)
        return _LOCK_POLL

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        sim = self._sim
        sched = sim.scheduler
        task = sched.current
        inner = self._inner
        if task is not None:
            sim.enter_call("locks.acquire", task)
        sim.emit_call("lock.acquire", name=self.name, blocking=blocking, timeout=timeout)
        deadline = None if timeout is None else sim.clock.monotonic() + timeout
        while True:
            if inner.acquire(blocking=False):
                sim.emit_call("lock.acquired", name=self.name, fence=inner.fence)
                return True
            if not blocking:
                sim.emit_call("lock.busy", name=self.name)
                return False
            wait = None if deadline is None else deadline - sim.clock.monotonic()
            if wait is not None and wait <= 0:
                sim.emit_call("lock.timeout", name=self.name)
                return False
            expiry = self._expires_in()
            if expiry is not None:
                wait = expiry if wait is None else min(wait, expiry)
            if task is None:  # the test's own code: let the simulation run meanwhile
                if wait is None:
                    if not sched.run(steps=1) == "steps":
                        raise Deadlock(f"lock {self.name!r} is held and nothing can run")
                else:
                    sched.run(until=sim.clock.monotonic() + wait)
                continue
            sim.emit_call("lock.wait", name=self.name)
            sched.park(("lock", self.name), wait)

    def release(self) -> None:
        sim = self._sim
        task = sim.scheduler.current
        if task is not None:
            if task.crashed:
                return  # a dead process releases nothing; the TTL will
            sim.enter_call("locks.release", task)
        sim.emit_call("lock.release", name=self.name, fence=self._inner.fence)
        try:
            self._inner.release()
        except LockLostError:
            sim.emit_call("lock.lost", name=self.name)
            raise
        finally:
            sim.scheduler.notify(("lock", self.name))

    def extend(self, additional: float) -> None:
        self._sim.service_call("locks.extend", self._inner.extend, (additional,), {})

    def owned(self) -> bool:
        return self._inner.owned()

    def __repr__(self) -> str:
        return f"SimulatedLock({self.name!r}, ttl={self.ttl!r})"
