"""Time as an injected service.

Nothing in dcore reads the wall clock or sleeps directly: retries, TTLs and timestamps go
through ``env.clock``, so the simulator can replace it with virtual time and run an hour of
backoff in milliseconds.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Wall time for timestamps, monotonic time for durations, and a sleep."""

    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def time(self) -> float:
        """Seconds since the epoch (``now()`` as a float)."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes backwards; for durations and deadlines."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the caller for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock. ``sleep`` waits on an Event so that ``interrupt()`` can wake sleepers."""

    def __init__(self) -> None:
        self._wake = threading.Event()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
