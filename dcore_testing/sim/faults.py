"""Fault plans: what goes wrong, where, and how often.

Explicit faults name their place (``Crash(stage="index_update", job=1)``); each fires
``times`` times (default once). Probabilities (``FaultPlan(crash=0.1)``) are drawn
through the chooser at each opportunity, so they follow the seed, shrink under
Hypothesis and replay exactly; at most ``max_faults`` are drawn per run.

==============  ==============================================================  =========
fault           effect                                                          where
==============  ==============================================================  =========
Crash           the worker dies (``WorkerCrash``); the job is redelivered after  stage enter/exit,
                ``redelivery_after`` (at-least-once) or lost (at-most-once)      before/after a
                                                                                 service call
Duplicate       the broker delivers the message twice                            dispatch
Delay           the message arrives ``seconds`` late                             dispatch
Drop            the message is lost: gone for an at-most-once dispatcher,        dispatch
                redelivered after ``redelivery_after`` for an at-least-once one
ServiceError    the call fails as on an unreachable server                       service call
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
    """Kill the worker at a stage or at a service call ``op`` (e.g. ``"storage.put"``):
    ``when`` is "before" it runs (or "enter") or "after" it returned (or "exit": for a
    call, its effect is applied and the worker dies before it can act on the reply).
    ``nth`` picks the nth matching stage entry/exit or call (1: the first). Neither
    stage nor op: at the first background stage."""

    kind: Literal["crash"] = "crash"
    stage: str | None = None
    op: str | None = None
    when: Literal["enter", "exit", "before", "after"] = "enter"
    nth: int = Field(default=1, ge=1)

    @property
    def after(self) -> bool:
        return self.when in ("exit", "after")


class Duplicate(_Fault):
    kind: Literal["duplicate"] = "duplicate"


class Delay(_Fault):
    kind: Literal["delay"] = "delay"
    seconds: float = Field(default=5.0, gt=0)


class Drop(_Fault):
    kind: Literal["drop"] = "drop"


class ServiceError(_Fault):
    """Fail the ``nth`` matching call of ``op`` (``"storage.get"``, ``"jobs.claim"``;
    None: any call) as an unreachable server would. ``auto`` (and ``dcore``) raise what
    dcore's backends raise to their callers, ``ServiceUnavailableError``: the Redis and
    S3 backends translate their client's connection errors, so that is what the pipeline
    and the job lifecycle see in production. ``redis`` and ``s3`` raise the client
    library's own error instead (redis-py's ``ConnectionError``, botocore's
    ``EndpointConnectionError``), for code that talks to a client directly."""

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
    """The exception a call to an unreachable service raises (see ServiceError)."""
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
        self._calls: dict[int, int] = {}  # fault index → matching opportunities seen
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

    def _nth(self, index: int, nth: int) -> bool:
        """Count one matching opportunity for fault ``index``; True at its ``nth``."""
        seen = self._calls[index] = self._calls.get(index, 0) + 1
        return seen == nth

    def at_stage(self, task: Task, job: int, stage: str, when: str) -> None:
        """Crash the worker at a stage boundary if the plan says so."""
        after = when == "exit"
        for i, f in self._explicit(Crash, job):
            if (f.op is None and f.after == after and (f.stage is None or f.stage == stage)
                    and self._nth(i, f.nth)):
                self._fire(i)
                self.crash(task, f"{when} {stage}")
        if when == "enter" and self._draw(self.plan.crash, "fault:crash"):
            self.crash(task, f"enter {stage}")

    def at_call(self, task: Task, job: int | None, op: str) -> None:
        """Crash or fail a service call, before it is made, if the plan says so."""
        for i, f in self._explicit(Crash, job):
            if f.op == op and not f.after and self._nth(i, f.nth):
                self._fire(i)
                self.crash(task, op)
        for i, f in self._explicit(ServiceError, job):
            if (f.op is None or f.op == op) and self._nth(i, f.nth):
                self._fire(i)
                self._fail(op, f.error)
        if self._draw(self.plan.service_error, "fault:service_error"):
            self._fail(op, "auto")

    def after_call(self, task: Task, job: int | None, op: str) -> None:
        """Crash the worker right after a service call returned, if the plan says so:
        the call's effect stands, and the worker never acts on its reply."""
        for i, f in self._explicit(Crash, job):
            if f.op == op and f.after and self._nth(i, f.nth):
                self._fire(i)
                self.crash(task, f"after {op}")

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
