"""Celery configuration that needs no Celery: task name, queues, broker URL, app settings.

Kept apart from :mod:`dcore.celery` (which builds the app and its task) so that the
dispatcher and ``dcore doctor`` can use it without importing the engine, and the engine
can run the doctor's checks without an import cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from dcore.errors import ConfigurationError

if TYPE_CHECKING:
    from dcore._core.settings import DcoreSettings

__all__ = [
    "KOMBU_TRANSPORT_EQUIVALENTS",
    "TASK_NAME",
    "broker_from_redis_url",
    "celery_config",
    "queue_for",
    "queue_names",
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
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "retry_on_timeout",
    "max_connections",
    "health_check_interval",
    "client_name",
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
