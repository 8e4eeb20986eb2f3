"""Checks that connect: the Celery broker, and every Redis server dcore's services use.

- ``broker``: ``DCORE_CELERY_BROKER_URL`` that kombu cannot parse, an unknown transport,
  a ``memory://`` broker (it lives in one process), a broker that is not Redis and
  cannot be reached; ``DCORE_REDIS_URL`` options that break the broker URL made from it.
- ``redis``: a server that cannot be reached (its URL named, password hidden).
- ``persistence``: a restart loses what the server holds unless it persists: the
  append-only file is on (``appendonly yes``), only RDB snapshots run (``save``), or
  nothing does.
- ``eviction``: ``maxmemory-policy`` other than ``noeviction``. ``allkeys-*`` evicts
  any key once ``maxmemory`` is reached: records of running jobs (they have no TTL),
  queued messages, dead letters; ``volatile-*`` evicts keys that have a TTL: finished
  job records before ``DCORE_JOB_TTL`` and locks while they are held.

A server on which ``CONFIG`` is disabled (managed Redis) is read through ``INFO``
where it says enough; what neither answers is reported as a warning, "could not check".
Each server is connected with a short timeout; nothing is written to it.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from dcore._core.settings import DcoreSettings
from dcore._doctor.findings import Finding, error, ok, warning

__all__ = [
    "RedisServer",
    "check_broker",
    "check_eviction",
    "check_persistence",
    "check_redis_servers",
    "redis_servers",
]

#: what a restart (or an eviction) takes from each role a server plays
_HOLDS = {
    "job store": "job records",
    "event bus/DLQ": "dead letters",
    "locks": "held locks",
    "Celery broker": "queued messages",
}
#: kombu Redis schemes and the redis-py scheme of the same server
_KOMBU_REDIS = {"redis": "redis", "rediss": "rediss", "redis+socket": "unix"}


def hide_password(url: str) -> str:
    """``url`` with any password hidden, even in a URL too broken to parse (a password
    holding an unencoded ``/`` or ``@``, a bad port): the user info up to the last ``@``
    before the query, and a ``password=`` query argument."""
    scheme, sep, rest = url.partition("://")
    head, mark, query = rest.partition("?")
    if "@" in head:
        userinfo, _, host = head.rpartition("@")
        if ":" in userinfo:
            head = f"{userinfo.partition(':')[0]}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", query)
    return f"{scheme}{sep}{head}{mark}{query}"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


@dataclass
class RedisServer:
    """One Redis server (host and port, or socket) and what dcore uses it for."""

    url: str  #: the first URL naming it, credentials included: never shown as is
    roles: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"Redis at {hide_password(self.url)} ({', '.join(self.roles)})"

    def holds(self) -> str:
        return _listing([_HOLDS[role] for role in self.roles])


def redis_servers(
    settings: DcoreSettings, broker_urls: list[str]
) -> tuple[list[RedisServer], list[Finding]]:
    """The servers behind the Redis services and ``broker_urls`` (redis-py URLs), one
    per host and port; an error for each URL that cannot be parsed."""
    uses = [(role, settings.redis_url, "DCORE_REDIS_URL")
            for role, backend in (("job store", settings.job_store),
                                  ("event bus/DLQ", settings.event_bus),
                                  ("locks", settings.locks))
            if backend == "redis"]  # fmt: skip
    variable = "DCORE_CELERY_BROKER_URL" if settings.celery_broker_url else "DCORE_REDIS_URL"
    uses += [("Celery broker", url, variable) for url in broker_urls]
    if not uses:
        return [], []
    try:
        from redis.connection import parse_url as parse
    except ModuleNotFoundError:
        roles = ", ".join(dict.fromkeys(role for role, _, _ in uses))
        return [], [
            error(
                "redis",
                f"the Redis backends ({roles}) need redis-py, which is not "
                "installed. Fix: pip install 'distributed-core[redis]'",
            )
        ]
    named: dict[str, RedisServer] = {}  # each URL once, with every role it plays
    for role, url, variable in uses:
        named.setdefault(url, RedisServer(url))
        named[url].roles.append(role)
        if variable not in named[url].variables:
            named[url].variables.append(variable)
    servers: dict[tuple[Any, ...], RedisServer] = {}
    findings = []
    for url, seen in named.items():
        try:
            options: dict[str, Any] = cast("Callable[[str], dict[str, Any]]", parse)(url)
        except ValueError as exc:
            findings.append(
                error(
                    "redis",
                    (
                        f"{_listing(seen.variables)}={hide_password(url)!r} "
                        f"({', '.join(seen.roles)}) "
                        f"cannot be parsed: {str(exc).rstrip('.')}. Fix: write it as "
                        "redis://[:PASSWORD@]HOST:6379/0"
                    ),
                )
            )
            continue
        key = (options.get("host"), options.get("port", 6379), options.get("path"))
        server = servers.setdefault(key, RedisServer(url))
        server.roles += [role for role in seen.roles if role not in server.roles]
        server.variables += [v for v in seen.variables if v not in server.variables]
    return list(servers.values()), findings


def check_redis_servers(servers: list[RedisServer], *, timeout: float) -> list[Finding]:
    """Reach each server, then check its persistence and eviction policy."""
    findings = []
    for server in servers:
        client, reached = _connect(server, timeout)
        findings.append(reached)
        if client is None:
            continue
        try:
            findings += [check_persistence(client, server), check_eviction(client, server)]
        finally:
            client.close()
    return findings


def _connect(server: RedisServer, timeout: float) -> tuple[Any, Finding]:
    import redis

    variables = " and ".join(server.variables)
    fix = f"Fix: check {variables} and that the server is running"
    client = redis.Redis.from_url(server.url, socket_connect_timeout=timeout,
                                  socket_timeout=timeout, decode_responses=True)  # fmt: skip
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        problem = error(
            "redis",
            f"{server} refused the credentials ({exc}). Fix: check "
            f"the user and password in {variables}",
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        problem = error("redis", f"{server} is unreachable ({exc}). {fix}")
    except redis.RedisError as exc:
        problem = warning("redis", f"{server}: could not check, PING failed ({exc})")
    except Exception as exc:  # the URL's options do not fit redis-py's connection
        problem = error(
            "redis",
            f"{server}: cannot connect ({type(exc).__name__}: {exc}). "
            f"Fix: check the options in {variables}",
        )
    else:
        return client, ok("redis", f"{server} answers")
    client.close()
    return None, problem


def _config(client: Any, name: str) -> str | None:
    """``CONFIG GET name``, or None where CONFIG is disabled or not allowed."""
    import redis

    try:
        reply = client.config_get(name)
    except redis.ResponseError:
        return None
    return None if name not in reply else str(reply[name])


def _info(client: Any, section: str) -> dict[str, Any] | None:
    import redis

    try:
        return dict(client.info(section))
    except redis.ResponseError:
        return None


def check_persistence(client: Any, server: RedisServer) -> Finding:
    """Whether a restart of ``server`` (reached by ``client``) keeps what it holds."""
    appendonly = _config(client, "appendonly")
    save = _config(client, "save")
    info = _info(client, "persistence") or {}
    fix = "Fix: appendonly yes (CONFIG SET appendonly yes, and in redis.conf)"
    if info.get("aof_last_write_status") == "err" or info.get("rdb_last_bgsave_status") == "err":
        return error(
            "persistence",
            (
                f"{server}: persisting fails (aof_last_write_status:"
                f"{info.get('aof_last_write_status')}, rdb_last_bgsave_status:"
                f"{info.get('rdb_last_bgsave_status')}), so a restart loses {server.holds()}. "
                "Fix: see the server's log (a full disk?)"
            ),
        )
    if appendonly is None or save is None:
        if info.get("aof_enabled") == 1:
            return ok("persistence", f"{server}: the append-only file is on (INFO)")
        seen = "INFO says the append-only file is off" if info else "INFO is refused too"
        return warning(
            "persistence",
            (
                f"{server}: could not check, CONFIG is disabled (a managed Redis?) and {seen}; "
                f"unless the provider persists the data, a restart loses {server.holds()}. "
                "Fix: turn on its persistence (appendonly yes)"
            ),
        )
    if appendonly == "yes":
        return ok("persistence", f"{server}: appendonly yes")
    if save.strip():
        return warning(
            "persistence",
            (
                f"{server}: only RDB snapshots (appendonly no, save {save!r}): a crash loses "
                f"the {server.holds()} written since the last snapshot. {fix}"
            ),
        )
    return error(
        "persistence",
        (
            f"{server}: persistence is off (appendonly no, save ''): a restart loses all its "
            f"{server.holds()}. {fix}"
        ),
    )


def check_eviction(client: Any, server: RedisServer) -> Finding:
    """Whether ``server`` may evict dcore's keys (see the module docstring)."""
    info = _info(client, "memory") or {}
    policy = info.get("maxmemory_policy") or _config(client, "maxmemory-policy")
    limit = info.get("maxmemory", _config(client, "maxmemory"))
    if policy is None or limit is None:
        return warning(
            "eviction",
            (
                f"{server}: could not check maxmemory-policy (CONFIG and INFO refused); it "
                "must be noeviction, or the server may drop jobs under memory pressure"
            ),
        )
    fix = "Fix: maxmemory-policy noeviction"
    if policy == "noeviction":
        return ok("eviction", f"{server}: maxmemory-policy noeviction")
    if int(limit) == 0:
        return warning(
            "eviction",
            (
                f"{server}: maxmemory-policy {policy} evicts nothing while maxmemory is 0, but "
                f"would drop dcore's keys once a limit is set. {fix}"
            ),
        )
    if str(policy).startswith("allkeys-"):
        return error(
            "eviction",
            (
                f"{server}: maxmemory-policy {policy} evicts any key at maxmemory {limit}: "
                f"{server.holds()} (a running job's record has no TTL and vanishes). {fix}"
            ),
        )
    return warning(
        "eviction",
        (
            f"{server}: maxmemory-policy {policy} evicts keys that have a TTL at maxmemory "
            f"{limit}: finished job records before DCORE_JOB_TTL, and locks while they are "
            f"held. {fix}"
        ),
    )


def check_broker(settings: DcoreSettings, *, timeout: float) -> tuple[list[Finding], list[str]]:
    """Check the Celery broker URL(s) and reach a broker that is not Redis; returns the
    findings and the Redis broker URLs (redis-py form) for :func:`redis_servers`."""
    if importlib.util.find_spec("celery") is None:
        return [
            error("broker", "Celery is not installed. Fix: pip install 'distributed-core[celery]'")
        ], []
    from dcore._celery_config import broker_from_redis_url
    from dcore.errors import ConfigurationError

    if not settings.celery_broker_url:
        try:
            broker_from_redis_url(settings.redis_url)
        except ConfigurationError as exc:
            return [
                error(
                    "broker",
                    f"{exc} (the Celery broker is made from it while "
                    "DCORE_CELERY_BROKER_URL is unset)",
                )
            ], []
        return [
            ok(
                "broker",
                "the Celery broker is DCORE_REDIS_URL's server (DCORE_CELERY_BROKER_URL unset)",
            )
        ], [settings.redis_url]
    findings: list[Finding] = []
    redis_urls: list[str] = []
    for url in settings.celery_broker_url.split(";"):  # Celery's failover list
        finding, redis_url = _check_broker_url(url.strip(), timeout)
        findings += [finding] if finding else []
        redis_urls += [redis_url] if redis_url else []
    return findings, redis_urls


def _kombu_connection(url: str, **options: Any) -> Any:
    from kombu.connection import Connection

    return cast("Callable[..., Any]", Connection)(url, **options)


def _check_broker_url(url: str, timeout: float) -> tuple[Finding | None, str | None]:
    given = f"DCORE_CELERY_BROKER_URL={hide_password(url)!r}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return error(
            "broker",
            (
                f"{given} has no scheme, so kombu reads it as an AMQP host name. Fix: write it "
                "as redis://HOST:6379/0 (or amqp://HOST//)"
            ),
        ), None
    try:
        transport = _kombu_connection(url).transport
    except KeyError as exc:  # kombu: "No such transport: reddis. Did you mean redis?"
        return error("broker", f"{given} names no kombu transport: {exc.args[0]}"), None
    except (ValueError, TypeError, ImportError) as exc:
        return error("broker", f"{given} cannot be parsed: {exc}"), None
    if transport.driver_type == "memory":
        return error(
            "broker",
            (
                f"{given} lives in one process: workers never see what another process "
                "sends. Fix: a broker they share, such as redis://HOST:6379/0"
            ),
        ), None
    if scheme in _KOMBU_REDIS:
        return None, f"{_KOMBU_REDIS[scheme]}://{rest}"
    return _reach_broker(url, given, timeout), None


def _reach_broker(url: str, given: str, timeout: float) -> Finding:
    connection = _kombu_connection(url, connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                     timeout=timeout)  # fmt: skip
    except Exception as exc:  # each transport raises its own kind
        return error(
            "broker",
            f"{given} is unreachable ({type(exc).__name__}: {exc}). "
            "Fix: check the URL and that the broker is running",
        )
    finally:
        connection.release()
    return ok("broker", f"{given} answers")
