"""``SimEnvironment``: a dcore Environment in which a whole distributed run is simulated.

::

    sim = SimEnvironment(seed=7, workers=2, faults=FaultPlan(Crash(stage="charge")))
    with sim:                                  # current environment for the block
        pipeline.run(ctx)                      # the Dispatch hands off to the broker
        sim.run_until_idle()                   # workers run, retry, redeliver, ...
    sim.trace.save("run.jsonl")                # replay: SimEnvironment.from_trace(...)

Services are dcore's in-memory backends on the virtual clock (or any backends passed
in), wrapped so that each call is a yield point. The run is a pure function of the
chooser's decisions: the same seed gives a byte-identical trace.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import SecretStr

from dcore import (
    DcoreSettings,
    Environment,
    PluginRegistry,
    current_environment,
    use_environment,
)
from dcore.engine import Heartbeat, run_coroutine, scoped_environment, use_id_source
from dcore.services.jobs import JobState
from dcore_testing.sim.aio import VirtualEventLoop
from dcore_testing.sim.chooser import Chooser, RandomChooser, ReplayChooser
from dcore_testing.sim.clock import VirtualClock
from dcore_testing.sim.dispatcher import Broker, SimDispatcher, SimObserver
from dcore_testing.sim.errors import Deadlock, ReplayDivergence, SimulationError, WorkerCrash
from dcore_testing.sim.faults import FaultInjector, FaultPlan, Skew
from dcore_testing.sim.scheduler import Scheduler, Task
from dcore_testing.sim.services import LocksProxy, ServiceProxy
from dcore_testing.sim.trace import Trace, first_difference

__all__ = [
    "DeliveryMode",
    "Request",
    "ServiceFactory",
    "SimEnvironment",
    "effect",
    "memory_backends",
]

#: How the simulated broker delivers: what the replaced dispatcher does ("auto"), or forced.
DeliveryMode = Literal["auto", "at_least_once", "at_most_once"]
ServiceFactory = Callable[[VirtualClock, DcoreSettings], Mapping[str, Any]]
T = TypeVar("T")

_JOB_TOPICS = frozenset(
    {
        "job.scheduled",
        "job.started",
        "job.retrying",
        "job.succeeded",
        "job.dead",
        "job.compensating",
        "job.compensated",
        "stage.compensated",
        "stage.failed",
        "errors",
    }
)
_HEX_ID = re.compile(r"[0-9a-f]{32}")
#: the calls ``_record_call`` records as something else than a plain ``call`` event
_EVENT_OPS = frozenset({"events.publish", "events.append"})
#: an event payload: a dict, checked first (a Mapping check alone goes through the ABC)
_MAPPINGS = (dict, Mapping)
#: what ``enter_call`` returns when no fault plan is active
_NO_FLAGS = (False, False)


class SimEnvironment(Environment):
    """An Environment whose services, dispatcher and clock are simulated.

    ``seed`` drives every decision (through a :class:`RandomChooser` unless ``chooser``
    is given); ``workers`` worker processes take jobs (or ``{"dcore.0": 1, "dcore.1":
    2}``: that many workers per queue, with jobs routed to queues as the Celery
    dispatcher routes them); ``faults`` says what goes wrong. ``services`` replaces the
    in-memory backends: a mapping of storage, events, jobs and locks, or a function of
    the virtual clock and the settings returning one (see :func:`memory_backends`), so a
    custom or wrapped backend runs on virtual time. Keyword ``settings`` overrides
    (``job_attempts=3``) go to :class:`DcoreSettings`."""

    #: every simulated process (the caller and each worker) uses this environment's one
    #: set of services, so a remote Dispatch may hand off over in-memory ones (outside
    #: the simulator that is an error: see ``Pipeline.check_remote``)
    memory_services_shared = True

    def __init__(
        self,
        seed: int = 0,
        workers: int | Mapping[str, int] = 2,
        faults: FaultPlan | None = None,
        *,
        chooser: Chooser | None = None,
        delivery: DeliveryMode = "auto",
        patch_time: bool = True,
        registry: PluginRegistry | None = None,
        services: Mapping[str, Any] | ServiceFactory | None = None,
        replay: Trace | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        _check(seed, workers, faults, delivery, services)
        self.seed = seed
        self.workers = workers
        self.patch_time = patch_time
        self.name = name
        self._settings_overrides = dict(settings)
        self._config: dict[str, Any] = dict(
            seed=seed,
            workers=workers,
            faults=faults,
            delivery=delivery,
            patch_time=patch_time,
            registry=registry,
            name=name,
            **settings,
        )
        self._custom_chooser = chooser is not None
        plan = faults or _NO_FAULTS
        clock = VirtualClock()
        trace = Trace(
            {
                "seed": seed,
                "workers": workers if isinstance(workers, int) else dict(workers),
                "delivery": delivery,
                "name": name,
                "settings": _jsonable(settings, "settings") if settings else {},
                "faults": json.loads(_plan_header(plan)),
                "chooser": replay.header.get("chooser", "random")
                if replay is not None
                else (chooser.kind if chooser else "random"),
            },
            expected=None if replay is None else replay.events,
        )
        if replay is not None:
            chooser = ReplayChooser(trace)
        self.chooser: Chooser = chooser or RandomChooser(seed)
        self.trace = trace
        self.scheduler = Scheduler(clock, self.chooser, trace)
        clock.scheduler = self.scheduler
        clock.run_for = self.run_for
        dcore_settings = _settings(settings)
        made = services(clock, dcore_settings) if callable(services) else services
        backends = dict(made or {}) or memory_backends(clock, dcore_settings)
        _check_services(backends)
        super().__init__(
            dcore_settings,
            clock=clock,
            registry=registry,
            rng=random.Random(f"dcore-sim:{seed}"),
            storage=ServiceProxy(self, "storage", backends["storage"]),  # type: ignore[arg-type]
            events=ServiceProxy(self, "events", backends["events"]),  # type: ignore[arg-type]
            jobs=ServiceProxy(self, "jobs", backends["jobs"]),  # type: ignore[arg-type]
            locks=LocksProxy(self, "locks", backends["locks"]),  # type: ignore[arg-type]
        )
        self.clock: VirtualClock = clock
        self.faults = FaultInjector(plan, self.chooser, self.scheduler)
        self.broker = Broker(self, workers, delivery)
        self.scheduler.on_task_done = self.broker.task_done
        self.dispatch_wrapper = lambda inner: SimDispatcher(self, inner)
        self.observers.append(SimObserver(self))
        self._aliases: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._stack: ExitStack | None = None
        self._spawned = 0
        self._requests = 0
        self._deliveries = 0
        self._job_ids = 0
        for fault in plan.faults:
            if isinstance(fault, Skew):
                clock.skew[fault.worker] = clock.skew.get(fault.worker, 0.0) + fault.seconds
                self.scheduler.emit(
                    "fault", fault="skew", worker=fault.worker, seconds=fault.seconds
                )

    # -- building from a trace ------------------------------------------------------------
    @classmethod
    def from_trace(
        cls,
        trace: Trace | str | os.PathLike[str],
        *,
        registry: PluginRegistry | None = None,
        patch_time: bool = True,
    ) -> SimEnvironment:
        """A simulation that must reproduce ``trace`` event for event: it feeds back the
        recorded choices and raises ReplayDivergence at the first event that differs."""
        recorded = trace if isinstance(trace, Trace) else Trace.load(trace)
        h = recorded.header
        plan = FaultPlan.model_validate(h.get("faults") or {})
        return cls(
            seed=h.get("seed", 0),
            workers=h.get("workers", 2),
            faults=plan,
            delivery=h.get("delivery", "auto"),
            patch_time=patch_time,
            registry=registry,
            replay=recorded,
            name=h.get("name"),
            **(h.get("settings") or {}),
        )

    def fresh(self) -> SimEnvironment:
        """A new simulation with the same configuration (seed included)."""
        if self._custom_chooser:
            raise SimulationError(
                "fresh()/check_determinism() rebuild the run from its seed; this one was "
                "made with a custom chooser. Use SimEnvironment(seed=...) instead"
            )
        return type(self)(**self._config)

    # -- async stages ----------------------------------------------------------------------
    #: arun() runs plain stages on the virtual loop: a real thread would escape scheduling
    async_offload = False

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A loop on virtual time: an async stage's ``await asyncio.sleep()`` is a
        yield point of the simulation, and moves virtual time only."""
        return VirtualEventLoop(self.clock)

    async def sleep_async(self, seconds: float) -> None:
        """On the virtual loop, whose time is the simulation's clock."""
        await asyncio.sleep(seconds)

    def run_async(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` (test code awaiting ``pipeline.arun()``) on a virtual-time loop
        in the main flow, as ``asyncio.run`` would on a real one: while it waits, the
        simulation runs (as ``clock.sleep`` outside a task does)."""
        return run_coroutine(self, main)

    # -- deliveries ------------------------------------------------------------------------
    def new_delivery_id(self) -> str:
        """Deliveries are numbered (``d1``, ``d2``, …), so a run repeats exactly."""
        self._deliveries += 1
        return f"d{self._deliveries}"

    def keep_lease(self, job_id: str, owner: str, lease: float) -> Heartbeat:
        """Renew the lease on virtual time, every third of it, while the delivery runs;
        a crashed worker stops renewing (its delivery's ``finally`` stops the timer)."""
        return _SimHeartbeat(self, job_id, owner, lease)

    # -- job aliases ----------------------------------------------------------------------
    def alias(self, job_id: str) -> str:
        """The stable alias (``j1``, ``j2``, …) of a job id, assigned on first sight."""
        alias = self._aliases.get(job_id)
        if alias is None:
            alias = self._aliases[job_id] = f"j{len(self._aliases) + 1}"
            self._ids[alias] = job_id
        return alias

    def job_id(self, alias: str) -> str:
        """The real job id behind an alias; KeyError names the known aliases."""
        try:
            return self._ids[alias]
        except KeyError:
            raise KeyError(f"no job {alias!r} in this run; known: {sorted(self._ids)}") from None

    @property
    def job_aliases(self) -> dict[str, str]:
        """alias → job id, in order of first sight."""
        return dict(self._ids)

    def scrub(self, text: str) -> str:
        """``text`` with every known job id replaced by its alias (traces stay stable)."""
        if len(text) < 32 or not self._aliases:
            return text
        return _HEX_ID.sub(lambda m: self._aliases.get(m.group(0), m.group(0)), text)

    # -- calls from the service proxies -----------------------------------------------------
    def enter_call(self, op: str, task: Task) -> tuple[bool, bool]:
        """A task reaches a service call: yield, then maybe hang in a partition, fail or
        crash there. Returns what to do once the call was applied (see FaultInjector)."""
        if task.crashed:
            from dcore_testing.sim.errors import WorkerCrash

            raise WorkerCrash(f"{op} after the crash")
        self.scheduler.yield_()
        if not self.faults.active:
            return False, False
        partition = self.faults.cut_off(self.clock._now, task, op)
        if partition is not None:
            self.faults.partition_timeout(op, partition, self.settings.redis_socket_timeout
                                          or 10.0)  # fmt: skip
        return self.faults.before_call(task, self._job_ordinal(task), op)

    def _job_ordinal(self, task: Task, job_id: Any = None) -> int | None:
        if task.job is not None:
            return int(task.job[1:])
        if isinstance(job_id, str) and job_id in self._aliases:  # a web request's job
            return int(self._aliases[job_id][1:])
        return None

    def service_call(
        self, op: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        scheduler = self.scheduler
        task = scheduler.current
        faulty = self.faults.active
        if task is None:
            flags = _NO_FLAGS
        elif faulty or task.crashed:
            flags = self.enter_call(op, task)
        else:  # enter_call without a fault plan: only the yield point
            if scheduler.ready or (scheduler.timers and scheduler.timers[0] <= self.clock._now):
                scheduler.yield_()
            flags = _NO_FLAGS
        first = args[0] if args else None
        if type(first) is str and op not in _EVENT_OPS:  # _record_call's common case
            aliases = self._aliases
            if op[:5] == "jobs.":
                scheduler.emit_call(op, aliases.get(first) or self.alias(first))
            else:
                scheduler.emit_call(
                    op, first if len(first) < 32 or not aliases else self.scrub(first)
                )
        else:
            self._record_call(op, args)
        result = fn(*args, **kwargs)
        if op[:5] == "jobs.":
            self._record_announced(op, args, kwargs, result)
        if task is not None and faulty:
            self.faults.after_call(task, self._job_ordinal(task, first), op, *flags)
        return result

    def _record_announced(
        self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        """The state events (and dead letters) the job store published itself."""
        if op == "jobs.bury":
            if result is None:
                return
            letter, announce = kwargs["letter"], kwargs["announce"]
            self._record_call("events.append", (letter.topic, letter.payload))
            self._record_call("events.publish", (announce.topic, announce.payload))
            return
        announce = kwargs.get("announce")
        if announce is None and len(args) >= 4 and op in ("jobs.create", "jobs.transition"):
            announce = args[1:4] if op == "jobs.create" else args[2:5]  # (bus, topic, payload)
        if announce is None:
            return
        if op == "jobs.claim" and getattr(result, "status", None) != "started":
            return
        topic, payload = announce[1], announce[2]
        if isinstance(topic, str) and topic in _JOB_TOPICS:  # (nearly always: a state event)
            self._record_state_event(topic, payload)
        else:
            self._record_call("events.publish", (topic, payload))

    def _record_call(self, op: str, args: tuple[Any, ...]) -> None:
        emit = self.scheduler.emit
        first = args[0] if args else None
        if op not in _EVENT_OPS:  # the common case: storage, jobs and locks calls
            if isinstance(first, str):
                aliases = self._aliases
                emit(
                    "call",
                    op=op,
                    key=(aliases.get(first) or self.alias(first))
                    if op[:5] == "jobs."
                    else (first if len(first) < 32 or not aliases else self.scrub(first)),
                )
            else:
                emit("call", op=op)
            return
        if op == "events.publish" and isinstance(first, str) and first in _JOB_TOPICS:
            self._record_state_event(first, args[1] if len(args) > 1 else None)
        elif op == "events.append" and first == self.settings.dlq_topic:
            payload = args[1] if len(args) > 1 and isinstance(args[1], _MAPPINGS) else {}
            job_id = payload.get("job_id")
            job = self.alias(job_id) if isinstance(job_id, str) else None
            emit("dlq", job=job, error=self.scrub(str(payload.get("error"))))
        elif isinstance(first, str):
            key = self.alias(first) if op.startswith("jobs.") else self.scrub(first)
            emit("call", op=op, key=key)
        else:
            emit("call", op=op)

    def _record_state_event(self, topic: str, payload: Any) -> None:
        """A job topic published (a state event): its job's alias, attempt and stage."""
        if not isinstance(payload, _MAPPINGS):
            payload = {}
        job_id = payload.get("job_id")
        fields: dict[str, Any] = {}
        if isinstance(job_id, str):
            fields["job"] = self._aliases.get(job_id) or self.alias(job_id)
        for key in ("attempt", "stage"):
            if key in payload:
                fields[key] = payload[key]
        self.scheduler.emit(topic, **fields)

    def emit_call(self, ev: str, **fields: Any) -> None:
        if "name" in fields and isinstance(fields["name"], str):
            fields["name"] = self.scrub(fields["name"])
        self.scheduler.emit(ev, **fields)

    # -- reading the outcome (no trace events) ------------------------------------------------
    def job_states(self) -> dict[str, JobState | None]:
        """Every scheduled, dispatched or injected job's state now, by alias (None: no
        record), read straight from the backend so the trace is left as it is."""
        from dcore.errors import JobNotFoundError

        store = self.jobs.inner  # type: ignore[attr-defined]
        states: dict[str, JobState | None] = {}
        for event in self.trace.of("job.scheduled", "dispatch", "inject"):
            if event.get("job") is None or event["job"] in states:
                continue
            try:
                states[event["job"]] = store.get(self.job_id(event["job"])).state
            except JobNotFoundError:
                states[event["job"]] = None
        return states

    def dlq_entries(self) -> list[dict[str, Any]]:
        """The dead-letter queue's entries (their payloads, oldest first), read straight
        from the backend so the trace is left as it is."""
        bus = self.events.inner  # type: ignore[attr-defined]
        return [e.payload for e in bus.entries(self.settings.dlq_topic)]

    # -- user-facing hooks -------------------------------------------------------------------
    def effect(self, name: str, /, **data: Any) -> None:
        """Record a side effect (a charge, an email) for the exactly-once invariants."""
        from dcore import current_job

        current = current_job()
        task = self.scheduler.current
        job = (
            self.alias(current.job_id)
            if current is not None
            else (task.job if task is not None else None)
        )
        self.scheduler.emit("effect", job=job, name=name, **_jsonable(data, "effect data"))

    def request(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any
    ) -> Request:
        """Run ``fn(*args, **kwargs)`` as a request to the web process (a simulated task
        on a ``web`` lane): the sync part of its pipelines runs there, and ``WebCrash``
        and faults scoped to ``task="web"`` hit it. If the web process dies, the request
        ends, and every job an in-process dispatcher held in its memory is lost. The
        returned :class:`Request` holds the response once it ran."""
        self._requests += 1
        label = name or f"web{self._requests}"
        if not label.startswith("web"):
            raise ValueError(f"a request's name starts with 'web', got {label!r}")
        request = Request(label)

        def handle() -> None:
            task = self.scheduler.current
            assert task is not None
            try:
                response = fn(*args, **kwargs)
                request.answered = True
                request.response = response
                if self.faults.active:
                    self.faults.web_crash(task, None, "after_response")
            except WorkerCrash as crash:
                request.crashed = True
                self.scheduler.emit("crash", node="web", where=crash.where)
                self.broker.lose_in_process()
                self.broker.arm_sweep()  # a job recorded but never sent is the sweep's

        self.scheduler.spawn(handle, name=label, lane=label)
        return request

    def spawn(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any
    ) -> Task:
        """Run ``fn(*args, **kwargs)`` as a simulated client task (not a worker: it
        never crashes). An exception it raises comes out of the next run call."""
        self._spawned += 1
        label = name or f"client{self._spawned}"
        return self.scheduler.spawn(lambda: fn(*args, **kwargs), name=label, lane=label)

    # -- running -------------------------------------------------------------------------
    def _running(self) -> AbstractContextManager[None]:
        """The scope a run needs: this environment current, and time patched when
        ``patch_time``; a run inside ``with sim:`` finds it current already and only
        patches time (if at all)."""
        if scoped_environment() is self:
            if not self.patch_time:
                return nullcontext()
            from dcore_testing.sim.timepatch import patched_time

            return patched_time(self.clock)
        return self._entered()

    @contextmanager
    def _entered(self) -> Iterator[None]:
        with use_environment(self):
            if self.patch_time:
                from dcore_testing.sim.timepatch import patched_time

                with patched_time(self.clock):
                    yield
            else:
                yield

    def run_until_idle(self, *, max_steps: int | None = None) -> None:
        """Run until no task is ready and no timer is pending. Deadlock if tasks are left
        waiting for something that can no longer happen."""
        with self._running():
            outcome = self.scheduler.run(steps=max_steps)
        if outcome == "idle":
            blocked = self.scheduler.blocked
            if blocked:
                raise Deadlock(
                    "the simulation is idle but tasks still wait: "
                    + ", ".join(f"{t.name} on {t.waiting_on!r}" for t in blocked)
                )

    def run_for(self, seconds: float) -> None:
        """Run ``seconds`` of virtual time (timers due later stay pending)."""
        if seconds < 0:
            raise ValueError(f"run_for() needs seconds >= 0, got {seconds!r}")
        until = self.clock.monotonic() + seconds
        with self._running():
            self.scheduler.run(until=until)
        if self.clock.monotonic() < until:
            self.clock.advance_to(until)

    def step(self) -> bool:
        """Resume one task (firing timers first if none is ready); False when idle."""
        with self._running():
            return self.scheduler.run(steps=1) == "steps"

    @property
    def now(self) -> float:
        """Virtual seconds since the start of the run."""
        return self.clock.monotonic()

    # -- traces ------------------------------------------------------------------------------
    def save_trace(self, path: str | os.PathLike[str]) -> Path:
        return self.trace.save(path)

    def finish_replay(self) -> None:
        """In replay, fail if the run stopped short of the recorded trace."""
        self.trace.finish()

    def check_determinism(
        self, scenario: Callable[[SimEnvironment], Any], *, runs: int = 2
    ) -> Trace:
        """Run ``scenario`` on fresh copies of this simulation ``runs`` times and raise
        ReplayDivergence at the first event where two runs differ. Returns the trace."""
        traces: list[Trace] = []
        for _ in range(runs):
            sim = self.fresh()
            with sim:
                try:
                    scenario(sim)
                except Exception as exc:
                    sim.trace.events.append({"ev": "scenario.error", "error": sim.scrub(repr(exc))})
            traces.append(sim.trace)
        first = traces[0]
        for other in traces[1:]:
            i = first_difference(first, other)
            if i is not None:
                raise ReplayDivergence(
                    i,
                    first.events[i] if i < len(first) else None,
                    other.events[i] if i < len(other) else None,
                    hint="the same seed ran twice and took different paths: something in "
                    "the scenario reads real time, real randomness or global state",
                )
        return first

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> SimEnvironment:
        stack = ExitStack()
        stack.enter_context(use_environment(self))
        stack.enter_context(use_id_source(self._next_job_id))
        self._stack = stack
        return self

    def _next_job_id(self) -> str:
        """Job ids made inside the simulation follow its seed (they pick shards, so
        queues): the N-th is a hash of the seed and N."""
        self._job_ids += 1
        key = f"dcore-sim:{self.seed}:{self._job_ids}".encode()
        return hashlib.blake2b(key, digest_size=16).hexdigest()

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self.close()

    def close(self) -> None:
        self.scheduler.close()
        super().close()

    def __repr__(self) -> str:
        return (
            f"SimEnvironment(seed={self.seed!r}, workers={self.workers}, "
            f"t={self.clock.monotonic()!r}, events={len(self.trace)})"
        )


@dataclass
class Request:
    """A request to the simulated web process: its ``response`` once it ``answered``;
    ``crashed`` if the web process died while (or right after) handling it."""

    name: str
    answered: bool = False
    response: Any = None
    crashed: bool = False


class _SimHeartbeat:
    """A delivery's lease kept alive by a virtual-time timer (renewing through the
    backend itself: a renewal is not a step of any task). A worker cut off from the job
    store by a partition cannot renew; it keeps trying."""

    def __init__(self, sim: SimEnvironment, job_id: str, owner: str, lease: float) -> None:
        self.sim = sim
        self.job_id = job_id
        self.owner = owner
        self.lease = lease
        self.task = sim.scheduler.current
        self.timer = sim.scheduler.call_later(lease / 3, self._renew)

    def _renew(self) -> None:
        sim = self.sim
        if sim.faults.cut_off(sim.clock._now, self.task, "jobs.renew") is None:
            store = sim.jobs.inner  # type: ignore[attr-defined]
            if not store.renew(self.job_id, owner=self.owner, lease=self.lease):
                return  # taken over: nothing left to renew
        self.timer = sim.scheduler.call_later(self.lease / 3, self._renew)

    def stop(self) -> None:
        self.timer.cancel()


#: the plan of a simulation made without one (a FaultPlan is frozen: one serves all)
_NO_FAULTS = FaultPlan()


#: id(plan) → (plan, its header text); the plan is held so its id stays its own
_PLAN_HEADERS: dict[int, tuple[FaultPlan, str]] = {}


def _plan_header(plan: FaultPlan) -> str:
    """The trace header's ``faults`` entry for ``plan``, as JSON text: dumped once per
    plan object (explore runs one plan for every seed; an equal plan may still spell a
    value differently, -0.0 for 0.0), parsed per trace so each header owns its objects."""
    found = _PLAN_HEADERS.get(id(plan))
    if found is not None:
        return found[1]
    text = json.dumps(
        {
            **plan.model_dump(mode="json", exclude_defaults=True, exclude={"faults"}),
            "faults": [f.model_dump(mode="json") for f in plan.faults],
        }
    )
    if len(_PLAN_HEADERS) >= 64:
        _PLAN_HEADERS.clear()
    _PLAN_HEADERS[id(plan)] = (plan, text)
    return text


#: settings by distinct overrides and variables, with the names of their mutable values
_SETTINGS_CACHE: dict[str, tuple[DcoreSettings, tuple[str, ...]]] = {}


def _settings(overrides: Mapping[str, Any]) -> DcoreSettings:
    """DcoreSettings with in-memory services; built once per distinct overrides and
    ``DCORE_*`` variables (building reads the environment: ~5 ms), copied after: each
    simulation gets its own copy, with its own copy of every mutable value (a list),
    so one that changes its settings changes no other's."""
    environ = os.environ
    env = sorted((k, environ[k]) for k in environ if k[:6].upper() == "DCORE_")
    key = json.dumps([env, sorted(overrides.items())], default=repr)
    found = _SETTINGS_CACHE.get(key)
    if found is None:
        defaults = {
            "storage": "memory",
            "event_bus": "memory",
            "job_store": "memory",
            "locks": "memory",
        }
        built = DcoreSettings(**{**defaults, **overrides})
        mutable = tuple(n for n, v in built.__dict__.items() if not isinstance(v, _IMMUTABLE))
        found = _SETTINGS_CACHE[key] = (built, mutable)
    cached, mutable = found  # (the cached copy is never handed out: its values keep their types)
    copied = cached.model_copy()
    values = copied.__dict__
    for name in mutable:
        values[name] = copy.deepcopy(values[name])
    return copied


#: setting values that a shallow copy may share (anything else is deep-copied)
_IMMUTABLE = (str, int, float, bool, type(None), Path, SecretStr, frozenset, tuple)


def memory_backends(clock: VirtualClock, settings: DcoreSettings) -> dict[str, Any]:
    """The simulation's default backends (dcore's in-memory ones) on ``clock``: start
    from these to wrap or replace one, ``services=lambda clock, settings: {**
    memory_backends(clock, settings), "jobs": MyStore(memory_backends(...)["jobs"])}``."""
    from dcore.backends.memory import MemoryEventBus, MemoryJobStore, MemoryLocks
    from dcore.backends.memory_storage import MemoryStorage

    return {
        "storage": MemoryStorage(),
        "events": MemoryEventBus(clock),
        "jobs": MemoryJobStore(clock, ttl=settings.job_ttl),
        "locks": MemoryLocks(clock),
    }


def _jsonable(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(dict(value))))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON values (they go into the trace): {exc}") from None


def _check(seed: Any, workers: Any, faults: Any, delivery: Any, services: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"SimEnvironment(seed=...) must be an int, got {seed!r}")
    if isinstance(workers, Mapping):
        if not workers or not all(
            isinstance(q, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 1
            for q, n in workers.items()
        ):
            raise ValueError(
                f"SimEnvironment(workers=...) as a mapping names queues and "
                f"how many workers (>= 1) serve each, got {workers!r}"
            )
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"SimEnvironment(workers=...) must be an int >= 1 or a mapping of "
            f"queue to workers, got {workers!r}"
        )
    if faults is not None and not isinstance(faults, FaultPlan):
        raise TypeError(
            f"SimEnvironment(faults=...) takes a FaultPlan, got {type(faults).__name__}; "
            "wrap faults like FaultPlan(Crash(stage='x'))"
        )
    if delivery not in get_args(DeliveryMode):
        raise ValueError(
            f"SimEnvironment(delivery=...) must be 'auto', 'at_least_once' or "
            f"'at_most_once', got {delivery!r}"
        )
    if services is not None and not callable(services) and not isinstance(services, Mapping):
        raise TypeError(
            f"SimEnvironment(services=...) takes a mapping of backends or a "
            f"function (clock, settings) -> mapping, got {type(services).__name__}"
        )


def _check_services(services: Mapping[str, Any]) -> None:
    missing = {"storage", "events", "jobs", "locks"} - set(services)
    if missing:
        raise ValueError(
            f"SimEnvironment(services=...) needs storage, events, jobs and "
            f"locks; missing: {', '.join(sorted(missing))}"
        )


def effect(name: str, /, **data: Any) -> None:
    """Record a side effect in the current simulation (a no-op outside one), so a fake
    gateway or mailer can feed the exactly-once invariants."""
    env = current_environment()
    if isinstance(env, SimEnvironment):
        env.effect(name, **data)
