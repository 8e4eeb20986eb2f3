"""The checks that connect, against a real private Redis: reachability, persistence and
eviction policy (also where CONFIG is refused, as on managed Redis), how servers are
grouped, and the Celery broker URL."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcore import DcoreSettings
from dcore._doctor import Finding, Level, run_checks
from dcore._doctor.servers import (
    RedisServer,
    check_broker,
    check_eviction,
    check_persistence,
    check_redis_servers,
    hide_password,
    redis_servers,
)

Private = tuple[str, Any]


def server(url: str, *roles: str) -> RedisServer:
    return RedisServer(url, list(roles or ["job store"]), ["DCORE_REDIS_URL"])


@pytest.fixture
def client(private_redis: Private) -> Iterator[Any]:
    import redis

    c = redis.Redis.from_url(private_redis[0], decode_responses=True)
    yield c
    c.close()


def restricted(private_redis: Private, *denied: str) -> str:
    """A URL for a user who may run everything but ``denied`` (as on a managed Redis)."""
    url, admin = private_redis
    admin.acl_setuser("managed", enabled=True, passwords=["+pw"], keys=["*"],
                      channels=["*"], categories=["+@all"],
                      commands=[f"-{name}" for name in denied])  # fmt: skip
    return url.replace("redis://", "redis://managed:pw@")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for f in findings:
        grouped.setdefault(f.check, []).append(f)
    return grouped


# -- persistence -------------------------------------------------------------------------
def test_persistence_off_is_an_error_saying_what_a_restart_loses(
    private_redis: Private, client: Any
) -> None:
    finding = check_persistence(client, server(private_redis[0], "job store", "Celery broker"))

    assert finding.level is Level.ERROR
    assert "persistence is off (appendonly no, save '')" in finding.message
    assert "a restart loses all its job records and queued messages" in finding.message
    assert "Fix: appendonly yes" in finding.message


def test_snapshots_only_are_a_warning(private_redis: Private, client: Any) -> None:
    private_redis[1].config_set("save", "3600 1")

    finding = check_persistence(client, server(private_redis[0]))

    assert finding.level is Level.WARNING
    assert "only RDB snapshots (appendonly no, save '3600 1')" in finding.message
    assert "Fix: appendonly yes" in finding.message


def test_the_append_only_file_on_is_ok(private_redis: Private, client: Any) -> None:
    private_redis[1].config_set("appendonly", "yes")

    finding = check_persistence(client, server(private_redis[0]))

    assert finding.level is Level.OK
    assert finding.message.endswith("appendonly yes")


def test_config_refused_falls_back_on_info_and_warns_that_it_could_not_check(
    private_redis: Private,
) -> None:
    url = restricted(private_redis, "config")
    [reached, persistence, _] = check_redis_servers([server(url)], timeout=2)

    assert reached.level is Level.OK
    assert persistence.level is Level.WARNING
    assert "could not check, CONFIG is disabled" in persistence.message
    assert "INFO says the append-only file is off" in persistence.message
    assert "pw@" not in persistence.message


def test_config_refused_with_the_append_only_file_on_is_ok_from_info(
    private_redis: Private,
) -> None:
    private_redis[1].config_set("appendonly", "yes")
    url = restricted(private_redis, "config")

    findings = by_check(check_redis_servers([server(url)], timeout=2))

    assert findings["persistence"][0].level is Level.OK
    assert "(INFO)" in findings["persistence"][0].message


def test_config_and_info_refused_are_warnings_not_a_crash(private_redis: Private) -> None:
    url = restricted(private_redis, "config", "info")

    findings = by_check(check_redis_servers([server(url)], timeout=2))

    assert findings["persistence"][0].level is Level.WARNING
    assert "INFO is refused too" in findings["persistence"][0].message
    assert findings["eviction"][0].level is Level.WARNING
    assert "could not check maxmemory-policy" in findings["eviction"][0].message


# -- eviction ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "maxmemory", "level", "says"),
    [
        ("noeviction", "100mb", Level.OK, "maxmemory-policy noeviction"),
        ("allkeys-lru", "100mb", Level.ERROR, "a running job's record has no TTL"),
        ("allkeys-random", "100mb", Level.ERROR, "evicts any key at maxmemory 104857600"),
        ("volatile-lru", "100mb", Level.WARNING, "locks while they are held"),
        ("volatile-ttl", "100mb", Level.WARNING, "finished job records before DCORE_JOB_TTL"),
        ("allkeys-lru", "0", Level.WARNING, "evicts nothing while maxmemory is 0"),
    ],
)
def test_an_evicting_policy_is_reported_at_its_level(
    private_redis: Private, client: Any, policy: str, maxmemory: str, level: Level, says: str
) -> None:
    private_redis[1].config_set("maxmemory", maxmemory)
    private_redis[1].config_set("maxmemory-policy", policy)

    finding = check_eviction(client, server(private_redis[0]))

    assert finding.level is level
    assert says in finding.message
    if level is not Level.OK:
        assert "Fix: maxmemory-policy noeviction" in finding.message


def test_the_policy_is_read_from_info_where_config_is_refused(private_redis: Private) -> None:
    private_redis[1].config_set("maxmemory", "100mb")
    private_redis[1].config_set("maxmemory-policy", "allkeys-lru")
    url = restricted(private_redis, "config")

    findings = by_check(check_redis_servers([server(url)], timeout=2))

    assert findings["eviction"][0].level is Level.ERROR


# -- reaching servers --------------------------------------------------------------------
def test_an_unreachable_server_is_an_error_naming_its_url_without_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"

    [finding] = check_redis_servers([server(url)], timeout=1)

    assert finding.level is Level.ERROR
    assert (
        f"Redis at redis://:***@127.0.0.1:{url.split(':')[-1]} (job store) is unreachable"
        in finding.message
    )
    assert "hunter2" not in finding.message
    assert "Fix: check DCORE_REDIS_URL" in finding.message


def test_a_server_that_never_answers_fails_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        [finding] = check_redis_servers([server(f"redis://127.0.0.1:{port}/0")], timeout=0.3)
        elapsed = time.monotonic() - started

    assert finding.level is Level.ERROR
    assert "is unreachable" in finding.message
    assert elapsed < 3


def test_wrong_credentials_are_an_error_naming_the_variable(private_redis: Private) -> None:
    url = private_redis[0].replace("redis://", "redis://nobody:wrong@")

    [finding] = check_redis_servers([server(url)], timeout=2)

    assert finding.level is Level.ERROR
    assert "refused the credentials" in finding.message
    assert "wrong" not in finding.message.replace("WRONGPASS", "")
    assert "check the user and password in DCORE_REDIS_URL" in finding.message


# -- which servers -----------------------------------------------------------------------
def test_services_and_the_broker_on_one_server_are_checked_once_naming_every_role(
    private_redis: Private,
) -> None:
    url = private_redis[0]
    settings = DcoreSettings(dispatcher="celery", job_store="redis", event_bus="redis",
                             locks="redis", redis_url=url,
                             celery_broker_url=url.replace("/0", "/1"))  # fmt: skip

    servers, unparsed = redis_servers(settings, [settings.celery_broker_url or ""])

    assert unparsed == []
    [only] = servers
    assert only.roles == ["job store", "event bus/DLQ", "locks", "Celery broker"]
    assert only.variables == ["DCORE_REDIS_URL", "DCORE_CELERY_BROKER_URL"]


def test_a_url_that_cannot_be_parsed_is_one_error_for_all_its_roles() -> None:
    settings = DcoreSettings(job_store="redis", event_bus="redis",
                             redis_url="redis://:hunter2@h:port/0")  # fmt: skip

    servers, [finding] = redis_servers(settings, [])

    assert servers == []
    assert finding.level is Level.ERROR
    assert finding.message.startswith(
        "DCORE_REDIS_URL='redis://:***@h:port/0' (job store, event bus/DLQ) cannot be parsed"
    )


def test_run_checks_reports_each_server_check_for_a_celery_deployment_on_redis(
    private_redis: Private, clean_variables: pytest.MonkeyPatch
) -> None:
    settings = DcoreSettings(dispatcher="celery", job_store="redis", event_bus="redis",
                             locks="redis", redis_url=private_redis[0])  # fmt: skip

    findings = run_checks(settings, environ={})

    assert [(f.check, f.level) for f in findings] == [
        ("settings", Level.OK),
        ("dispatch", Level.OK),
        ("recovery", Level.OK),
        ("visibility", Level.OK),
        ("broker", Level.OK),
        ("redis", Level.OK),
        ("persistence", Level.ERROR),
        ("eviction", Level.OK),
    ]
    assert "(job store, event bus/DLQ, locks, Celery broker)" in findings[-2].message


# -- the broker URL ----------------------------------------------------------------------
def broker(url: str, **settings: Any) -> list[Finding]:
    findings, _ = check_broker(DcoreSettings(celery_broker_url=url, **settings), timeout=1)
    return findings


def test_a_broker_url_without_a_scheme_is_an_error() -> None:
    [finding] = broker("localhost:6379")

    assert finding.level is Level.ERROR
    assert "DCORE_CELERY_BROKER_URL='localhost:6379' has no scheme" in finding.message


def test_an_unknown_transport_is_an_error_with_kombus_suggestion() -> None:
    [finding] = broker("reddis://127.0.0.1:6379/0")

    assert finding.level is Level.ERROR
    assert "Did you mean redis?" in finding.message


def test_a_broker_url_kombu_cannot_parse_is_an_error_without_the_password() -> None:
    [finding] = broker("redis://:hunter2@127.0.0.1:port/0")

    assert finding.level is Level.ERROR
    assert "cannot be parsed" in finding.message
    assert "hunter2" not in finding.message


def test_a_memory_broker_is_an_error_it_lives_in_one_process() -> None:
    [finding] = broker("memory://")

    assert finding.level is Level.ERROR
    assert "lives in one process" in finding.message


def test_an_unreachable_non_redis_broker_is_an_error_without_the_password() -> None:
    [finding] = broker(f"amqp://guest:hunter2@127.0.0.1:{closed_port()}//")

    assert finding.level is Level.ERROR
    assert "is unreachable" in finding.message
    assert "guest:***@" in finding.message
    assert "hunter2" not in finding.message


def test_redis_brokers_are_left_to_the_redis_checks_in_redis_py_form() -> None:
    findings, urls = check_broker(
        DcoreSettings(celery_broker_url="redis://:pw@h:6379/1;redis+socket:///tmp/redis.sock"),
        timeout=1,
    )

    assert findings == []
    assert urls == ["redis://:pw@h:6379/1", "unix:///tmp/redis.sock"]


def test_a_broker_made_from_a_bad_redis_url_option_is_an_error() -> None:
    findings, urls = check_broker(
        DcoreSettings(redis_url="redis://127.0.0.1:6379/0?socket_timeout=abc"), timeout=1
    )

    [finding] = findings
    assert finding.level is Level.ERROR
    assert "socket_timeout='abc' is not valid: expected a number" in finding.message
    assert urls == []


# -- passwords ---------------------------------------------------------------------------
@given(
    password=st.text(alphabet=st.sampled_from("abcXYZ019/:@!$%-_.~"), min_size=1).map(
        lambda text: f"Sx{text}"
    )
)
def test_a_password_never_shows_however_the_url_is_written(password: str) -> None:
    for url in (
        f"redis://user:{password}@redis.example:6379/0",
        f"redis://:{password}@redis.example:port/0",
        f"redis://redis.example/0?db=1&password={password.replace('&', '')}",
    ):
        assert password.replace("&", "") not in hide_password(url)


def test_a_url_option_redis_py_cannot_take_is_an_error_naming_the_variable(
    private_redis: Private,
) -> None:
    [finding] = check_redis_servers([server(f"{private_redis[0]}?colour=blue")], timeout=2)

    assert finding.level is Level.ERROR
    assert "cannot connect (TypeError" in finding.message
    assert "'colour'" in finding.message
    assert "Fix: check the options in DCORE_REDIS_URL" in finding.message


def test_without_redis_py_only_settings_that_use_redis_report_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis.connection", None)  # import raises

    assert redis_servers(DcoreSettings(), []) == ([], [])
    _, [finding] = redis_servers(DcoreSettings(job_store="redis", locks="redis"), [])
    assert finding.level is Level.ERROR
    assert finding.message.startswith("the Redis backends (job store, locks) need redis-py")
