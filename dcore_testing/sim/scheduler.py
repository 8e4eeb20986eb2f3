"""The scheduler: tasks in greenlets, one running at a time, time moved by timers.

A task runs until it reaches a yield point (a service call, ``clock.sleep``, a lock),
then hands control back here. The :class:`~dcore_testing.sim.chooser.Chooser` picks the
next ready task; index 0 is always the task that just yielded, so "0" means no context
switch and each non-zero pick is a preemption. With nothing ready, virtual time jumps
to the next timer and every timer due at that instant fires before the next choice,
so tasks waking together race. A yield with no other task ready returns at once: the
choice would be forced anyway.

Timers live in a heap of distinct due times (floats compare several times faster than
the ``(when, seq, ...)`` tuples a plain heap would hold) and ``due``, which maps each
time to its timers in the order they were set; together they fire timers exactly in
``(when, order set)`` order. A sleeping task whose successor is certain without a choice
(one task ready, or else one task waking at the next timer) hands control to it
directly instead of through the scheduler's loop: the same run, one greenlet switch
instead of two. Anything else (a choice, a callback, a task starting or ending, a step
budget or deadline) goes through the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import _get_running_loop as _running_loop
from asyncio import _set_running_loop
from collections.abc import Callable, Hashable
from heapq import heappop, heappush, heapreplace
from typing import Any

from greenlet import GreenletExit, getcurrent, greenlet

from dcore_testing.sim.chooser import Chooser
from dcore_testing.sim.clock import VirtualClock
from dcore_testing.sim.errors import SimulationError
from dcore_testing.sim.trace import Trace

__all__ = ["Scheduler", "Task", "TimerHandle"]


class Task:
    """One simulated thread of control: a worker's delivery or a spawned client."""

    __slots__ = (
        "context",
        "crashed",
        "done",
        "error",
        "fn",
        "glet",
        "job",
        "lane",
        "name",
        "timed_out",
        "token",
        "waiting_on",
        "worker",
    )

    def __init__(
        self, fn: Callable[[], Any], name: str, lane: str, worker: int | None, job: str | None
    ) -> None:
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
        state = (
            "done"
            if self.done
            else f"waiting on {self.waiting_on!r}"
            if (self.waiting_on is not None)
            else "alive"
        )
        return f"Task({self.name!r}, {state})"


# the timers due at one instant, flat, in the order they were set: a task and the token
# it must still hold to be woken, or None and a callback
_Bucket = list[Any]
_INF = float("inf")
#: how many greenlets of finished tasks wait for new tasks, at most
_IDLE_MAX = 64


class TimerHandle:
    """A callback timer (:meth:`Scheduler.call_later`); ``cancel()`` drops it, and a
    cancelled timer never moves virtual time."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _set_aside() -> asyncio.AbstractEventLoop | None:
    """Before a task switches out: asyncio keeps the running loop per thread, and every
    task shares the thread, so a task inside an async stage's loop (see
    :mod:`dcore_testing.sim.aio`) takes it with it; the next task finds none."""
    loop = _running_loop()
    if loop is not None:
        _set_running_loop(None)
    return loop


def _take_back(loop: asyncio.AbstractEventLoop | None) -> None:
    """Back in the task: its loop (if any) is the running one again."""
    if loop is not None:
        _set_running_loop(loop)


def _cancelled(bucket: _Bucket) -> bool:
    """Whether every timer of an instant is a cancelled callback."""
    return all(bucket[i] is None and bucket[i + 1].cancelled for i in range(0, len(bucket), 2))


class Scheduler:
    def __init__(self, clock: VirtualClock, chooser: Chooser, trace: Trace) -> None:
        self.clock = clock
        self.chooser = chooser
        self.trace = trace
        self.ready: list[Task] = []
        #: distinct times at which timers are due, a heap; ``due`` holds their timers
        self.timers: list[float] = []
        self.due: dict[float, _Bucket] = {}
        self.waiters: dict[Hashable, list[Task]] = {}
        self.tasks: dict[Task, None] = {}  # live tasks, in spawn order
        self.current: Task | None = None
        self.closing = False
        self.on_task_done: Callable[[Task], None] | None = None
        self._hub: greenlet | None = None
        #: greenlets whose task ended, waiting for the next task (at most _IDLE_MAX): a
        #: new greenlet maps and unmaps a 16 KiB Python data stack (and faults its pages
        #: in) for every task
        self._idle: list[greenlet] = []
        self._running = False
        # sleep() may hand over directly only inside a run() with no step budget, up
        # to its deadline
        self._direct = False
        self._until = _INF

    # -- events ---------------------------------------------------------------------------
    def emit(self, ev: str, task: Task | None = None, /, **fields: Any) -> None:
        """Record an event at the current virtual time, in ``task``'s lane (default: the
        running task's)."""
        if task is None:
            task = self.current
        if task is None:
            event = {"t": self.clock._now, "ev": ev, "lane": "main", **fields}
        elif task.job is None:
            event = {"t": self.clock._now, "ev": ev, "lane": task.lane, **fields}
        else:  # (a "job" among the fields keeps its place after "lane", with its value)
            event = {"t": self.clock._now, "ev": ev, "lane": task.lane, "job": task.job, **fields}
        trace = self.trace
        if trace.expected is None:  # recording: Trace.record's whole work
            trace.events.append(event)
        else:
            trace.record(event)

    def emit_call(self, op: str, key: str) -> None:
        """``emit("call", op=op, key=key)``, the most frequent event (a service call on a
        key), built without the keyword arguments: the same event, field for field."""
        task = self.current
        if task is None:
            event = {"t": self.clock._now, "ev": "call", "lane": "main", "op": op, "key": key}
        elif task.job is None:
            event = {"t": self.clock._now, "ev": "call", "lane": task.lane, "op": op, "key": key}
        else:
            event = {
                "t": self.clock._now,
                "ev": "call",
                "lane": task.lane,
                "job": task.job,
                "op": op,
                "key": key,
            }
        trace = self.trace
        if trace.expected is None:
            trace.events.append(event)
        else:
            trace.record(event)

    def emit_stage(self, ev: str, job: str, stage: str, index: int, *error: str | None) -> None:
        """``emit(ev, job=job, stage=stage, index=index[, error=error])``, a stage's enter
        or exit (ten per job of five stages), built without the keyword arguments: the
        same event, field for field (a task's own job gives way to ``job``, in place)."""
        task = self.current
        event = {
            "t": self.clock._now,
            "ev": ev,
            "lane": "main" if task is None else task.lane,
            "job": job,
            "stage": stage,
            "index": index,
        }
        if error:
            event["error"] = error[0]
        trace = self.trace
        if trace.expected is None:
            trace.events.append(event)
        else:
            trace.record(event)

    # -- creating work ----------------------------------------------------------------------
    def spawn(
        self,
        fn: Callable[[], Any],
        *,
        name: str,
        lane: str | None = None,
        worker: int | None = None,
        job: str | None = None,
    ) -> Task:
        task = Task(fn, name, lane or name, worker, job)
        self.tasks[task] = None
        self.ready.append(task)
        self.emit("spawn", task, task=name)
        return task

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (in the scheduler, not in a task: it must not block) after
        ``delay`` virtual seconds, unless the returned handle is cancelled first."""
        handle = TimerHandle(callback)
        self._set_timer(self.clock._now + delay, None, handle)
        return handle

    def _set_timer(self, when: float, task: Task | None, token_or_callback: Any) -> None:
        bucket = self.due.get(when)
        if bucket is None:
            self.due[when] = [task, token_or_callback]
            heappush(self.timers, when)
        else:
            bucket += (task, token_or_callback)

    # -- yield points (called from inside a task) ---------------------------------------------
    def yield_(self) -> None:
        """Let another ready task run; returns at once when none could."""
        task = self.current
        if task is None or self.closing:
            return
        if not self.ready and not (self.timers and self.timers[0] <= self.clock._now):
            return
        self.ready.insert(0, task)
        self._switch_out()

    def sleep(self, seconds: float) -> None:
        """Put the running task to sleep for ``seconds`` of virtual time; while closing,
        return at once. Outside any task, pass the time as the clock does (run the
        simulation for that long). The attached clock's ``sleep`` is this method.

        The hot path of timer-heavy runs. When what the loop would do next needs no
        choice, no callback and no new greenlet, it is done here, with one switch
        straight to the next task instead of two through the loop:

        * nothing ready, this task's timer is the earliest: wake it, no switch at all;
        * nothing ready, the earliest instant holds one plain wake-up (a sleeper that
          has run before): fire it and resume that task;
        * one task ready, which has run before: resume it.

        Anything else (a choice, a callback, a parked task's timeout, a deadline, a step
        budget, a replay divergence) switches to the loop, which does it as before."""
        if seconds < 0.0:  # (a float constant: float sleeps compare on the fast path)
            raise ValueError(f"sleep() needs seconds >= 0, got {seconds!r}")
        task = self.current
        clock = self.clock
        if task is None:
            clock.pass_time(seconds)
            return
        if self.closing:
            return
        now = clock._now
        when = now + seconds
        token = task.token = task.token + 1
        timers, due = self.timers, self.due
        entry = [task, token]
        bucket = due.setdefault(when, entry)
        fresh = bucket is entry  # a new instant: on the heap below, unless fired at once
        if not fresh:
            bucket += entry
        if self._direct and self.trace.diverged is None:
            ready = self.ready
            if not ready:
                if fresh and (not timers or when < timers[0]):
                    if when <= self._until:  # this task's own timer is the next one
                        del due[when]
                        clock._now = when
                        task.token += 1
                        return
                else:
                    first = timers[0]
                    if now <= first <= self._until:
                        bucket = due.pop(first)
                        nxt = bucket[0]
                        if (
                            len(bucket) == 2
                            and nxt is not None
                            and bucket[1] == nxt.token
                            and nxt.waiting_on is None
                            and nxt.glet is not None
                            and not nxt.done
                        ):
                            if fresh:  # pop ``first`` and push ``when``: one sift
                                heapreplace(timers, when)
                            else:
                                heappop(timers)
                            clock._now = first
                            nxt.token += 1
                            self.current = nxt
                            loop = _running_loop()  # (_set_aside, inline: hot path)
                            if loop is not None:
                                _set_running_loop(None)
                            nxt.glet.switch()
                            if loop is not None:
                                _set_running_loop(loop)
                            return
                        due[first] = bucket  # not a plain wake-up: the loop fires it
            elif len(ready) == 1 and ready[0].glet is not None:
                if fresh:
                    heappush(timers, when)
                nxt = self.current = ready.pop()
                loop = _running_loop()  # (_set_aside, inline: hot path)
                if loop is not None:
                    _set_running_loop(None)
                nxt.glet.switch()  # type: ignore[union-attr]
                if loop is not None:
                    _set_running_loop(loop)
                return
        if fresh:
            heappush(timers, when)
        loop = _running_loop()  # (_set_aside, inline: hot path)
        if loop is not None:
            _set_running_loop(None)
        self._hub.switch()  # type: ignore[union-attr]
        if loop is not None:
            _set_running_loop(loop)

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
            self._set_timer(self.clock._now + max(timeout, 0.0), task, task.token)
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
        loop = _set_aside()
        hub.switch()
        _take_back(loop)

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
        # run from inside a virtual loop's wait (test code awaiting in the main flow):
        # that loop is the main flow's, not the tasks'
        outer = _set_aside()
        # each virtual loop's run sets the thread's async-generator hooks and puts back
        # what it found, and runs interleaved by tasks put them back out of order: the
        # thread gets its own back when the run ends
        hooks = sys.get_asyncgen_hooks()
        self._hub = hub = getcurrent()
        self._direct = steps is None
        self._until = _INF if until is None else until
        done = 0
        ready, timers, due, clock, trace = self.ready, self.timers, self.due, self.clock, self.trace
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
                    # never raises into here (_worker keeps its error). A sleeping
                    # task may hand over to others first: control comes back from
                    # whichever task is current then.
                    glet = task.glet
                    self.current = task
                    if glet is None:
                        if self._idle:
                            glet = self._idle.pop()
                            glet.parent = hub
                        else:
                            glet = greenlet(self._worker, parent=hub)
                        task.glet = glet
                        glet.gr_context = task.context
                        glet.switch(task)
                    else:
                        glet.switch()
                    task = self.current
                    self.current = None
                    if task.done:
                        self._finish(task)
                    if trace.diverged is not None:
                        raise trace.diverged
                    continue
                while timers and _cancelled(due[timers[0]]):
                    del due[heappop(timers)]  # a cancelled timer never moves time
                if not timers:
                    return "idle"
                when = timers[0]
                if until is not None and when > until:
                    clock.advance_to(until)
                    return "deadline"
                if when > clock._now:
                    clock.advance_to(when)
                self._fire(timers, due, clock._now)
        finally:
            self._running = False
            self._direct, self._until = False, _INF
            sys.set_asyncgen_hooks(*hooks)
            _take_back(outer)

    def _fire(self, timers: list[float], due: dict[float, _Bucket], now: float) -> None:
        """Fire every timer due by ``now``, earliest first and in the order set within an
        instant; a timer a callback sets for now (or earlier) fires in this same pass, in
        the place the order gives it."""
        ready = self.ready
        while timers:
            when = timers[0]
            if when > now:
                return
            bucket = due[when]
            i = 0
            try:
                while i < len(bucket):
                    waker, token = bucket[i], bucket[i + 1]
                    i += 2
                    if waker is None:
                        if not token.cancelled:
                            token.callback()  # a callback timer
                        if timers[0] is not when:  # it set a timer due earlier: that first
                            break
                    elif waker.token == token and not waker.done:
                        waker.token += 1
                        if waker.waiting_on is not None:
                            self._unpark(waker)
                        ready.append(waker)
            finally:
                # drop what fired (a failing callback included); the instant leaves the
                # heap once it is empty and back on top
                if i < len(bucket) or timers[0] is not when:
                    del bucket[:i]
                else:
                    heappop(timers)
                    del due[when]

    def _unpark(self, task: Task) -> None:
        """A parked task's timeout fired: take it off its wait list."""
        key = task.waiting_on
        waiting = self.waiters[key]
        waiting.remove(task)
        if not waiting:
            del self.waiters[key]
        task.waiting_on = None
        task.timed_out = True

    def _worker(self, task: Task) -> None:
        """A task's greenlet: runs the task (keeping its error), then waits among the
        idle ones for the next task (None: the scheduler closes), unless it was unwound
        (GreenletExit, or closing) or enough wait already (a run of a thousand concurrent
        tasks keeps no thousand greenlets once they are done)."""
        while True:
            try:
                task.fn()
            except BaseException as exc:
                task.error = exc
            finally:
                task.done = True
            if self.closing or isinstance(task.error, GreenletExit) or len(self._idle) >= _IDLE_MAX:
                return
            self._idle.append(getcurrent())
            del task  # (an idle greenlet keeps no finished task alive)
            task = self._hub.switch()  # type: ignore[union-attr]
            if task is None:  # closing: end here
                return

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
        if not self.waiters:
            return []
        return [
            t
            for ts in self.waiters.values()
            for t in ts
            if not any(
                b[i] is t and b[i + 1] == t.token
                for b in self.due.values()
                for i in range(0, len(b), 2)
            )
        ]

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
            idle, self._idle = self._idle, []
            for glet in idle:  # end the waiting greenlets now, not whenever collected
                glet.parent = getcurrent()
                glet.switch(None)
            self.tasks.clear()
            self.ready.clear()
            self.timers.clear()
            self.due.clear()
            self.waiters.clear()
        finally:
            self.closing = False
