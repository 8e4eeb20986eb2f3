"""Fault plans: what goes wrong, where, and how often.

Explicit faults name their place (``Crash(stage="index_update", job=1)``); each fires
``times`` times (default once). Probabilities (``FaultPlan(crash=0.1)``) are drawn
through the chooser at each opportunity, so they follow the seed, shrink under
Hypothesis and replay exactly; at most ``max_faults`` are drawn per run.

==============  ==============================================================  ================
fault           effect                                                          where
==============  ==============================================================  ================
Crash           the worker dies (``WorkerCrash``); the job is redelivered after  stage enter/exit,
                ``redelivery_after`` (at-least-once) or lost (at-most-once)      before/after a
                                                                                 service call
Duplicate       the broker delivers the message twice                            dispatch
Delay           the message arrives ``seconds`` late                             dispatch
Drop            the message is lost: gone for an at-most-once dispatcher,        dispatch
                redelivered after ``redelivery_after`` for an at-least-once one
ServiceError    the call fails as on an unreachable server; with ``applied``     service call
                the server did apply it and only the reply was lost (a timeout)
Partition       for ``seconds`` of virtual time, calls from some workers to a    a time window
                service hang until the client's socket timeout, then fail
WebCrash        the web process dies after answering a request (its             web request
                BackgroundTasks are lost) or right after recording a job,
                before sending it
Skew            a worker's wall clock (``time``/``now``) is off by ``seconds``   whole run
==============  ==============================================================  ================

Every explicit fault can be scoped: ``job`` (the N-th job), ``worker`` (worker process
N), ``task`` (``"worker"``, ``"web"`` or ``"client"``: the test's own spawned tasks) and,
for service faults, ``service`` (``"storage"``, ``"events"``, ``"jobs"``, ``"locks"``).
Drawn faults follow the plan's ``scope`` (by default only workers and the web process,
never the test's own tasks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    "Partition",
    "Scope",
    "ServiceError",
    "Skew",
    "WebCrash",
    "service_exception",
]


TaskKind = Literal["worker", "web", "client"]
SERVICES = ("storage", "events", "jobs", "locks")


class _Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the job it hits: N for the N-th job the simulation saw (alias ``jN``); None: any
    job: int | None = Field(default=None, ge=1)
    times: int = Field(default=1, ge=1)
    #: only in worker process N (None: any)
    worker: int | None = Field(default=None, ge=1)
    #: only in tasks of this kind (None: workers and the web process, never the test's
    #: own spawned tasks unless asked for with "client")
    task: TaskKind | None = None

    def scoped_to(self, kind: str, worker: int | None, job: int | None) -> bool:
        if self.job is not None and self.job != job:
            return False
        if self.worker is not None and self.worker != worker:
            return False
        return kind == self.task if self.task is not None else kind != "client"


def _service_of(op: str | None) -> str | None:
    return None if op is None else op.partition(".")[0]


def _check_service(value: str | None) -> str | None:
    if value is not None and value not in SERVICES:
        raise ValueError(f"service must be one of {', '.join(SERVICES)}, got {value!r}")
    return value


class Crash(_Fault):
    """Kill the worker at a stage or at a service call ``op`` (e.g. ``"storage.put"``):
    ``when`` is "before" it runs (or "enter") or "after" it returned (or "exit": for a
    call, its effect is applied and the worker dies before it can act on the reply).
    ``nth`` picks the nth matching stage entry/exit or call (1: the first). Neither
    stage nor op: at the first background stage."""

    kind: Literal["crash"] = "crash"
    stage: str | None = None
    op: str | None = None
    #: with neither stage nor op: any call to this service
    service: str | None = None
    when: Literal["enter", "exit", "before", "after"] = "enter"
    nth: int = Field(default=1, ge=1)

    @field_validator("service")
    @classmethod
    def _known_service(cls, value: str | None) -> str | None:
        return _check_service(value)

    @property
    def after(self) -> bool:
        return self.when in ("exit", "after")

    @property
    def at_call(self) -> bool:
        return self.op is not None or self.service is not None

    def matches_call(self, op: str) -> bool:
        if self.op is not None:
            return self.op == op
        return self.service is not None and self.service == _service_of(op)


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
    #: with no op: any call to this service (None: any service)
    service: str | None = None
    nth: int = Field(default=1, ge=1)
    error: Literal["auto", "redis", "s3", "dcore"] = "auto"
    #: the server applied the call and the reply was lost: the caller gets a timeout,
    #: and what it asked for happened anyway (a write that "failed" but is there)
    applied: bool = False

    @field_validator("service")
    @classmethod
    def _known_service(cls, value: str | None) -> str | None:
        return _check_service(value)

    def matches_call(self, op: str) -> bool:
        if self.op is not None:
            return self.op == op
        return self.service is None or self.service == _service_of(op)


class Partition(BaseModel):
    """From ``start`` (virtual seconds) for ``seconds``, calls from ``workers`` (empty:
    every worker; add the web process with ``web=True``) to ``service`` ("*": all)
    hang for the client's socket timeout (``timeout``, default
    ``DCORE_REDIS_SOCKET_TIMEOUT``) and then fail with a timeout. Lease renewals from a
    cut-off worker fail too, so its jobs are taken over once their lease ran out."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["partition"] = "partition"
    service: str = "*"
    workers: tuple[int, ...] = ()
    web: bool = False
    start: float = Field(default=0.0, ge=0)
    seconds: float = Field(default=10.0, gt=0)
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("service")
    @classmethod
    def _known(cls, value: str) -> str:
        return value if value == "*" else str(_check_service(value))

    def cuts(self, now: float, kind: str, worker: int | None, service: str) -> bool:
        if not self.start <= now < self.start + self.seconds:
            return False
        if self.service not in ("*", service):
            return False
        if kind == "web":
            return self.web
        return kind == "worker" and (not self.workers or worker in self.workers)


class WebCrash(_Fault):
    """The web process dies: ``after_response`` once a request has answered (the jobs
    it handed to BackgroundTasks, or any in-process dispatcher, are lost), or
    ``after_record`` right after a request recorded a job and before it sent it (a
    remote job then waits PENDING until a worker's recovery sweep re-sends it)."""

    kind: Literal["web_crash"] = "web_crash"
    when: Literal["after_response", "after_record"] = "after_response"
    task: TaskKind | None = "web"


class Skew(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["skew"] = "skew"
    worker: int = Field(ge=1)
    seconds: float


Fault = Annotated[
    Crash | Duplicate | Delay | Drop | ServiceError | Partition | WebCrash | Skew,
    Field(discriminator="kind"),
]


class Scope(BaseModel):
    """Where drawn (probabilistic) faults may strike: only these workers, jobs (N-th
    job), services and kinds of task; empty: any."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    workers: tuple[int, ...] = ()
    jobs: tuple[int, ...] = ()
    services: tuple[str, ...] = ()
    tasks: tuple[TaskKind, ...] = ("worker", "web")

    @field_validator("services")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for service in value:
            _check_service(service)
        return value

    def admits(self, kind: str, worker: int | None, job: int | None, op: str | None = None
               ) -> bool:  # fmt: skip
        return (
            kind in self.tasks
            and (not self.workers or worker in self.workers)
            and (not self.jobs or job in self.jobs)
            and (not self.services or op is None or _service_of(op) in self.services)
        )


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
    #: probabilities per service call made by a simulated task (within ``scope``): a
    #: failure before the call reaches the server; an ambiguous one (applied, then the
    #: reply lost); a crash of the worker before or after the call
    service_error: float = Field(default=0.0, ge=0, le=1)
    ambiguous: float = Field(default=0.0, ge=0, le=1)
    crash_op: float = Field(default=0.0, ge=0, le=1)
    #: where drawn faults may strike
    scope: Scope = Field(default_factory=Scope)
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
            (
                self.crash,
                self.duplicate,
                self.delay,
                self.drop,
                self.service_error,
                self.ambiguous,
                self.crash_op,
            )
        )


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


def task_kind(task: Task | None) -> str:
    """``worker`` (a worker process's delivery), ``web`` (a request in the web process)
    or ``client`` (the test's own code and spawned tasks)."""
    if task is None:
        return "client"
    if task.worker is not None:
        return "worker"
    return "web" if task.lane.startswith("web") else "client"


class FaultInjector:
    """Decides, at each opportunity, whether a fault fires; records each one."""

    def __init__(self, plan: FaultPlan | None, chooser: Chooser, scheduler: Scheduler) -> None:
        self.plan = plan or _NO_FAULTS
        self.chooser = chooser
        self.sched = scheduler
        self._left = {i: f.times for i, f in enumerate(self.plan.faults) if isinstance(f, _Fault)}
        self._calls: dict[int, int] = {}  # fault index → matching opportunities seen
        self.partitions = [f for f in self.plan.faults if isinstance(f, Partition)]
        self.drawn = 0
        self.active = not self.plan.empty

    def _explicit(self, kind: type[_Fault], job: int | None, task: Task | None = None
                  ) -> list[tuple[int, Any]]:  # fmt: skip
        if task is None:  # a dispatch: only the job scopes it
            return [
                (i, f)
                for i, f in enumerate(self.plan.faults)
                if isinstance(f, kind)
                and self._left.get(i, 0) > 0
                and (f.job is None or f.job == job)
            ]
        where = task_kind(task)
        return [
            (i, f)
            for i, f in enumerate(self.plan.faults)
            if isinstance(f, kind)
            and self._left.get(i, 0) > 0
            and f.scoped_to(where, task.worker, job)
        ]

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

    def _in_scope(self, task: Task, job: int | None, op: str | None = None) -> bool:
        return self.plan.scope.admits(task_kind(task), task.worker, job, op)

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
        for i, f in self._explicit(Crash, job, task):
            if (
                not f.at_call
                and f.after == after
                and (f.stage is None or f.stage == stage)
                and self._nth(i, f.nth)
            ):
                self._fire(i)
                self.crash(task, f"{when} {stage}")
        if (
            when == "enter"
            and self._in_scope(task, job)
            and self._draw(self.plan.crash, "fault:crash")
        ):
            self.crash(task, f"enter {stage}")

    def cut_off(self, now: float, task: Task | None, op: str) -> Partition | None:
        """The partition that cuts ``task`` off the service ``op`` calls, if any."""
        if task is None:
            return None
        kind, service = task_kind(task), str(_service_of(op))
        return next((p for p in self.partitions if p.cuts(now, kind, task.worker, service)), None)

    def before_call(self, task: Task, job: int | None, op: str) -> tuple[bool, bool]:
        """Crash or fail a call before it is made, if the plan says so. Returns what to
        do once it was applied: (lose its reply: an ambiguous failure, crash the worker)."""
        for i, f in self._explicit(Crash, job, task):
            if f.at_call and f.matches_call(op) and not f.after and self._nth(i, f.nth):
                self._fire(i)
                self.crash(task, op)
        ambiguous = crash_after = False
        for i, f in self._explicit(ServiceError, job, task):
            if f.matches_call(op) and self._nth(i, f.nth):
                self._fire(i)
                if not f.applied:
                    self._fail(op, f.error)
                ambiguous = True
        if not self._in_scope(task, job, op):
            return ambiguous, crash_after
        plan = self.plan
        if self._draw(plan.crash_op, "fault:crash_op"):
            crash_after = bool(self.chooser.choose(2, "fault:crash_op.when"))
            self.sched.emit("choice", what="fault:crash_op.when", n=2, pick=int(crash_after))
            if not crash_after:
                self.crash(task, op)
        if self._draw(plan.service_error, "fault:service_error"):
            self._fail(op, "auto")
        return ambiguous or self._draw(plan.ambiguous, "fault:ambiguous"), crash_after

    def after_call(self, task: Task, job: int | None, op: str, ambiguous: bool,
                   crash_after: bool) -> None:  # fmt: skip
        """After a call was applied: crash the worker right there (the call's effect
        stands, its reply is never acted on), or lose the reply (an ambiguous failure),
        if the plan says so."""
        if crash_after:
            self.crash(task, f"after {op}")
        for i, f in self._explicit(Crash, job, task):
            if f.at_call and f.matches_call(op) and f.after and self._nth(i, f.nth):
                self._fire(i)
                self.crash(task, f"after {op}")
        if task_kind(task) == "web" and op == "jobs.create":
            self.web_crash(task, job, "after_record")
        if ambiguous:
            self._fail(op, "auto", applied=True)

    def web_crash(self, task: Task, job: int | None, when: str) -> None:
        for i, f in self._explicit(WebCrash, job, task):
            if f.when == when:
                self._fire(i)
                self.crash(task, f"web {when.replace('_', ' ')}")

    def crash(self, task: Task, where: str) -> None:
        if task_kind(task) == "client":
            return  # only worker and web processes crash: the test's code has no process
        self.sched.emit("fault", fault="crash", where=where)
        task.crashed = True
        raise WorkerCrash(where)

    def _fail(self, op: str, flavor: str, *, applied: bool = False) -> None:
        if applied:
            exc: Exception = ServiceUnavailableError(
                f"simulated timeout during {op}: no reply (the server did apply it)"
            )
        else:
            exc = service_exception(op, flavor)
        self.sched.emit(
            "fault",
            fault="service_error",
            op=op,
            error=type(exc).__name__,
            **({"applied": True} if applied else {}),
        )
        raise exc

    def partition_timeout(self, op: str, partition: Partition, default: float) -> None:
        """A call into a partition: it hangs for the socket timeout, then fails."""
        timeout = partition.timeout if partition.timeout is not None else default
        self.sched.emit("fault", fault="partition", op=op, timeout=timeout)
        self.sched.sleep(timeout)
        raise ServiceUnavailableError(
            f"simulated partition: {op} got no reply within {timeout:g} s (timed out)"
        )
