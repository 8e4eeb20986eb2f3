"""The simulated dispatcher and broker: hand-off, delivery, ack, redelivery, retries.

Every Dispatch a pipeline builds in a :class:`SimEnvironment` is wrapped by
:class:`SimDispatcher`, which keeps the wrapped one's ``is_remote()``:

- remote (Celery): the remainder travels as ``JobMessage`` JSON and a worker runs it
  with ``dcore.runtime.run_message`` — serialization bugs show up here;
- in-process (thread, FastAPI): the ``Continuation`` and the context object are kept
  and delivered with ``continuation.deliver(ctx, attempt=n)``, so closures simulate.

The broker hands messages to ``workers`` simulated worker processes, one job each at a
time. Each delivery goes through production's own path, so the one delivery decision
(:mod:`dcore.core.delivery`) says what follows and the broker only carries it out: a
retry after the job policy's backoff, a deferral while another delivery holds the job's
lease, a requeue when the job store was unreachable (all on virtual time). A worker
crash leaves the job RUNNING with a lease nobody renews; an at-least-once broker (every
dispatcher but FastAPI's BackgroundTasks) redelivers it after ``redelivery_after``, and
that delivery waits for the lease to run out before it takes the job over.
"""

from __future__ import annotations

import functools
import heapq
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dcore.core.delivery import Action
from dcore.core.handle import JobHandle
from dcore.core.interfaces import Dispatch
from dcore.core.lifecycle import Delivered, describe_error
from dcore.core.message import JobMessage
from dcore.core.retry import RetryPolicy, job_policy
from dcore.runtime import deliver_message
from dcore_testing.sim.errors import WorkerCrash

if TYPE_CHECKING:
    from dcore.core.pipeline import Continuation, Stage
    from dcore_testing.sim.environment import SimEnvironment
    from dcore_testing.sim.scheduler import Task

__all__ = ["Broker", "Delivery", "JobEntry", "SimDispatcher", "SimObserver"]


@dataclass
class JobEntry:
    """A dispatched job as the broker knows it."""

    job: str
    job_id: str
    ordinal: int
    remote: bool
    at_most_once: bool
    policy: RetryPolicy
    message: str | None
    continuation: Continuation[Any] | None
    context: Any


@dataclass
class Delivery:
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
    """Queues, worker slots, and the delivery loop run in each worker's task."""

    def __init__(self, sim: SimEnvironment, workers: int, delivery: str) -> None:
        self.sim = sim
        self.workers = workers
        self.delivery = delivery
        self.queue: deque[Delivery] = deque()
        self.free = list(range(1, workers + 1))
        self.entries: dict[str, JobEntry] = {}

    # -- hand-off -----------------------------------------------------------------------
    def dispatch(self, inner: Dispatch[Any], next_fn: Continuation[Any], context: Any) -> JobHandle:
        sim = self.sim
        job = sim.alias(context.job_id)
        remote = inner.is_remote()
        message = next_fn.to_message(context).to_json() if remote else None
        if self.delivery == "auto":
            at_most_once = _at_most_once(inner, context)
        else:
            at_most_once = self.delivery == "at_most_once"
        entry = JobEntry(
            job=job, job_id=context.job_id, ordinal=int(job[1:]), remote=remote,
            at_most_once=at_most_once, policy=next_fn.job_policy(), message=message,
            continuation=None if remote else next_fn, context=None if remote else context,
        )
        self.entries[job] = entry
        sim.scheduler.emit("dispatch", job=job, remote=remote,
                           delivery="at-most-once" if at_most_once else "at-least-once",
                           attempts=entry.policy.attempts)
        copies, delay, dropped = sim.faults.at_dispatch(entry.ordinal, job)
        if dropped:
            if at_most_once:
                sim.scheduler.emit("lost", job=job, reason="message dropped")
            else:
                self.put(Delivery(entry, 1, "redelivery"), sim.faults.plan.redelivery_after)
        else:
            self.put(Delivery(entry, 1, "first"), delay)
        for _ in range(copies):
            self.put(Delivery(entry, 1, "duplicate"), delay)
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
        entry = JobEntry(
            job=job, job_id=job_id, ordinal=int(job[1:]), remote=True, at_most_once=False,
            policy=job_policy(None, sim.settings), message=text, continuation=None,
            context=None,
        )
        self.entries.setdefault(job, entry)
        sim.scheduler.emit("inject", job=job, size=len(text))
        self.put(Delivery(entry, attempt, "injected"), delay)
        return job

    def put(self, delivery: Delivery, delay: float = 0.0) -> None:
        if delay > 0:
            self.sim.scheduler.call_later(delay, lambda: self._enqueue(delivery))
        else:
            self._enqueue(delivery)

    def _enqueue(self, delivery: Delivery) -> None:
        self.queue.append(delivery)
        self.pump()

    def pump(self) -> None:
        """Hand queued messages to free workers (lowest number first)."""
        queue, free = self.queue, self.free
        while queue and free:
            worker = heapq.heappop(free)
            delivery = queue.popleft()
            job = delivery.entry.job
            self.sim.scheduler.spawn(
                functools.partial(self._run, delivery), name=f"w{worker}:{job}",
                lane=f"w{worker}", worker=worker, job=job,
            )

    def task_done(self, task: Task) -> None:
        if task.worker is not None:
            heapq.heappush(self.free, task.worker)
            self.pump()

    # -- a worker running one delivery -------------------------------------------------------
    def _run(self, d: Delivery) -> None:
        """One delivery, through production's own path (``deliver_message`` for a
        shipped job, ``Continuation.deliver`` for an in-process one); the broker only
        carries out the outcome, as the thread and Celery engines do."""
        sim, entry = self.sim, d.entry
        emit = sim.scheduler.emit
        emit("deliver", attempt=d.attempt, cause=d.cause)
        try:
            if entry.remote:
                assert entry.message is not None
                raw = entry.message
                if d.attempt != 1:
                    raw = JobMessage.parse(raw).with_attempt(d.attempt).to_json()
                delivered = deliver_message(raw, environment=sim)
            else:
                assert entry.continuation is not None
                delivered = entry.continuation.deliver(entry.context, attempt=d.attempt)
        except WorkerCrash as crash:
            emit("crash", where=crash.where)
            if entry.at_most_once:
                emit("lost", reason="worker crashed; an at-most-once dispatcher does not "
                                    "redeliver")
            else:
                after = sim.faults.plan.redelivery_after
                emit("redeliver", attempt=d.attempt, after=after)
                self.put(Delivery(entry, d.attempt, "redelivery"), after)
            return
        self._carry_out(d, delivered)

    def _carry_out(self, d: Delivery, delivered: Delivered) -> None:
        sim, emit = self.sim, self.sim.scheduler.emit
        outcome = delivered.outcome
        action = outcome.action
        if delivered.error is not None:
            emit("failed", error=sim.scrub(describe_error(delivered.error)),
                 dead=action is Action.DEAD)
        if action is Action.ACK:
            emit("ack")
        elif action is Action.SKIP:
            emit("skip", reason=sim.scrub(outcome.reason or ""))
        elif action is Action.DEAD:
            if delivered.error is None:
                emit("dead", reason=sim.scrub(outcome.reason or ""))
        else:  # RETRY, DEFER, REQUEUE: deliver again after the delay
            cause = {Action.RETRY: "retry", Action.DEFER: "deferred",
                     Action.REQUEUE: "requeue"}[action]
            emit(str(action), attempt=outcome.attempt, delay=outcome.delay)
            self.put(Delivery(d.entry, outcome.attempt, cause), outcome.delay)


class SimObserver:
    """Records stage enter/exit and crashes workers where the fault plan says."""

    def __init__(self, sim: SimEnvironment) -> None:
        self.sim = sim

    def stage_enter(self, stage: Stage, context: Any) -> None:
        sim = self.sim
        task = sim.scheduler.current
        job = sim.alias(context.job_id)
        sim.scheduler.emit("stage.enter", job=job, stage=stage.label, index=stage.index)
        if task is not None and task.worker is not None and sim.faults.active:
            sim.faults.at_stage(task, int(job[1:]), stage.label, "enter")

    def stage_exit(self, stage: Stage, context: Any, error: BaseException | None) -> None:
        sim = self.sim
        task = sim.scheduler.current
        if task is not None and task.crashed:
            return  # a dead process observes nothing
        job = sim.alias(context.job_id)
        sim.scheduler.emit("stage.exit", job=job, stage=stage.label, index=stage.index,
                           error=None if error is None else type(error).__name__)
        if error is None and task is not None and task.worker is not None and sim.faults.active:
            sim.faults.at_stage(task, int(job[1:]), stage.label, "exit")
