"""Celery as dcore's distributed engine: the app factory and its one task, ``dcore.run``.

Start a worker (it imports the ``DCORE_IMPORTS`` modules, then serves the queues)::

    DCORE_JOB_STORE=redis DCORE_EVENT_BUS=redis DCORE_IMPORTS=myapp.pipelines \\
        celery -A dcore.celery:app worker -Q dcore.0 --pool=prefork -c 4

The task delivers the message (``dcore.runtime.deliver_message``) and carries out what
the delivery decision (:mod:`dcore.core.delivery`) says follows: a retry or a deferral
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

As it starts, a worker runs ``dcore doctor``'s checks once (:mod:`dcore.doctor`) and
logs what they find: a Redis without persistence or with an evicting ``maxmemory-policy``,
a process-local job store, recovery turned off, a visibility timeout a countdown
outlasts.

Importing this module connects to nothing: ``app`` is built on first access.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from celery import Celery, Task
from celery.exceptions import Reject

from dcore.core.delivery import Action, Outcome
from dcore.core.environment import Environment, current_environment
from dcore.core.message import JobMessage
from dcore.core.recovery import lost_jobs
from dcore.core.settings import DcoreSettings
from dcore.errors import ConfigurationError

if TYPE_CHECKING:
    from dcore.doctor import Log
from dcore.runtime import deliver_message

__all__ = [
    "KOMBU_TRANSPORT_EQUIVALENTS",
    "TASK_NAME",
    "broker_from_redis_url",
    "celery_config",
    "check_at_start",
    "execute",
    "make_celery_app",
    "message_for",
    "queue_for",
    "queue_names",
    "resend_stale",
]

TASK_NAME = "dcore.run"
_log = logging.getLogger("dcore.celery")


def queue_names(settings: DcoreSettings) -> list[str]:
    """``<celery_queue>.0 … <celery_queue>.<N-1>`` for ``DCORE_CELERY_QUEUES=N``."""
    return [f"{settings.celery_queue}.{n}" for n in range(settings.celery_queues)]


def queue_for(shard: int | None, settings: DcoreSettings) -> str:
    """The queue serving ``shard`` (a context's stable ``shard_key``): ``shard % N``.

    Every job of one shard lands on one queue, so a worker serving only that queue
    sees them in order of sending."""
    return f"{settings.celery_queue}.{(shard or 0) % settings.celery_queues}"


#: redis-py URL options that kombu's Redis transport takes as transport options instead
#: (each is in ``kombu.transport.redis.Channel.from_transport_options``; a test checks)
KOMBU_TRANSPORT_EQUIVALENTS = (
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "retry_on_timeout",
    "max_connections", "health_check_interval", "client_name",
)
_NUMBER_FORMS: dict[Any, str] = {float: "a number", int: "an integer"}


def broker_from_redis_url(url: str) -> tuple[str, dict[str, Any]]:
    """``DCORE_REDIS_URL`` made fit for kombu: the broker URL and transport options.

    redis-py reads connection options from the URL's query (``?socket_timeout=2``, as the
    settings reference documents); kombu passes every query argument to its ``Connection``, which
    accepts none of these and fails each dispatch. So the options kombu's Redis transport
    has an equivalent for move to transport options (parsed as redis-py parses them),
    ``db`` moves into the path and ``username``/``password`` into the user info (where
    redis-py would also find them), ``ssl_*`` stay (kombu reads them itself), and any
    other option is dropped with a warning in the log. Raises ConfigurationError for an
    option whose value redis-py would reject too."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    parts = urlsplit(url)
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query):  # blank values dropped, first wins: as redis-py
        query.setdefault(name, value)
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in query.items():
        parser = cast("Callable[[str], Any]", URL_QUERY_ARGUMENT_PARSERS.get(name, str))
        if name in KOMBU_TRANSPORT_EQUIVALENTS or name == "db":
            try:
                options[name] = parser(value)
            except (TypeError, ValueError):
                form = _NUMBER_FORMS.get(parser, "a value redis-py accepts")
                raise ConfigurationError(
                    f"DCORE_REDIS_URL option {name}={value!r} is not valid: expected {form}"
                ) from None
        elif name.startswith("ssl_"):
            kept.append((name, value))
        elif name not in ("username", "password"):
            dropped.append(name)
    if dropped:
        _log.warning(
            "DCORE_REDIS_URL option(s) %s have no equivalent in kombu's Redis transport; "
            "the Celery broker connection goes without them (set DCORE_CELERY_BROKER_URL "
            "and broker_transport_options to configure the broker yourself)",
            ", ".join(dropped),
        )
    # the user info wins over username=/password= in the query, as in redis-py
    user = unquote(parts.username) if parts.username else query.get("username", "")
    password = unquote(parts.password) if parts.password else query.get("password", "")
    netloc = parts.netloc.rpartition("@")[2]
    if password:
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc}"
    elif user:
        netloc = f"{quote(user, safe='')}@{netloc}"
    path = f"/{options.pop('db')}" if "db" in options else parts.path
    broker = urlunsplit(parts._replace(netloc=netloc, path=path, query=urlencode(kept)))
    return broker, options


def celery_config(settings: DcoreSettings) -> dict[str, Any]:
    """The Celery settings dcore relies on (see the module docstring for why).

    Without ``DCORE_CELERY_BROKER_URL`` the broker is ``DCORE_REDIS_URL``, rewritten by
    :func:`broker_from_redis_url` so its redis-py options reach kombu as transport options."""
    visibility = settings.celery_visibility_timeout
    # kombu sweeps for expired unacked messages every interval * throttle seconds
    # (10 * 10 by default); a lost job should come back soon after the visibility timeout
    restore_interval = max(1.0, min(10.0, visibility / 5))
    queues = queue_names(settings)
    broker = settings.celery_broker_url
    url_options: dict[str, Any] = {}
    if not broker:
        broker, url_options = broker_from_redis_url(settings.redis_url)
    return {
        "broker_url": broker,
        "broker_transport_options": {
            **url_options,
            "visibility_timeout": visibility,
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # a lost broker connection cannot ack running jobs anyway; they come back
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": {name: {"exchange": name, "routing_key": name} for name in queues},
        "task_default_queue": queues[0],
        "task_create_missing_queues": True,
        "imports": tuple(settings.imports),
    }


def execute(raw: Any, *, environment: Environment | None = None) -> Outcome:
    """Run one delivery of a job message (its JSON) and say what should follow (see
    :mod:`dcore.core.delivery`); the task carries it out. Never raises for a job's own
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


def resend_stale(
    env: Environment, *, older_than: float | None = None, limit: int = 1000,
    dry_run: bool = False,
) -> list[str]:
    """Send again every job whose delivery was lost (see :mod:`dcore.core.recovery`):
    RUNNING with a lease that ran out, FAILED with an overdue retry, PENDING for longer
    than ``older_than`` seconds (default ``DCORE_RECOVERY_PENDING_AFTER``) while its
    queue is empty. Workers run this every ``DCORE_RECOVERY_INTERVAL`` seconds on their
    own; ``dcore jobs resend-stale`` runs it once. Returns the job ids sent (or that
    would be, with ``dry_run``)."""
    if older_than is not None and older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than}")
    from dcore.dispatchers.celery import celery_app

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
    from dcore.doctor import log_findings, run_checks

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
