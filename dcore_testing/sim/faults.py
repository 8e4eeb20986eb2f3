"""Fault plans: what goes wrong, where, and how often.

Explicit faults name their place (``Crash(stage="index_update", job=1)``); each fires
``times`` times (default once). Probabilities (``FaultPlan(crash=0.1)``) are drawn
through the chooser at each opportunity, so they follow the seed, shrink under
Hypothesis and replay exactly; at most ``max_faults`` are drawn per run.

==============  ==============================================================  =========
fault           effect                                                          where
==============  ==============================================================  =========
Crash           the worker dies (``WorkerCrash``); the job is redelivered after  stage enter/exit,
                ``redelivery_after`` (at-least-once) or lost (at-most-once)      service call
Duplicate       the broker delivers the message twice                            dispatch
Delay           the message arrives ``seconds`` late                             dispatch
Drop            the message is lost: gone for an at-most-once dispatcher,        dispatch
                redelivered after ``redelivery_after`` for an at-least-once one
ServiceError    the call raises the real client library's connection error       service call
Skew            a worker's wall clock (``time``/``now``) is off by ``seconds``   whole run
==============  ==============================================================  =========
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dcore.errors import ServiceUnavailableError
from dcore_testing.sim.errors import WorkerCrash

if TYPE_CHECKING:
    from dcore_testing.sim.chooser import Chooser
    from dcore_testing.sim.scheduler import Scheduler, Task

__all__ = [
    "Crash",
    "Delay",
    "Drop",
    "Duplicate",
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "ServiceError",
    "Skew",
    "service_exception",
]


class _Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the job it hits: N for the N-th job the simulation saw (alias ``jN``); None: any
    job: int | None = Field(default=None, ge=1)
    times: int = Field(default=1, ge=1)


class Crash(_Fault):
    """Kill the worker at a stage (``when`` = before it runs or after it returned) or
    just before a service call ``op`` (e.g. ``"storage.put"``). Neither: at the first
    background stage."""

    kind: Literal["crash"] = "crash"
    stage: str | None = None
    op: str | None = None
    when: Literal["enter", "exit"] = "enter"


class Duplicate(_Fault):
    kind: Literal["duplicate"] = "duplicate"


class Delay(_Fault):
    kind: Literal["delay"] = "delay"
    seconds: float = Field(default=5.0, gt=0)


class Drop(_Fault):
    kind: Literal["drop"] = "drop"


class ServiceError(_Fault):
    """Fail the ``nth`` matching call of ``op`` (``"storage.get"``, ``"jobs.transition"``;
    None: any call) with the client library's own exception: ``auto`` picks botocore's
    for storage and redis-py's for the rest (dcore's ServiceUnavailableError if the
    library is not installed)."""

    kind: Literal["service_error"] = "service_error"
    op: str | None = None
    nth: int = Field(default=1, ge=1)
    error: Literal["auto", "redis", "s3", "dcore"] = "auto"


class Skew(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["skew"] = "skew"
    worker: int = Field(ge=1)
    seconds: float


Fault = Annotated[Crash | Duplicate | Delay | Drop | ServiceError | Skew,
                  Field(discriminator="kind")]


class FaultPlan(BaseModel):
    """Explicit faults plus per-opportunity probabilities. ``FaultPlan(Crash(...), ...,
    crash=0.05)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    faults: tuple[Fault, ...] = ()
    #: probability per background stage entry
    crash: float = Field(default=0.0, ge=0, le=1)
    #: probabilities per dispatch
    duplicate: float = Field(default=0.0, ge=0, le=1)
    delay: float = Field(default=0.0, ge=0, le=1)
    drop: float = Field(default=0.0, ge=0, le=1)
    #: probability per service call made by a simulated task
    service_error: float = Field(default=0.0, ge=0, le=1)
    #: the longest drawn delay (seconds); a drawn delay is a chooser pick of 1..10 tenths
    max_delay: float = Field(default=10.0, gt=0)
    #: cap on drawn (not explicit) faults per run
    max_faults: int = Field(default=10, ge=0)
    #: broker visibility timeout: when a crashed or dropped at-least-once message returns
    redelivery_after: float = Field(default=5.0, ge=0)

    def __init__(self, *faults: Any, **data: Any) -> None:
        if faults:
            if "faults" in data:
                raise TypeError("pass faults positionally or as faults=[...], not both")
            data["faults"] = faults
        super().__init__(**data)

    @property
    def empty(self) -> bool:
        return not self.faults and not any(
            (self.crash, self.duplicate, self.delay, self.drop, self.service_error))


_NO_FAULTS = FaultPlan()


def service_exception(op: str, flavor: str = "auto") -> Exception:
    """The exception a real client raises when its service is unreachable."""
    if flavor == "auto":
        flavor = "s3" if op.startswith("storage.") else "redis"
    message = f"simulated connection failure during {op}"
    try:
        if flavor == "redis":
            from redis.exceptions import ConnectionError as RedisConnectionError

            return RedisConnectionError(message)
        if flavor == "s3":
            from botocore.exceptions import EndpointConnectionError

            return EndpointConnectionError(endpoint_url=f"http://simulated-s3/{op}")
    except ImportError:
        pass
    return ServiceUnavailableError(message)


class FaultInjector:
    """Decides, at each opportunity, whether a fault fires; records each one."""

    def __init__(self, plan: FaultPlan | None, chooser: Chooser, scheduler: Scheduler) -> None:
        self.plan = plan or _NO_FAULTS
        self.chooser = chooser
        self.sched = scheduler
        self._left = {i: f.times for i, f in enumerate(self.plan.faults)
                      if not isinstance(f, Skew)}
        self._calls: dict[int, int] = {}  # ServiceError index → matching calls seen
        self.drawn = 0
        self.active = not self.plan.empty

    def _explicit(self, kind: type[_Fault], job: int | None) -> list[tuple[int, Any]]:
        return [(i, f) for i, f in enumerate(self.plan.faults)
                if isinstance(f, kind) and self._left.get(i, 0) > 0
                and (f.job is None or f.job == job)]

    def _fire(self, index: int) -> None:
        self._left[index] -= 1

    def _draw(self, p: float, what: str) -> bool:
        if p <= 0 or self.drawn >= self.plan.max_faults:
            return False
        hit = self.chooser.chance(p, what)
        self.sched.emit("choice", what=what, n=2, pick=int(hit))
        if hit:
            self.drawn += 1
        return hit

    # -- opportunities ----------------------------------------------------------------
    def at_dispatch(self, job: int, job_alias: str) -> tuple[int, float, bool]:
        """(extra copies, delay seconds, dropped) for a newly dispatched message."""
        if not self.active:
            return 0, 0.0, False
        plan = self.plan
        copies, delay, dropped = 0, 0.0, False
        for i, _ in self._explicit(Duplicate, job):
            self._fire(i)
            copies += 1
        if self._draw(plan.duplicate, "fault:duplicate"):
            copies += 1
        for i, f in self._explicit(Delay, job):
            self._fire(i)
            delay += f.seconds
        if self._draw(plan.delay, "fault:delay"):
            tenths = self.chooser.choose(10, "fault:delay.seconds") + 1
            self.sched.emit("choice", what="fault:delay.seconds", n=10, pick=tenths - 1)
            delay += plan.max_delay * tenths / 10
        for i, _ in self._explicit(Drop, job):
            self._fire(i)
            dropped = True
        if not dropped and self._draw(plan.drop, "fault:drop"):
            dropped = True
        if copies:
            self.sched.emit("fault", job=job_alias, fault="duplicate", copies=copies)
        if delay:
            self.sched.emit("fault", job=job_alias, fault="delay", seconds=delay)
        if dropped:
            self.sched.emit("fault", job=job_alias, fault="drop")
        return copies, delay, dropped

    def at_stage(self, task: Task, job: int, stage: str, when: str) -> None:
        """Crash the worker at a stage boundary if the plan says so."""
        for i, f in self._explicit(Crash, job):
            if f.op is None and f.when == when and (f.stage is None or f.stage == stage):
                self._fire(i)
                self.crash(task, f"{when} {stage}")
        if when == "enter" and self._draw(self.plan.crash, "fault:crash"):
            self.crash(task, f"enter {stage}")

    def at_call(self, task: Task, job: int | None, op: str) -> None:
        """Crash or fail a service call if the plan says so."""
        for i, f in self._explicit(Crash, job):
            if f.op == op:
                self._fire(i)
                self.crash(task, op)
        for i, f in self._explicit(ServiceError, job):
            if f.op is None or f.op == op:
                seen = self._calls[i] = self._calls.get(i, 0) + 1
                if seen == f.nth:
                    self._fire(i)
                    self._fail(op, f.error)
        if self._draw(self.plan.service_error, "fault:service_error"):
            self._fail(op, "auto")

    def crash(self, task: Task, where: str) -> None:
        if task.worker is None:
            return  # only worker processes crash; a client task has no worker to lose
        self.sched.emit("fault", fault="crash", where=where)
        task.crashed = True
        raise WorkerCrash(where)

    def _fail(self, op: str, flavor: str) -> None:
        exc = service_exception(op, flavor)
        self.sched.emit("fault", fault="service_error", op=op, error=type(exc).__name__)
        raise exc
