"""Time for user code: inside simulated tasks, ``time.time()``, ``datetime.now()`` and
friends read the virtual clock (through freezegun) and ``time.sleep`` yields to the
scheduler.

freezegun is started with ``real_asyncio=True`` (a frozen monotonic clock hangs asyncio)
and leaves Hypothesis and pytest on real time. Starting it scans every loaded module
(~10 ms); a nested start costs microseconds, so :func:`virtual_time_session` holds one
open across many runs (the ``dcore_sim`` fixture and ``dcore explore`` do). ``time.sleep`` is
replaced on the ``time`` module only: code that did ``from time import sleep`` keeps
the real one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcore_testing.sim.clock import VirtualClock

__all__ = ["patched_time", "virtual_time_session"]

_IGNORE = ["hypothesis", "_pytest", "pluggy", "coverage"]


class _ClockFactory:
    """Stands in for freezegun's frozen-time factory: the virtual clock's now, naive UTC."""

    def __init__(self, clock: VirtualClock) -> None:
        from freezegun.api import real_datetime

        self.clock = clock
        self._fromtimestamp = real_datetime.fromtimestamp

    def __call__(self) -> Any:
        return self._fromtimestamp(self.clock.time(), UTC).replace(tzinfo=None)

    def tick(self, delta: Any = 0) -> Any:  # freezegun API; the simulator moves time
        return self()


@contextmanager
def patched_time(clock: VirtualClock) -> Iterator[None]:
    """Make wall time follow ``clock`` and ``time.sleep`` sleep on it, for this block."""
    import freezegun
    from freezegun import api

    freezer = freezegun.freeze_time(clock.now(), real_asyncio=True, ignore=_IGNORE)
    freezer.start()
    api.freeze_factories[-1] = _ClockFactory(clock)  # type: ignore[call-overload]
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        sched = clock.scheduler
        if sched is not None and sched.current is not None:
            clock.sleep(seconds)
        else:
            real_sleep(seconds)

    time.sleep = sleep  # type: ignore[assignment]
    try:
        yield
    finally:
        time.sleep = real_sleep
        freezer.stop()


@contextmanager
def virtual_time_session() -> Iterator[None]:
    """Keep freezegun's patches in place across many simulator runs (cheap nesting).

    Outside a run, time ticks on as usual; inside, it follows that run's virtual clock."""
    import freezegun

    freezer = freezegun.freeze_time(tick=True, real_asyncio=True, ignore=_IGNORE)
    freezer.start()
    try:
        yield
    finally:
        freezer.stop()
