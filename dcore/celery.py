"""Celery as dcore's distributed engine: the app factory and its one task, ``dcore.run``.

Start a worker (it imports the ``DCORE_IMPORTS`` modules, then serves the queues)::

    DCORE_JOB_STORE=redis DCORE_EVENT_BUS=redis DCORE_IMPORTS=myapp.pipelines \\
        celery -A dcore.celery:app worker -Q dcore.0 --pool=prefork -c 4

The task only runs ``dcore.runtime.run_message``; job state lives in dcore's job store,
so Celery keeps no results. Delivery is at-least-once: messages are acknowledged after
the job (``acks_late``), a pool child that dies returns its message to the queue
(``reject_on_worker_lost``), and a worker that dies as a whole gets its unacknowledged
messages back after the broker's ``visibility_timeout`` (``DCORE_CELERY_VISIBILITY_TIMEOUT``,
300 s here instead of Celery's hour, which would hide a lost job for that long). It must
exceed the longest job and the longest retry countdown, or a job still running (or
waiting for its countdown) is delivered a second time.

Importing this module connects to nothing: ``app`` is built on first access.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from celery import Celery, Task
from celery.exceptions import Reject

from dcore.core.environment import Environment, current_environment
from dcore.core.interfaces import Dispatch
from dcore.core.lifecycle import SkippedDuplicate, dead_letter, describe_error
from dcore.core.message import JobMessage
from dcore.core.pipeline import origin_of
from dcore.core.retry import RetryPolicy, declared_policy, job_policy
from dcore.core.settings import DcoreSettings
from dcore.errors import (
    ConfigurationError,
    DcoreError,
    JobNotFoundError,
    MessageError,
    ServiceUnavailableError,
)
from dcore.runtime import run_message
from dcore.services.jobs import JobState

__all__ = [
    "KOMBU_TRANSPORT_EQUIVALENTS",
    "MAX_LOST_DELIVERIES",
    "TASK_NAME",
    "Delivery",
    "broker_from_redis_url",
    "celery_config",
    "execute",
    "job_policy_for",
    "make_celery_app",
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
    README documents); kombu passes every query argument to its ``Connection``, which
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


#: A job whose deliveries keep dying with the worker (out of memory, a crash in native
#: code) is dead-lettered after this many lost deliveries instead of looping forever.
MAX_LOST_DELIVERIES = 5


@dataclass(frozen=True)
class Delivery:
    """What became of one delivery of a job message, and what the task does next:
    ``retry`` sends ``next_message`` after ``countdown`` seconds, ``requeue`` puts this
    delivery back (the job store was unreachable, so the job could not be recorded)."""

    status: Literal["succeeded", "retry", "dead", "malformed", "skipped", "requeue"]
    job_id: str
    reason: str | None = None
    next_message: str | None = None
    countdown: float = 0.0


def job_policy_for(message: JobMessage, env: Environment) -> RetryPolicy:
    """The job-level policy of a shipped job: the Dispatch stage's ``retry=`` (carried in
    the spec) or its plugin's policy, else the worker's ``DCORE_JOB_*`` -- the resolution
    ``dcore.dispatchers.thread.job_policy`` applies in-process."""
    declared = None
    if 0 < message.resume_at <= len(message.spec):
        stage = message.spec[message.resume_at - 1]
        try:
            explicit = RetryPolicy.model_validate(stage.retry) if stage.retry else None
            cls: type = env.registry.get(Dispatch, stage.plugin)
        except (DcoreError, ValueError):  # run_message will reject the message itself
            explicit, cls = None, object
        declared = declared_policy(explicit, cls)
    return job_policy(declared, env.settings)


def execute(
    raw: Any, *, environment: Environment | None = None, redelivered: bool = False
) -> Delivery:
    """Run one delivery of a job message (its JSON) and say what should follow.

    Never raises for a job's own failure: a malformed message is dead-lettered by
    ``run_message`` and the worker moves on; a failed attempt is retried per the job
    policy (``final=`` tells ``run_message`` whether another attempt will come)."""
    env = environment or current_environment()
    text: str | bytes = raw if isinstance(raw, str | bytes) else json.dumps(raw, default=str)
    try:
        message = JobMessage.parse(text)
    except MessageError:
        message = None
    if message is None:
        try:
            run_message(text, environment=env)  # dead-letters it and raises
        except MessageError as exc:
            _log.error("malformed job message dead-lettered: %s", exc)
            return Delivery("malformed", JobMessage.peek_job_id(text) or "unknown", str(exc))
        raise AssertionError("run_message accepted a message JobMessage.parse rejected")
    job_id = message.job_id
    if redelivered:
        lost = _lost_deliveries(env, message)
        if lost >= MAX_LOST_DELIVERIES:
            error = (
                f"WorkerLost: the worker running job {job_id} died {lost} times "
                f"(limit {MAX_LOST_DELIVERIES}); not delivering it again"
            )
            _give_up(env, message, error)
            return Delivery("dead", job_id, error)
    policy = job_policy_for(message, env)
    final = message.attempt >= policy.attempts
    try:
        run_message(message, environment=env, final=final)
    except MessageError as exc:
        _log.error("job %s: message cannot run, dead-lettered: %s", job_id, exc)
        return Delivery("malformed", job_id, str(exc))
    except SkippedDuplicate as exc:
        _log.info("%s", exc)
        return Delivery("skipped", job_id, str(exc))
    except ServiceUnavailableError as exc:
        if origin_of(exc) is not None:  # raised by a stage: the job's own failure
            return _after_failure(env, message, policy, final, exc)
        _log.warning("job %s: job store unreachable, delivery requeued: %s", job_id, exc)
        return Delivery("requeue", job_id, describe_error(exc))
    except Exception as exc:
        return _after_failure(env, message, policy, final, exc)
    return Delivery("succeeded", job_id)


def _after_failure(
    env: Environment, message: JobMessage, policy: RetryPolicy, final: bool, exc: Exception
) -> Delivery:
    error = describe_error(exc)
    if final:  # run_message has marked it DEAD and dead-lettered it
        return Delivery("dead", message.job_id, error)
    if not policy.should_retry(exc):
        dead_letter(env, message.job_id, error=error, message=message.to_json(),
                    attempt=message.attempt)
        return Delivery("dead", message.job_id, error)
    return Delivery(
        "retry",
        message.job_id,
        error,
        next_message=message.with_attempt(message.attempt + 1).to_json(),
        countdown=policy.delay(message.attempt, env.random),
    )


def _lost_deliveries(env: Environment, message: JobMessage) -> int:
    """How many times the job was started and then lost with its worker (it is still
    RUNNING, and was started more often than its attempt number accounts for)."""
    try:
        record = env.jobs.get(message.job_id)
    except JobNotFoundError:
        return 0
    if record.state is not JobState.RUNNING:
        return 0
    return max(0, record.attempts - (message.attempt - 1))


def _give_up(env: Environment, message: JobMessage, error: str) -> None:
    env.jobs.transition(message.job_id, JobState.FAILED, error=error, note="worker lost")
    dead_letter(env, message.job_id, error=error, message=message.to_json(),
                attempt=message.attempt)


def resend_stale(
    env: Environment, *, older_than: float, limit: int = 1000, dry_run: bool = False
) -> list[str]:
    """Send again every job still PENDING ``older_than`` seconds after it was recorded.

    Celery's Redis transport takes a message off the queue before the worker has it; a
    connection cut at that instant loses the message while the job's record (with its
    full message) says PENDING. Run this periodically (``dcore jobs resend-stale``) with
    ``older_than`` above the longest queue wait you expect: a job still waiting in the
    queue would be delivered twice, which at-least-once delivery permits and the job
    store's state machine turns into a skipped duplicate once the first run finished.
    Jobs recorded without a message (in-process dispatchers) cannot be sent and are
    left alone. Returns the job ids sent (or that would be, with ``dry_run``)."""
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than}")
    from dcore.dispatchers.celery import celery_app

    cutoff = env.clock.time() - older_than
    sent: list[str] = []
    for record in env.jobs.list(JobState.PENDING, limit=limit):
        if record.updated_at > cutoff or not record.message:
            continue
        try:
            message = JobMessage.parse(record.message)
        except MessageError as exc:
            _log.warning("job %s: stored message cannot be re-sent: %s", record.job_id, exc)
            continue
        if not dry_run:
            celery_app(env).send_task(
                TASK_NAME, args=[record.message], queue=queue_for(message.shard, env.settings),
                task_id=record.job_id,
            )
            _log.info("job %s: PENDING since %.0f, re-sent", record.job_id, record.updated_at)
        sent.append(record.job_id)
    return sent


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
        """Run one delivery of a dcore JobMessage (its JSON text)."""
        delivery_info = self.request.delivery_info or {}
        outcome: Delivery = execute(
            message, environment=env, redelivered=bool(delivery_info.get("redelivered"))
        )
        if outcome.status == "requeue":
            raise Reject(outcome.reason, requeue=True)
        if outcome.status == "retry":
            raise self.retry(
                args=[outcome.next_message], countdown=outcome.countdown, max_retries=None
            )

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
