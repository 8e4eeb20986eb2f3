"""Scheduled chaos: a timeline of faults applied to proxies, reproducible from a seed.

::

    plan = ChaosPlan(seed=7)
    plan.at(1.0).latency(redis, 100, for_=3.0)
    plan.at(2.0).partition(redis, for_=5.0)
    run = plan.run_in_background()
    ...
    run.stop()          # reverts whatever is still applied
    print(run.log)

Time comes from an injected ``clock`` and ``wait(timeout) -> stop_requested``
(defaults ``time.monotonic`` and a ``threading.Event.wait``), so tests drive a
plan with :class:`ManualPlanClock` and no wall-clock sleeps. ``ChaosPlan.random``
draws a plan from ``random.Random(seed)`` only: same seed, same plan.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .client import Proxy, Toxic

Clock = Callable[[], float]
Wait = Callable[[float], bool]
"""Wait up to ``timeout`` seconds; return True if the run should stop."""

TOXIC_ACTIONS = {
    "latency": "latency",
    "bandwidth": "bandwidth",
    "timeout": "timeout",
    "reset_peer": "reset_peer",
    "slicer": "slicer",
    "limit_data": "limit_data",
    "slow_close": "slow_close",
}
RANDOM_ACTIONS = ("latency", "bandwidth", "partition", "one_way_partition")


@dataclass(frozen=True)
class Step:
    """One fault: ``action`` on ``proxy`` from ``start`` for ``duration`` (None: to the end)."""

    start: float
    action: str
    proxy_name: str
    duration: float | None
    stream: str = "downstream"
    attributes: tuple[tuple[str, int], ...] = ()
    proxy: Proxy | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        """``Step(1.0, 'latency', 'redis', for_=3.0, jitter=0, latency=100)``: the stream
        only when it is not the default, the duration only when the step ends."""
        args = [repr(self.start), repr(self.action), repr(self.proxy_name)]
        if self.duration is not None:
            args.append(f"for_={self.duration!r}")
        if self.stream != "downstream":
            args.append(f"stream={self.stream!r}")
        args.extend(f"{k}={v!r}" for k, v in self.attributes)
        return f"Step({', '.join(args)})"


class LogEntry(NamedTuple):
    """What the run did, ``at`` seconds (by its clock) after it started."""

    at: float
    event: str  # "apply" | "revert"
    action: str
    proxy: str
    error: str | None = None


class ManualPlanClock:
    """A clock for tests of a :class:`ChaosPlan` run (callable for the time, ``wait`` for
    the pause between steps): ``wait`` jumps time forward instead of sleeping. Not a
    :class:`dcore.Clock`; for those, see :class:`dcore_testing.ManualClock`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.stop_requested = False

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:
        self.now += max(timeout, 0.0)
        return self.stop_requested


class _At:
    """``plan.at(t)``: pick the fault that starts at ``t``."""

    def __init__(self, plan: ChaosPlan, start: float) -> None:
        self._plan = plan
        self._start = start

    def _add(
        self,
        action: str,
        proxy: Proxy,
        for_: float | None,
        stream: str = "downstream",
        **attrs: int,
    ) -> ChaosPlan:
        if for_ is not None and for_ <= 0:
            raise ValueError(
                f"for_ must be a positive duration in seconds (got {for_}); "
                "omit it to last until the plan ends"
            )
        step = Step(
            self._start, action, proxy.name, for_, stream, tuple(sorted(attrs.items())), proxy
        )
        self._plan.steps.append(step)
        return self._plan

    def partition(self, proxy: Proxy, for_: float | None = None) -> ChaosPlan:
        return self._add("partition", proxy, for_)

    def one_way_partition(self, proxy: Proxy, stream: str, for_: float | None = None) -> ChaosPlan:
        return self._add("one_way_partition", proxy, for_, stream)

    def latency(
        self,
        proxy: Proxy,
        ms: int,
        jitter: int = 0,
        for_: float | None = None,
        stream: str = "downstream",
    ) -> ChaosPlan:
        return self._add("latency", proxy, for_, stream, latency=ms, jitter=jitter)

    def bandwidth(
        self, proxy: Proxy, kbps: int, for_: float | None = None, stream: str = "downstream"
    ) -> ChaosPlan:
        return self._add("bandwidth", proxy, for_, stream, rate=kbps)

    def timeout(
        self, proxy: Proxy, ms: int, for_: float | None = None, stream: str = "downstream"
    ) -> ChaosPlan:
        return self._add("timeout", proxy, for_, stream, timeout=ms)

    def reset_peer(self, proxy: Proxy, timeout_ms: int = 0, for_: float | None = None) -> ChaosPlan:
        return self._add("reset_peer", proxy, for_, timeout=timeout_ms)

    def toxic(
        self,
        proxy: Proxy,
        type: str,
        for_: float | None = None,
        stream: str = "downstream",
        **attrs: int,
    ) -> ChaosPlan:
        """Any toxic type (``slicer``, ``limit_data``, ``slow_close``, ...)."""
        if type not in TOXIC_ACTIONS:
            raise ValueError(f"unknown toxic type {type!r}; choose one of {sorted(TOXIC_ACTIONS)}")
        return self._add(type, proxy, for_, stream, **attrs)


class ChaosPlan:
    """An ordered set of :class:`Step` s; build with ``at()`` or ``random()``."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.steps: list[Step] = []

    #: steps a repr shows before it says how many more there are
    REPR_STEPS = 8

    def __repr__(self) -> str:
        """``ChaosPlan(seed=7, steps=[Step(...), ...])``, the first :attr:`REPR_STEPS`
        steps then ``... N more``: short enough for a Hypothesis failure report, and
        the seed rebuilds a random plan in full."""
        shown = [repr(step) for step in self.steps[: self.REPR_STEPS]]
        if len(self.steps) > self.REPR_STEPS:
            shown.append(f"... {len(self.steps) - self.REPR_STEPS} more")
        return f"ChaosPlan(seed={self.seed!r}, steps=[{', '.join(shown)}])"

    def at(self, seconds: float) -> _At:
        if seconds < 0:
            raise ValueError(f"a step cannot start before the plan (at({seconds})); use 0 or more")
        return _At(self, seconds)

    @classmethod
    def random(
        cls,
        proxies: Sequence[Proxy],
        duration: float,
        seed: int,
        *,
        actions: Sequence[str] = RANDOM_ACTIONS,
        mean_gap: float = 1.0,
        max_fault: float | None = None,
    ) -> ChaosPlan:
        """Draw a plan over ``duration`` seconds; faults start ~``mean_gap`` apart."""
        if not proxies:
            raise ValueError("ChaosPlan.random needs at least one proxy")
        rng = random.Random(seed)
        plan = cls(seed)
        longest = max_fault if max_fault is not None else max(duration / 4, 0.1)
        t = rng.expovariate(1 / mean_gap)
        while t < duration:
            proxy = rng.choice(list(proxies))
            action = rng.choice(list(actions))
            length = min(rng.uniform(0.1, longest), duration - t)
            at = plan.at(round(t, 3))
            span = round(max(length, 0.001), 3)
            if action == "partition":
                at.partition(proxy, for_=span)
            elif action == "one_way_partition":
                at.one_way_partition(proxy, rng.choice(["upstream", "downstream"]), for_=span)
            elif action == "latency":
                ms = rng.randint(10, 500)
                at.latency(proxy, ms, jitter=rng.randint(0, ms // 4), for_=span)
            elif action == "bandwidth":
                at.bandwidth(proxy, rng.randint(10, 1000), for_=span)
            else:
                raise ValueError(f"ChaosPlan.random cannot draw {action!r}; use {RANDOM_ACTIONS}")
            t += rng.expovariate(1 / mean_gap)
        return plan

    def timeline(self) -> list[tuple[float, str, int]]:
        """``(time, "apply"|"revert", step index)`` in execution order.

        On ties, reverts come before applies (so back-to-back faults do not
        overlap), then steps go in the order they were added.
        """
        events = []
        for index, step in enumerate(self.steps):
            events.append((step.start, 1, index))
            if step.duration is not None:
                events.append((step.start + step.duration, 0, index))
        events.sort()
        return [(t, "apply" if kind else "revert", index) for t, kind, index in events]

    def run(self, clock: Clock = time.monotonic, wait: Wait | None = None) -> list[LogEntry]:
        """Run in the foreground; returns the log."""
        runner = PlanRun(self, clock, wait)
        runner.execute()
        return runner.log

    def run_in_background(self, clock: Clock = time.monotonic, wait: Wait | None = None) -> PlanRun:
        """Start a thread running the plan; ``stop()`` ends it and reverts what is applied."""
        runner = PlanRun(self, clock, wait)
        runner.start()
        return runner


class PlanRun:
    """A (possibly background) execution of a plan, with its log."""

    def __init__(self, plan: ChaosPlan, clock: Clock, wait: Wait | None) -> None:
        self.plan = plan
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._log: list[LogEntry] = []
        self._partitions: dict[str, int] = {}
        self._toxics: dict[int, Toxic] = {}

    @property
    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.execute, name="chaos-plan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the run to end (reverting applied faults) and wait for it."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def execute(self) -> None:
        start = self._clock()
        applied: list[int] = []
        try:
            for when, event, index in self.plan.timeline():
                while (delay := start + when - self._clock()) > 0:
                    if self._wait(delay) or self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                if event == "apply":
                    if self._do(start, "apply", index):
                        applied.append(index)
                elif index in applied:
                    self._do(start, "revert", index)
                    applied.remove(index)
        finally:
            for index in reversed(applied):
                self._do(start, "revert", index)

    def _do(self, start: float, event: str, index: int) -> bool:
        """Apply or revert one step; failures are logged, not raised. Returns success."""
        step = self.plan.steps[index]
        error = None
        try:
            (self._apply if event == "apply" else self._revert)(index, step)
        except Exception as exc:  # logged, the plan goes on
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._log.append(
                LogEntry(self._clock() - start, event, step.action, step.proxy_name, error)
            )
        return error is None

    def _proxy(self, step: Step) -> Proxy:
        if step.proxy is None:
            raise ValueError(f"step {step} has no proxy object")
        return step.proxy

    def _apply(self, index: int, step: Step) -> None:
        proxy = self._proxy(step)
        if step.action == "partition":
            count = self._partitions.get(step.proxy_name, 0)
            if count == 0:
                proxy.disable()
            self._partitions[step.proxy_name] = count + 1
            return
        name = f"chaos-plan-{index}-{step.action}"
        if step.action == "one_way_partition":
            self._toxics[index] = proxy.add_one_way_partition(step.stream, name=name)
            return
        attrs: dict[str, Any] = dict(step.attributes)
        self._toxics[index] = proxy.add_toxic(
            TOXIC_ACTIONS[step.action], step.stream, name=name, **attrs
        )

    def _revert(self, index: int, step: Step) -> None:
        proxy = self._proxy(step)
        if step.action == "partition":
            count = self._partitions.get(step.proxy_name, 0) - 1
            self._partitions[step.proxy_name] = max(count, 0)
            if count <= 0:
                proxy.enable()
            return
        toxic = self._toxics.pop(index, None)
        if toxic is not None:
            proxy.remove_toxic(toxic.name)
