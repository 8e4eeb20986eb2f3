"""Clocks that only tests move: dcore's ``Clock`` protocol over a number, never the wall.

:class:`ManualClock` is for plain tests: ``sleep`` returns at once, moves time forward and
records how long it was asked to wait, so a test of an hour of retry backoff runs in
microseconds and can assert the exact waits. The simulator's ``VirtualClock`` shares the
reading and moving part (:class:`ForwardClock`) and moves time through its scheduler.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

__all__ = ["EPOCH", "ForwardClock", "ManualClock"]

#: Wall-clock time at monotonic time 0 (2023-11-14T22:13:20Z): fixed, so runs repeat.
EPOCH = 1_700_000_000.0


class ForwardClock:
    """Monotonic time is a number that only moves forward; wall time is ``epoch`` plus it."""

    def __init__(self, start: float = 0.0, epoch: float = EPOCH) -> None:
        self._now = float(start)
        self.epoch = epoch

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self.epoch + self._now

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def advance_to(self, when: float) -> None:
        """Move monotonic time forward to ``when``; ValueError if that is in the past."""
        if when < self._now:
            raise ValueError(
                f"virtual time cannot go backwards: it is {self._now!r}, asked for {when!r}"
            )
        self._now = when


class ManualClock(ForwardClock):
    """A :class:`dcore.Clock` that moves only when the test (or a ``sleep``) moves it.

    ``sleep(s)`` returns at once, advances time by ``s`` and appends ``s`` to ``sleeps``;
    ``advance(s)`` moves time without recording a sleep. Both refuse negative seconds, so
    time never goes backwards. Safe to share with dispatcher threads.
    """

    def __init__(self, start: float = 0.0, epoch: float = EPOCH) -> None:
        super().__init__(start, epoch)
        #: every duration passed to ``sleep``, in call order
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass; ValueError if negative."""
        if seconds < 0:
            raise ValueError(f"advance() needs seconds >= 0, got {seconds!r}")
        with self._lock:
            self.advance_to(self._now + seconds)

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"sleep() needs seconds >= 0, got {seconds!r}")
        with self._lock:
            self.sleeps.append(seconds)
            self.advance_to(self._now + seconds)

    def __repr__(self) -> str:
        return f"ManualClock(t={self._now!r})"
