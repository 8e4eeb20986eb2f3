"""The scheduler: tasks in greenlets, one running at a time, time moved by timers.

A task runs until it reaches a yield point (a service call, ``clock.sleep``, a lock),
then hands control back here. The :class:`~dcore_testing.sim.chooser.Chooser` picks the
next ready task; index 0 is always the task that just yielded, so "0" means no context
switch and each non-zero pick is a preemption. With nothing ready, virtual time jumps
to the next timer and every timer due at that instant fires before the next choice,
so tasks waking together race. A yield with no other task ready returns at once: the
choice would be forced anyway.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Any

from greenlet import GreenletExit, getcurrent, greenlet

from dcore_testing.sim.chooser import Chooser
from dcore_testing.sim.clock import VirtualClock
from dcore_testing.sim.errors import SimulationError
from dcore_testing.sim.trace import Trace

__all__ = ["Scheduler", "Task", "TimerHandle"]


class Task:
    """One simulated thread of control: a worker's delivery or a spawned client."""

    __slots__ = ("context", "crashed", "done", "error", "fn", "glet", "job", "lane",
                 "name", "timed_out", "token", "waiting_on", "worker")

    def __init__(self, fn: Callable[[], Any], name: str, lane: str,
                 worker: int | None, job: str | None) -> None:
        self.fn = fn
        self.name = name
        self.lane = lane
        self.worker = worker
        self.job = job
        self.glet: greenlet | None = None
        self.context = contextvars.copy_context()
        self.token = 0  # bumped on every wake-up; a timer holding an old one is stale
        self.waiting_on: Hashable | None = None
        self.timed_out = False
        self.crashed = False
        self.done = False
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        state = "done" if self.done else f"waiting on {self.waiting_on!r}" if (
            self.waiting_on is not None) else "alive"
        return f"Task({self.name!r}, {state})"


class TimerHandle:
    """A callback timer (:meth:`Scheduler.call_later`); ``cancel()`` drops it, and a
    cancelled timer never moves virtual time."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


# a timer: (when, seq, task or None, token, callback timer or None)
_Timer = tuple[float, int, "Task | None", int, "TimerHandle | None"]


class Scheduler:
    def __init__(self, clock: VirtualClock, chooser: Chooser, trace: Trace) -> None:
        self.clock = clock
        self.chooser = chooser
        self.trace = trace
        self.ready: list[Task] = []
        self.timers: list[_Timer] = []
        self.waiters: dict[Hashable, list[Task]] = {}
        self.tasks: dict[Task, None] = {}  # live tasks, in spawn order
        self.current: Task | None = None
        self.closing = False
        self.on_task_done: Callable[[Task], None] | None = None
        self._seq = itertools.count()
        self._hub: greenlet | None = None
        self._running = False

    # -- events ---------------------------------------------------------------------------
    def emit(self, ev: str, task: Task | None = None, /, **fields: Any) -> None:
        """Record an event at the current virtual time, in ``task``'s lane (default: the
        running task's)."""
        if task is None:
            task = self.current
        event: dict[str, Any] = {"t": self.clock._now, "ev": ev,
                                 "lane": "main" if task is None else task.lane}
        if task is not None and task.job is not None:
            event["job"] = task.job
        event.update(fields)
        self.trace.record(event)

    # -- creating work ----------------------------------------------------------------------
    def spawn(self, fn: Callable[[], Any], *, name: str, lane: str | None = None,
              worker: int | None = None, job: str | None = None) -> Task:
        task = Task(fn, name, lane or name, worker, job)
        self.tasks[task] = None
        self.ready.append(task)
        self.emit("spawn", task, task=name)
        return task

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (in the scheduler, not in a task: it must not block) after
        ``delay`` virtual seconds, unless the returned handle is cancelled first."""
        handle = TimerHandle(callback)
        heapq.heappush(self.timers, (self.clock._now + delay, next(self._seq), None, 0, handle))
        return handle

    # -- yield points (called from inside a task) ---------------------------------------------
    def yield_(self) -> None:
        """Let another ready task run; returns at once when none could."""
        task = self.current
        if task is None or self.closing:
            return
        if not self.ready and not (self.timers and self.timers[0][0] <= self.clock._now):
            return
        self.ready.insert(0, task)
        self._switch_out()

    def sleep(self, seconds: float) -> None:
        task = self.current
        if task is None or self.closing:
            return
        token = task.token = task.token + 1
        heapq.heappush(self.timers, (self.clock._now + seconds, next(self._seq), task,
                                     token, None))
        self._hub.switch()  # type: ignore[union-attr]

    def park(self, key: Hashable, timeout: float | None = None) -> bool:
        """Wait until :meth:`notify` on ``key`` (True) or ``timeout`` passes (False)."""
        task = self.current
        if task is None:
            raise SimulationError("park() is for simulated tasks; the main flow cannot wait")
        if self.closing:
            return False
        task.token += 1
        task.timed_out = False
        task.waiting_on = key
        self.waiters.setdefault(key, []).append(task)
        if timeout is not None:
            heapq.heappush(self.timers, (self.clock._now + max(timeout, 0.0), next(self._seq),
                                         task, task.token, None))
        self._switch_out()
        return not task.timed_out

    def notify(self, key: Hashable) -> int:
        """Make every task parked on ``key`` ready; returns how many."""
        tasks = self.waiters.pop(key, None)
        if not tasks:
            return 0
        for task in tasks:
            task.token += 1
            task.waiting_on = None
            self.ready.append(task)
        return len(tasks)

    def _switch_out(self) -> None:
        hub = self._hub
        assert hub is not None
        hub.switch()

    # -- running ---------------------------------------------------------------------------
    def run(self, until: float | None = None, steps: int | None = None) -> str:
        """Run until nothing is ready and no timer is pending ("idle"), until virtual time
        ``until`` ("deadline"), or for ``steps`` task resumptions ("steps")."""
        if self.current is not None or self._running:
            raise SimulationError(
                "the simulation cannot be run from inside a simulated task (or re-entered); "
                "call run_until_idle()/run_for()/step() from the test's own code"
            )
        self._running = True
        self._hub = hub = getcurrent()
        ready, timers, clock, trace = self.ready, self.timers, self.clock, self.trace
        heappop = heapq.heappop
        done = 0
        try:
            while True:
                if steps is not None and done >= steps:
                    return "steps"
                if ready:
                    n = len(ready)
                    if n == 1:
                        task = ready.pop()
                    else:
                        i = self.chooser.choose(n, "run")
                        task = ready.pop(i)
                        self.emit("choice", task, what="run", n=n, pick=i)
                    done += 1
                    # resume the task until it yields, parks, sleeps or ends; a task
                    # never raises into here (_bootstrap keeps its error)
                    glet = task.glet
                    self.current = task
                    if glet is None:
                        glet = task.glet = greenlet(self._bootstrap, parent=hub)
                        glet.gr_context = task.context
                        glet.switch(task)
                    else:
                        glet.switch()
                    self.current = None
                    if task.done:
                        self._finish(task)
                    if trace.diverged is not None:
                        raise trace.diverged
                    continue
                while timers and timers[0][4] is not None and timers[0][4].cancelled:
                    heappop(timers)
                if not timers:
                    return "idle"
                when = timers[0][0]
                if until is not None and when > until:
                    clock.advance_to(until)
                    return "deadline"
                if when > clock._now:
                    clock.advance_to(when)
                now = clock._now
                while timers and timers[0][0] <= now:
                    _, _, waker, token, callback = heappop(timers)
                    if callback is not None:
                        if not callback.cancelled:
                            callback.callback()
                    elif waker is not None and waker.token == token and not waker.done:
                        waker.token += 1
                        if waker.waiting_on is not None:
                            self._unpark(waker)
                        ready.append(waker)
        finally:
            self._running = False

    def _unpark(self, task: Task) -> None:
        """A parked task's timeout fired: take it off its wait list."""
        key = task.waiting_on
        waiting = self.waiters[key]
        waiting.remove(task)
        if not waiting:
            del self.waiters[key]
        task.waiting_on = None
        task.timed_out = True

    @staticmethod
    def _bootstrap(task: Task) -> None:
        try:
            task.fn()
        except BaseException as exc:
            task.error = exc
        finally:
            task.done = True

    def _finish(self, task: Task) -> None:
        self.tasks.pop(task, None)
        task.glet = None
        if self.on_task_done is not None:
            self.on_task_done(task)
        error = task.error
        if error is not None and not isinstance(error, GreenletExit):
            task.error = None
            raise error

    # -- state -------------------------------------------------------------------------------
    @property
    def blocked(self) -> list[Task]:
        """Tasks waiting with no timer that could wake them."""
        return [t for ts in self.waiters.values() for t in ts
                if not any(timer[2] is t and timer[3] == t.token for timer in self.timers)]

    def close(self) -> None:
        """Unwind every unfinished task (GreenletExit); yield points return at once."""
        self.closing = True
        try:
            for task in list(self.tasks):
                glet = task.glet
                if glet is not None and not glet.dead:
                    glet.parent = getcurrent()
                    self.current = task
                    try:
                        glet.throw(GreenletExit)
                    except GreenletExit:
                        pass
                    finally:
                        self.current = None
            self.tasks.clear()
            self.ready.clear()
            self.timers.clear()
            self.waiters.clear()
        finally:
            self.closing = False
