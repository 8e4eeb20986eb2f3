"""Virtual time: dcore's ``Clock`` protocol over a number the scheduler moves.

Time only moves when the scheduler jumps to the next timer (or ``run_for`` asks it to);
it never goes backwards. ``sleep`` inside a simulated task parks that task on a timer;
outside any task it runs the simulation for that long, so test code can simply wait.
Each worker may see its wall clock skewed (``time``/``now``); ``monotonic`` is never
skewed, as a process's monotonic clock has no meaning elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dcore_testing.clock import EPOCH, ForwardClock

if TYPE_CHECKING:
    from dcore_testing.sim.scheduler import Scheduler

__all__ = ["EPOCH", "VirtualClock"]


class VirtualClock(ForwardClock):
    """A :class:`dcore.Clock` whose time is moved by the simulator, never by the wall."""

    def __init__(self, start: float = 0.0, epoch: float = EPOCH) -> None:
        super().__init__(start, epoch)
        self._scheduler: Scheduler | None = None
        #: what ``sleep`` does outside any task (the simulation's ``run_for``)
        self.run_for: Callable[[float], None] | None = None
        #: worker number → seconds added to that worker's wall clock
        self.skew: dict[int, float] = {}

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler whose timers move this clock (None: time moves only on
        ``sleep`` and ``advance_to``)."""
        return self._scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Scheduler | None) -> None:
        self._scheduler = scheduler
        # a task's sleep is the hot path of timer-heavy runs: with a scheduler attached
        # this clock's sleep is the scheduler's (same contract), one call instead of two
        if scheduler is None:
            vars(self).pop("sleep", None)
        else:
            self.sleep = scheduler.sleep  # type: ignore[method-assign]

    # -- reading (monotonic, now and advance_to come from ForwardClock) -------------------
    def time(self) -> float:
        if self.skew:
            return self.epoch + self._now + self._skew()
        return self.epoch + self._now

    def _skew(self) -> float:
        sched = self._scheduler
        task = sched.current if sched is not None else None
        if task is None or task.worker is None:
            return 0.0
        return self.skew.get(task.worker, 0.0)

    # -- moving -----------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """Sleep the running simulated task (through the scheduler); outside any task,
        :meth:`pass_time`. Once a scheduler is attached, its ``sleep`` replaces this."""
        sched = self._scheduler
        if sched is not None:
            sched.sleep(seconds)
        else:
            self.pass_time(seconds)

    def pass_time(self, seconds: float) -> None:
        """What ``sleep`` does outside any task: run the simulation for that long
        (``run_for``), or with none attached just move time forward."""
        if seconds < 0:
            raise ValueError(f"sleep() needs seconds >= 0, got {seconds!r}")
        if self.run_for is not None:
            self.run_for(seconds)
        else:
            self.advance_to(self._now + seconds)

    def __repr__(self) -> str:
        return f"VirtualClock(t={self._now!r})"
