"""The simulated dispatcher and broker: hand-off, delivery, ack, redelivery, retries.

Every Dispatch a pipeline builds in a :class:`SimEnvironment` is wrapped by
:class:`SimDispatcher`, which keeps the wrapped one's ``is_remote()``:

- remote (Celery): the remainder travels as ``JobMessage`` JSON and a worker runs it
  with ``dcore.run_message`` — serialization bugs show up here;
- in-process (thread, FastAPI): the ``Continuation`` and the context object are kept
  and delivered with ``continuation.deliver(ctx, attempt=n)``, so closures simulate.

The broker hands messages to ``workers`` simulated worker processes, one job each at a
time. Each delivery goes through production's own path, so the one delivery decision
(:func:`dcore.engine.deliver_message`) says what follows and the broker only carries it out: a
retry after the job policy's backoff, a deferral while another delivery holds the job's
lease, a requeue when the job store was unreachable (all on virtual time). A worker
crash leaves the job RUNNING with a lease nobody renews; an at-least-once broker (every
dispatcher but FastAPI's BackgroundTasks) redelivers it after ``redelivery_after``, and
that delivery waits for the lease to run out before it takes the job over.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dcore import Dispatch, JobHandle, JobMessage, RetryPolicy
from dcore.engine import Action, Delivered, deliver_message, describe_error, job_policy
from dcore_testing.sim.errors import SimulationError, WorkerCrash

if TYPE_CHECKING:
    from dcore import Continuation, Environment
    from dcore.engine import Stage
    from dcore_testing.sim.environment import SimEnvironment
    from dcore_testing.sim.scheduler import Task, TimerHandle

__all__ = ["Broker", "JobEntry", "QueuedDelivery", "SimDispatcher", "SimObserver"]


@dataclass
class JobEntry:
    """A dispatched job as the broker knows it. ``queue``: the queue its messages go to
    (None: any worker takes it)."""

    job: str
    job_id: str
    ordinal: int
    remote: bool
    at_most_once: bool
    policy: RetryPolicy
    message: str | None
    continuation: Continuation[Any] | None
    context: Any
    queue: str | None = None
    #: the web process that held it in memory (an in-process dispatcher) died
    lost: bool = False


@dataclass
class QueuedDelivery:
    """One delivery of a job waiting in the simulated broker's queue."""

    entry: JobEntry
    attempt: int
    cause: str  # first | retry | redelivery | duplicate | deferred | requeue | injected


class SimDispatcher(Dispatch[Any]):
    """Stands in for a pipeline's Dispatch; keeps its remote flag."""

    def __init__(self, sim: SimEnvironment, inner: Dispatch[Any]) -> None:
        self.sim = sim
        self.inner = inner

    def is_remote(self) -> bool:
        return self.inner.is_remote()

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        return self.sim.broker.dispatch(self.inner, next_fn, context)

    def __repr__(self) -> str:
        return f"SimDispatcher({type(self.inner).__name__})"


def _at_most_once(inner: Dispatch[Any], context: Any) -> bool:
    from dcore.dispatchers.fastapi import FastAPIDispatcher

    resolve = getattr(inner, "resolve", None)
    target = resolve(context) if callable(resolve) else inner
    declared = getattr(target, "at_most_once", None)
    if isinstance(declared, bool):
        return declared
    return isinstance(target, FastAPIDispatcher)


class Broker:
    """Queues, worker slots, and the delivery loop run in each worker's task.

    ``workers`` is a number (every worker takes every message) or a mapping of queue
    name to how many workers serve it: then each shipped job goes to the queue the
    Celery dispatcher would route it to (its shard's ``<DCORE_CELERY_QUEUE>.<n>``, or the
    dispatcher's pinned ``queue``), and only that queue's workers take it, oldest first.
    """

    def __init__(self, sim: SimEnvironment, workers: int | Mapping[str, int],
                 delivery: str) -> None:  # fmt: skip
        self.sim = sim
        self.delivery = delivery
        self.serves: dict[int, str | None] = {}
        if isinstance(workers, int):
            self.serves = dict.fromkeys(range(1, workers + 1))
        else:
            for queue, count in workers.items():
                for _ in range(count):
                    self.serves[len(self.serves) + 1] = queue
        self.routed = not isinstance(workers, int)
        self.workers = len(self.serves)
        self.queue: deque[QueuedDelivery] = deque()
        self.free = list(self.serves)
        self.entries: dict[str, JobEntry] = {}
        #: deliveries on a timer (delayed, redelivered, retried), by queue
        self.in_transit: dict[str | None, int] = {}
        self._sweep_timer: TimerHandle | None = None

    # -- hand-off -----------------------------------------------------------------------
    def dispatch(self, inner: Dispatch[Any], next_fn: Continuation[Any], context: Any) -> JobHandle:
        sim = self.sim
        job = sim.alias(context.job_id)
        remote = inner.is_remote()
        message = next_fn.to_json(context) if remote else None
        if self.delivery == "auto":
            at_most_once = _at_most_once(inner, context)
        else:
            at_most_once = self.delivery == "at_most_once"
        entry = JobEntry(
            job=job,
            job_id=context.job_id,
            ordinal=int(job[1:]),
            remote=remote,
            at_most_once=at_most_once,
            policy=next_fn.job_policy(),
            message=message,
            continuation=None if remote else next_fn,
            context=None if remote else context,
            queue=self._route(inner, context.shard_key) if remote else None,
        )
        self.entries[job] = entry
        routing = {"queue": entry.queue} if self.routed else {}
        sim.scheduler.emit(
            "dispatch",
            job=job,
            remote=remote,
            delivery="at-most-once" if at_most_once else "at-least-once",
            attempts=entry.policy.attempts,
            **routing,
        )
        if remote:
            self.arm_sweep()
        copies, delay, dropped = sim.faults.at_dispatch(entry.ordinal, job)
        if dropped:
            if at_most_once:
                sim.scheduler.emit("lost", job=job, reason="message dropped")
            else:
                self.put(QueuedDelivery(entry, 1, "redelivery"), sim.faults.plan.redelivery_after)
        else:
            self.put(QueuedDelivery(entry, 1, "first"), delay)
        for _ in range(copies):
            self.put(QueuedDelivery(entry, 1, "duplicate"), delay)
        return JobHandle(job_id=context.job_id, status="scheduled")

    def inject(self, raw: JobMessage | str | bytes, *, delay: float = 0.0) -> str:
        """Put a raw or recorded job message on the broker, as a client that publishes
        one directly would (a duplicate, a malformed or hostile one, one recorded by an
        older version of the code); returns the job's alias. A worker delivers it like
        any other message."""
        if isinstance(raw, JobMessage):
            text = raw.to_json()
        else:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        job_id = JobMessage.peek_job_id(text) or "unknown"
        sim = self.sim
        job = sim.alias(job_id)
        try:
            attempt = JobMessage.parse(text).attempt
        except Exception:  # a malformed message: the worker dead-letters it
            attempt = 1
        try:
            shard = JobMessage.parse(text).shard
        except Exception:
            shard = None
        entry = JobEntry(
            job=job,
            job_id=job_id,
            ordinal=int(job[1:]),
            remote=True,
            at_most_once=False,
            policy=job_policy(None, sim.settings),
            message=text,
            continuation=None,
            context=None,
            queue=self._route(None, shard),
        )
        self.entries.setdefault(job, entry)
        sim.scheduler.emit("inject", job=job, size=len(text))
        self.put(QueuedDelivery(entry, attempt, "injected"), delay)
        return job

    def _route(self, inner: Dispatch[Any] | None, shard: int | None) -> str | None:
        """The queue the Celery dispatcher sends a job of ``shard`` to; None when the
        simulation does not route (a number of workers takes every message)."""
        if not self.routed:
            return None
        from dcore.celery import queue_for

        pinned = getattr(inner, "queue", None)
        queue = pinned if isinstance(pinned, str) else queue_for(shard, self.sim.settings)
        if queue not in self.serves.values():
            served = sorted({q for q in self.serves.values() if q is not None})
            raise SimulationError(
                f"no simulated worker serves queue {queue!r}; SimEnvironment(workers=...) "
                f"names {', '.join(served)}: add it, e.g. workers={{{queue!r}: 1, ...}}"
            )
        return queue

    def put(self, delivery: QueuedDelivery, delay: float = 0.0) -> None:
        if delay > 0:
            queue = delivery.entry.queue
            self.in_transit[queue] = self.in_transit.get(queue, 0) + 1

            def arrive() -> None:
                self.in_transit[queue] -= 1
                self._enqueue(delivery)

            self.sim.scheduler.call_later(delay, arrive)
        else:
            self._enqueue(delivery)

    def _enqueue(self, delivery: QueuedDelivery) -> None:
        if delivery.entry.lost:
            self.sim.scheduler.emit(
                "lost", job=delivery.entry.job, reason="the web process holding it died"
            )
            return
        self.queue.append(delivery)
        self.pump()

    def pump(self) -> None:
        """Hand queued messages to free workers (lowest number first), each to a worker
        that serves its queue, oldest first."""
        queue, free = self.queue, self.free
        if not self.routed:
            while queue and free:
                self._start(heapq.heappop(free), queue.popleft())
            return
        for worker in sorted(free):
            serves = self.serves[worker]
            found = next((d for d in queue if d.entry.queue in (None, serves)), None)
            if found is not None:
                queue.remove(found)
                free.remove(worker)
                self._start(worker, found)
        heapq.heapify(free)

    def _start(self, worker: int, delivery: QueuedDelivery) -> None:
        job = delivery.entry.job
        self.sim.scheduler.spawn(
            functools.partial(self._run, delivery),
            name=f"w{worker}:{job}",
            lane=f"w{worker}",
            worker=worker,
            job=job,
        )

    def queue_empty(self, shard: int | None) -> bool:
        """No message of ``shard``'s queue waits or is on its way (the sweep's test)."""
        queue = self._route(None, shard) if self.routed else None
        waiting = any(d.entry.queue == queue for d in self.queue)
        return not waiting and not self.in_transit.get(queue, 0)

    # -- the web process dying --------------------------------------------------------------
    def lose_in_process(self) -> None:
        """The web process died: every job an in-process dispatcher (threads, FastAPI's
        BackgroundTasks) held in its memory is gone, waiting or running."""
        for entry in self.entries.values():
            if not entry.remote:
                entry.lost = True
        for delivery in [d for d in self.queue if d.entry.lost]:
            self.queue.remove(delivery)
            self.sim.scheduler.emit(
                "lost", job=delivery.entry.job, reason="the web process holding it died"
            )
        for task in self.sim.scheduler.tasks:
            running = self.entries.get(task.job or "")
            if task.worker is not None and running is not None and running.lost:
                task.crashed = True  # its next step finds the process dead

    # -- the recovery sweep ----------------------------------------------------------------
    def arm_sweep(self) -> None:
        """Run the workers' recovery sweep every ``DCORE_RECOVERY_INTERVAL`` of virtual
        time while a shipped job is unfinished (production's own ``lost_jobs``)."""
        interval = self.sim.settings.recovery_interval
        if interval > 0 and self._sweep_timer is None:
            self._sweep_timer = self.sim.scheduler.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        from dcore.engine import lost_jobs

        self._sweep_timer = None
        sim = self.sim
        if not _recoverable(sim.jobs.inner):  # type: ignore[attr-defined]
            return
        settings = sim.settings
        reading = cast("Environment", _Reading(sim))
        lost = lost_jobs(
            reading,
            pending_after=settings.recovery_pending_after,
            grace=settings.lease_ttl,
            queue_empty=self.queue_empty,
        )
        for job in lost:
            sim.scheduler.emit("resend", job=sim.alias(job.job_id), reason=job.reason)
            self.inject(job.message)
        self.arm_sweep()

    def cancel_sweep(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None

    def task_done(self, task: Task) -> None:
        if task.worker is not None:
            heapq.heappush(self.free, task.worker)
            self.pump()
        if (
            self._sweep_timer is not None
            and not self.queue
            and not any(self.in_transit.values())
            and not _recoverable(self.sim.jobs.inner)  # type: ignore[attr-defined]
        ):
            self.cancel_sweep()  # nothing left to recover: let the run go idle

    # -- a worker running one delivery -------------------------------------------------------
    def _run(self, d: QueuedDelivery) -> None:
        """One delivery, through production's own path (``deliver_message`` for a
        shipped job, ``Continuation.deliver`` for an in-process one); the broker only
        carries out the outcome, as the thread and Celery engines do."""
        sim, entry = self.sim, d.entry
        emit = sim.scheduler.emit
        raw = entry.message
        if entry.remote and raw is not None and d.attempt != 1:
            raw = JobMessage.parse(raw).with_attempt(d.attempt).to_json()
        emit("deliver", attempt=d.attempt, cause=d.cause, **self._fingerprint(raw))
        try:
            if entry.remote:
                assert raw is not None
                delivered = deliver_message(raw, environment=sim)
            else:
                assert entry.continuation is not None
                delivered = entry.continuation.deliver(entry.context, attempt=d.attempt)
        except WorkerCrash as crash:
            emit("crash", where=crash.where)
            if entry.at_most_once:
                emit("lost", reason="worker crashed; an at-most-once dispatcher does not redeliver")
            else:
                after = sim.faults.plan.redelivery_after
                emit("redeliver", attempt=d.attempt, after=after)
                self.put(QueuedDelivery(entry, d.attempt, "redelivery"), after)
            return
        self._carry_out(d, delivered)

    def _fingerprint(self, raw: str | None) -> dict[str, str]:
        """What a shipped delivery carried, for the trace: ``msg``, a hash of the message
        (job ids as their aliases; the random trace context and the shard derived from
        the random job id left out), and ``schema``, a hash of its context class's JSON
        schema. Replaying a trace against code that builds another message, or whose
        context class changed, diverges at the first such delivery. A trace recorded
        before deliveries carried these replays without them."""
        if raw is None:
            return {}
        expected = self.sim.trace.peek_expected()
        if expected is not None and "msg" not in expected:
            return {}
        text = _VOLATILE.sub("}", self.sim.scrub(raw))
        found = _CONTEXT_TYPE.search(raw)
        return {"msg": _digest(text), "schema": _schema_digest(found.group(1)) if found else "none"}

    def _carry_out(self, d: QueuedDelivery, delivered: Delivered) -> None:
        sim, emit = self.sim, self.sim.scheduler.emit
        outcome = delivered.outcome
        action = outcome.action
        if delivered.error is not None:
            emit(
                "failed",
                error=sim.scrub(describe_error(delivered.error)),
                dead=action is Action.DEAD,
            )
        if action is Action.ACK:
            emit("ack")
        elif action is Action.SKIP:
            emit("skip", reason=sim.scrub(outcome.reason or ""))
        elif action is Action.DEAD:
            if delivered.error is None:
                emit("dead", reason=sim.scrub(outcome.reason or ""))
        else:  # RETRY, DEFER, REQUEUE: deliver again after the delay
            cause = {Action.RETRY: "retry", Action.DEFER: "deferred", Action.REQUEUE: "requeue"}[
                action
            ]
            emit(str(action), attempt=outcome.attempt, delay=outcome.delay)
            self.put(QueuedDelivery(d.entry, outcome.attempt, cause), outcome.delay)


#: the end of a JobMessage's JSON: its random trace context and the shard of its random id
_VOLATILE = re.compile(r',"trace":\{[^{}]*\},"shard":(?:null|\d+)\}$')
_CONTEXT_TYPE = re.compile(r'"context":\{"type":"([^"]{1,300})"')


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=6).hexdigest()


@functools.cache
def _schema_digest(type_name: str) -> str:
    from dcore.engine import registered_context_types

    cls = registered_context_types().get(type_name)
    if cls is None:
        return "unknown"
    schema = json.dumps(cls.model_json_schema(mode="serialization"), sort_keys=True)
    return _digest(f"{cls.__version__}:{schema}")


def _recoverable(store: Any) -> bool:
    """Whether any unfinished job has a message the sweep could send again. The newest
    record of a state is read first: a shipped job's record holds its message, so it
    usually answers without building every record of that state (a few µs each)."""
    from dcore.services.jobs import JobState

    for state in (JobState.PENDING, JobState.RUNNING, JobState.FAILED, JobState.COMPENSATING):
        newest = store.list(state, limit=1)
        if newest and (
            newest[0].message or any(record.message for record in store.list(state, limit=1000))
        ):
            return True
    return False


class _Reading:
    """The simulation's services, read straight from the backends: the sweep runs in
    the scheduler, between steps, like a timer, not as a task."""

    def __init__(self, sim: SimEnvironment) -> None:
        self.settings = sim.settings
        self.clock = sim.clock
        self.jobs = sim.jobs.inner  # type: ignore[attr-defined]
        self.events = sim.events.inner  # type: ignore[attr-defined]
        self.registry = sim.registry
        self.random = sim.random


class SimObserver:
    """Records stage enter/exit and crashes workers where the fault plan says."""

    def __init__(self, sim: SimEnvironment) -> None:
        self.sim = sim

    def stage_enter(self, stage: Stage, context: Any) -> None:
        sim = self.sim
        task = sim.scheduler.current
        job = sim._aliases.get(context.job_id) or sim.alias(context.job_id)
        sim.scheduler.emit_stage("stage.enter", job, stage.label, stage.index)
        if task is not None and task.worker is not None and sim.faults.active:
            sim.faults.at_stage(task, int(job[1:]), stage.label, "enter")

    def stage_exit(self, stage: Stage, context: Any, error: BaseException | None) -> None:
        sim = self.sim
        task = sim.scheduler.current
        if task is not None and task.crashed:
            return  # a dead process observes nothing
        job = sim._aliases.get(context.job_id) or sim.alias(context.job_id)
        sim.scheduler.emit_stage(
            "stage.exit",
            job,
            stage.label,
            stage.index,
            None if error is None else type(error).__name__,
        )
        if error is None and task is not None and task.worker is not None and sim.faults.active:
            sim.faults.at_stage(task, int(job[1:]), stage.label, "exit")
