# mypy: disable-error-code="abstract,call-arg,arg-type,no-untyped-call,operator"
# (Dispatch("celery") makes a StageRef; kombu is untyped)
"""Without DCORE_CELERY_BROKER_URL the broker is DCORE_REDIS_URL, whose redis-py query
options (``?socket_timeout=2``, the form the README documents) kombu cannot take: they
become kombu transport options or are dropped, and never reach kombu's URL parser."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.transport.redis import Channel

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    PipelineContext,
    core_function,
    use_environment,
)
from dcore.celery import (
    KOMBU_TRANSPORT_EQUIVALENTS,
    TASK_NAME,
    broker_from_redis_url,
    celery_config,
    make_celery_app,
)
from dcore.errors import ConfigurationError


class BrokerContext(PipelineContext):
    n: int = 0


@core_function
def broker_core(ctx: BrokerContext) -> int:
    return ctx.n


@pytest.mark.parametrize(
    ("url", "broker", "options"),
    [
        (
            "redis://127.0.0.1:6379/0?socket_timeout=2",
            "redis://127.0.0.1:6379/0",
            {"socket_timeout": 2.0},
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", {}),
        (
            "redis://h:1/0?socket_connect_timeout=0.5&socket_keepalive=yes&retry_on_timeout=no"
            "&max_connections=7&health_check_interval=5&client_name=worker",
            "redis://h:1/0",
            {
                "socket_connect_timeout": 0.5,
                "socket_keepalive": True,
                "retry_on_timeout": False,
                "max_connections": 7,
                "health_check_interval": 5,
                "client_name": "worker",
            },
        ),
        # the query's db wins over the path in redis-py: kombu reads it from the path
        ("redis://h:1/3?db=5", "redis://h:1/5", {}),
        # username=/password= go into the user info, which wins when both are given
        ("redis://h:1/0?password=p%40ss+w&username=me", "redis://me:p%40ss%20w@h:1/0", {}),
        ("redis://:s%40fe@h:1/0?password=other", "redis://:s%40fe@h:1/0", {}),
        # kombu reads ssl_* itself; options redis-py would ignore when blank are ignored
        (
            "rediss://h:1/0?ssl_cert_reqs=required&socket_timeout=",
            "rediss://h:1/0?ssl_cert_reqs=required",
            {},
        ),
        # no kombu equivalent: dropped (and logged)
        (
            "redis://h:1/0?protocol=3&timeout=4&socket_timeout=1",
            "redis://h:1/0",
            {"socket_timeout": 1.0},
        ),
    ],
)
def test_redis_url_options_become_kombu_transport_options(
    url: str, broker: str, options: dict[str, Any]
) -> None:
    assert broker_from_redis_url(url) == (broker, options)


def test_every_translated_option_is_a_kombu_redis_transport_option() -> None:
    assert set(KOMBU_TRANSPORT_EQUIVALENTS) <= set(Channel.from_transport_options)


def test_options_without_a_kombu_equivalent_are_dropped_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dcore.celery"):
        broker_from_redis_url("redis://h:1/0?protocol=3&retry_on_error=x")
    [record] = caplog.records
    assert "DCORE_REDIS_URL option(s) protocol, retry_on_error" in record.getMessage()
    assert "DCORE_CELERY_BROKER_URL" in record.getMessage()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "socket_timeout=abc",
            "DCORE_REDIS_URL option socket_timeout='abc' is not valid: expected a number",
        ),
        (
            "max_connections=lots",
            "DCORE_REDIS_URL option max_connections='lots' is not valid: expected an integer",
        ),
        ("db=first", "DCORE_REDIS_URL option db='first' is not valid: expected an integer"),
    ],
)
def test_a_bad_option_value_names_the_variable_and_the_accepted_form(
    query: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        broker_from_redis_url(f"redis://h:1/0?{query}")
    assert str(info.value) == message


def test_celery_config_falls_back_to_the_translated_redis_url() -> None:
    config = celery_config(DcoreSettings(redis_url="redis://h:1/2?socket_timeout=2.5"))
    assert config["broker_url"] == "redis://h:1/2"
    assert config["broker_transport_options"]["socket_timeout"] == 2.5
    assert config["broker_transport_options"]["visibility_timeout"] == 300.0  # dcore's own


def test_an_explicit_broker_url_is_used_as_given() -> None:
    explicit = "redis://h:1/4?visibility_timeout=9"  # kombu form: the operator's business
    config = celery_config(
        DcoreSettings(redis_url="redis://h:1/2?socket_timeout=2", celery_broker_url=explicit)
    )
    assert config["broker_url"] == explicit
    assert "socket_timeout" not in config["broker_transport_options"]


_OPTION_VALUES = {
    "socket_timeout": st.floats(0.01, 100).map(str),
    "socket_connect_timeout": st.floats(0.01, 100).map(str),
    "socket_keepalive": st.sampled_from(["true", "false", "yes", "no", "0", "1"]),
    "retry_on_timeout": st.sampled_from(["true", "false", "yes", "no", "0", "1"]),
    "max_connections": st.integers(1, 1000).map(str),
    "health_check_interval": st.integers(0, 100).map(str),
    "client_name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    "db": st.integers(0, 15).map(str),
    "protocol": st.sampled_from(["2", "3"]),
}


@given(
    options=st.dictionaries(st.sampled_from(sorted(_OPTION_VALUES)), st.just("")).flatmap(
        lambda keys: st.fixed_dictionaries({k: _OPTION_VALUES[k] for k in keys})
    )
)
def test_no_redis_py_option_ever_reaches_kombus_url_parser(options: dict[str, str]) -> None:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    config = celery_config(DcoreSettings(redis_url=f"redis://127.0.0.1:1/0?{query}"))
    # building the connection parses the URL; kombu fails there on any leaked option
    connection = Connection(
        config["broker_url"], transport_options=config["broker_transport_options"]
    )
    assert "?" not in config["broker_url"]
    assert connection.virtual_host == options.get("db", "0")
    for name in set(options) & set(KOMBU_TRANSPORT_EQUIVALENTS):
        assert name in connection.transport_options


def test_the_untranslated_url_is_what_kombu_refuses() -> None:
    """Why the translation exists: kombu's own parser fails on the documented form."""
    with pytest.raises(TypeError, match="socket_timeout"):
        Connection("redis://127.0.0.1:1/0?socket_timeout=2")


@pytest.fixture
def queue(dcore_redis_client: Any) -> str:
    return f"broker-url-{uuid.uuid4().hex[:8]}"


def test_a_task_sent_with_socket_timeout_in_the_redis_url_reaches_its_queue(
    dcore_redis_url: str, dcore_redis_client: Any, queue: str
) -> None:
    settings = DcoreSettings(redis_url=f"{dcore_redis_url}?socket_timeout=2", celery_queue=queue)
    app = make_celery_app(settings)
    try:
        app.send_task(TASK_NAME, args=['{"probe": 1}'], queue=f"{queue}.0", task_id="probe-1")
        with app.connection_for_write() as connection:
            pool = connection.default_channel.client.connection_pool
            assert pool.connection_kwargs["socket_timeout"] == 2.0  # kombu applied it
    finally:
        app.close()
    [raw] = dcore_redis_client.lrange(f"{queue}.0", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == TASK_NAME
    assert message["headers"]["id"] == "probe-1"


def test_celery_dispatch_works_with_options_in_the_redis_url(
    dcore_redis_url: str, dcore_redis_client: Any, queue: str, tmp_path: Any
) -> None:
    url = f"{dcore_redis_url}?socket_timeout=2&socket_connect_timeout=1"
    settings = DcoreSettings(redis_url=url, celery_queue=queue, storage_root=tmp_path)
    with Environment(settings) as env, use_environment(env):
        env.memory_services_shared = True  # the job is only sent: no worker records it
        ctx = BrokerContext(n=7)
        handle = ctx.create_pipeline(broker_core).chain(Dispatch("celery")).run()
    assert handle.status == "scheduled"
    [raw] = dcore_redis_client.lrange(f"{queue}.0", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["id"] == ctx.job_id
