"""Celery as dcore's distributed engine: the app factory and its one task, ``dcore.run``.

Start a worker (it imports the ``DCORE_IMPORTS`` modules, then serves the queues)::

    DCORE_JOB_STORE=redis DCORE_EVENT_BUS=redis DCORE_IMPORTS=myapp.pipelines \\
        celery -A dcore.celery:app worker -Q dcore.0 --pool=prefork -c 4

The task delivers the message (``dcore.engine.deliver_message``) and carries out what
the delivery decision (:mod:`dcore._core.delivery`) says follows: a retry or a deferral
is sent again with its countdown, a requeue is rejected back to the queue. Job state
lives in dcore's job store, so Celery keeps no results.

Delivery is at-least-once and never concurrent: messages are acknowledged after the job
(``acks_late``), a pool child that dies returns its message to the queue
(``reject_on_worker_lost``), and a running attempt holds a lease on its job record
(``DCORE_LEASE_TTL``) that any other delivery of the job respects. A worker that dies as
a whole stops renewing its leases; each worker runs a recovery sweep every
``DCORE_RECOVERY_INTERVAL`` seconds that sends such jobs again (and jobs whose message
was lost), so they come back within about a lease and an interval, long before the
broker's ``visibility_timeout`` (``DCORE_CELERY_VISIBILITY_TIMEOUT``, 300 s) would
return their messages. A message that does come back late finds its job finished or
leased and is skipped or deferred: the visibility timeout no longer has to exceed the
longest job.

As it starts, a worker runs ``dcore doctor``'s checks once (:mod:`dcore._doctor`) and
logs what they find: a Redis without persistence or with an evicting ``maxmemory-policy``,
a process-local job store, recovery turned off, a visibility timeout a countdown
outlasts.

Importing this module connects to nothing: ``app`` is built on first access.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.exceptions import Reject

from dcore._core.delivery import Action, Outcome
from dcore._core.environment import Environment, current_environment
from dcore._core.message import JobMessage
from dcore._core.recovery import lost_jobs
from dcore._core.settings import DcoreSettings

if TYPE_CHECKING:
    from dcore._doctor import Log
from dcore._celery_config import (
    KOMBU_TRANSPORT_EQUIVALENTS,
    TASK_NAME,
    broker_from_redis_url,
    celery_config,
    queue_for,
    queue_names,
)
from dcore._worker import deliver_message

__all__ = [
    "KOMBU_TRANSPORT_EQUIVALENTS",
    "TASK_NAME",
    "broker_from_redis_url",
    "celery_app",
    "celery_config",
    "check_at_start",
    "execute",
    "make_celery_app",
    "message_for",
    "queue_for",
    "queue_names",
    "resend_stale",
]

_log = logging.getLogger("dcore.celery")


def execute(raw: Any, *, environment: Environment | None = None) -> Outcome:
    """Run one delivery of a job message (its JSON) and say what should follow (see
    :mod:`dcore._core.delivery`); the task carries it out. Never raises for a job's own
    failure: the failure is recorded (and dead-lettered when nothing follows), a
    malformed message is dead-lettered, and the worker moves on."""
    env = environment or current_environment()
    if not isinstance(raw, str | bytes):
        try:  # a client that sent a JSON object instead of its text
            raw = json.dumps(raw, default=str)
        except (TypeError, ValueError, RecursionError) as exc:
            raw = f"<unserializable task argument: {type(exc).__name__}>"
    delivered = deliver_message(raw, environment=env)
    outcome = delivered.outcome
    if delivered.error is not None:
        _log.info("job delivery ended %s: %s", outcome.action, outcome.reason)
    return outcome


def message_for(raw: str | bytes, outcome: Outcome) -> str:
    """The message to send for a RETRY (the next attempt) or DEFER (this one again)."""
    message = JobMessage.parse(raw)
    return message.with_attempt(outcome.attempt).to_json()


def celery_app(env: Environment) -> Celery:
    """The environment's Celery app (made on first use from its settings)."""
    return env.resource("dcore.celery_app", lambda: make_celery_app(env.settings))


def resend_stale(
    env: Environment,
    *,
    older_than: float | None = None,
    limit: int = 1000,
    dry_run: bool = False,
) -> list[str]:
    """Send again every job whose delivery was lost (see :mod:`dcore._core.recovery`):
    RUNNING with a lease that ran out, FAILED with an overdue retry, PENDING for longer
    than ``older_than`` seconds (default ``DCORE_RECOVERY_PENDING_AFTER``) while its
    queue is empty. Workers run this every ``DCORE_RECOVERY_INTERVAL`` seconds on their
    own; ``dcore jobs resend-stale`` runs it once. Returns the job ids sent (or that
    would be, with ``dry_run``)."""
    if older_than is not None and older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than}")
    app = celery_app(env)
    empty = _QueueProbe(app, env.settings)
    pending_after = env.settings.recovery_pending_after if older_than is None else older_than
    lost = lost_jobs(env, pending_after=pending_after, grace=env.settings.lease_ttl,
                     queue_empty=empty, limit=limit)  # fmt: skip
    if not dry_run:
        for job in lost:
            app.send_task(TASK_NAME, args=[job.message], task_id=job.job_id,
                          queue=queue_for(job.shard, env.settings))  # fmt: skip
            _log.warning("job %s re-sent: %s", job.job_id, job.reason)
    return [job.job_id for job in lost]


class _QueueProbe:
    """Whether a shard's queue holds no message, asked once per queue per sweep."""

    def __init__(self, app: Celery, settings: DcoreSettings) -> None:
        self.app = app
        self.settings = settings
        self.sizes: dict[str, int] = {}

    def __call__(self, shard: int | None) -> bool:
        queue = queue_for(shard, self.settings)
        if queue not in self.sizes:
            with self.app.connection_for_read() as conn:
                try:
                    declared = conn.default_channel.queue_declare(queue=queue, passive=True)
                    self.sizes[queue] = int(declared.message_count)
                except conn.channel_errors:  # no such queue: Redis drops an empty list
                    self.sizes[queue] = 0
        return self.sizes[queue] == 0


class RecoveryLoop:
    """The sweep a worker runs every ``DCORE_RECOVERY_INTERVAL`` seconds, on one thread,
    so lost jobs come back without an operator. Workers take turns: a sweep runs only
    while holding the lock ``<prefix>:recovery`` (one sweep per interval overall)."""

    def __init__(self, env: Environment, interval: float) -> None:
        self.env = env
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dcore-recovery", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def sweep(self) -> list[str]:
        env = self.env
        try:
            lock = env.locks.lock(f"{env.settings.key_prefix}:recovery", ttl=self.interval)
            if not lock.acquire(blocking=False):
                return []
            return resend_stale(env)
        except Exception:
            _log.warning("recovery sweep failed; trying again in %gs", self.interval,
                         exc_info=True)  # fmt: skip
            return []

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def check_at_start(env: Environment, log: Log = _log) -> None:
    """Run ``dcore doctor``'s checks once and log what they find (errors as errors,
    warnings as warnings): a worker on a Redis that keeps nothing across a restart says
    so when it starts, not after the restart. A check that breaks never stops the worker."""
    from dcore._doctor import log_findings, run_checks

    try:
        findings = run_checks(env.settings, celery=True)
    except Exception as exc:
        log.log(logging.WARNING, "dcore doctor could not run its checks: %r", exc)
        return
    log_findings(findings, log)


def _recovery_step(env: Environment | None) -> type:
    from celery import bootsteps

    class Recovery(bootsteps.StartStopStep):  # type: ignore[misc]
        """Checks the deployment once (:func:`check_at_start`), then runs the recovery
        sweep in the worker's main process."""

        def __init__(self, parent: Any, **options: Any) -> None:
            super().__init__(parent, **options)
            self.loop: RecoveryLoop | None = None

        def start(self, parent: Any) -> None:
            environment = env or current_environment()
            check_at_start(environment)
            interval = environment.settings.recovery_interval
            if interval > 0:
                self.loop = RecoveryLoop(environment, interval)
                self.loop.start()

        def stop(self, parent: Any) -> None:
            if self.loop is not None:
                self.loop.stop()

    return Recovery


def make_celery_app(
    settings: DcoreSettings | None = None, *, environment: Environment | None = None
) -> Celery:
    """A Celery app configured from ``settings`` (default: ``DCORE_*``), with ``dcore.run``.

    Jobs run in ``environment`` when given, else in the worker's current environment
    (built from the same ``DCORE_*`` variables). Creating the app connects to nothing."""
    if settings is None:
        settings = environment.settings if environment is not None else DcoreSettings()
    app = Celery("dcore", set_as_current=False)
    app.conf.update(celery_config(settings))
    env = environment

    # shared=False: a shared task would make every app run the first app's closure
    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_NAME, bind=True, max_retries=None, shared=False
    )
    def run(self: Task, message: Any) -> None:
        """Run one delivery of a dcore JobMessage (its JSON text); carry out what the
        delivery decision says follows."""
        outcome = execute(message, environment=env)
        if outcome.action is Action.REQUEUE:
            raise Reject(outcome.reason, requeue=True)
        if outcome.action in (Action.RETRY, Action.DEFER):
            raise self.retry(args=[message_for(message, outcome)], countdown=outcome.delay,
                             max_retries=None)  # fmt: skip

    app.steps["worker"].add(_recovery_step(env))
    return app


_app: Celery | None = None
_app_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """``dcore.celery.app``: the app for ``DCORE_*``, built on first access (so
    ``celery -A dcore.celery:app`` works and a plain import stays side-effect free)."""
    global _app
    if name == "app":
        with _app_lock:
            if _app is None:
                _app = make_celery_app()
            return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
