"""Redis commands time out instead of hanging on a partitioned server, while long blocking
reads still work: ``DCORE_REDIS_SOCKET_TIMEOUT`` (the URL's ``socket_timeout`` wins)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dcore import DcoreSettings, Environment
from dcore.backends._redis import settings_url, socket_timeout_of


@pytest.mark.parametrize(
    ("url", "timeout", "expected"),
    [
        ("redis://127.0.0.1:6379/0", 10.0, "redis://127.0.0.1:6379/0?socket_timeout=10"),
        (
            "redis://h:1/2?ssl_cert_reqs=none",
            0.5,
            "redis://h:1/2?ssl_cert_reqs=none&socket_timeout=0.5",
        ),
        ("redis://h:1/0?socket_timeout=3", 10.0, "redis://h:1/0?socket_timeout=3"),
        ("redis://h:1/0", None, "redis://h:1/0"),
    ],
)
def test_the_setting_is_added_to_the_url_unless_the_url_sets_it(
    url: str, timeout: float | None, expected: str
) -> None:
    settings = DcoreSettings(redis_url=url, redis_socket_timeout=timeout)

    assert settings_url(settings) == expected


def test_backends_built_from_settings_carry_the_reply_timeout(
    dcore_redis_url: str, tmp_path: Any
) -> None:
    settings = DcoreSettings(
        redis_url=dcore_redis_url,
        redis_socket_timeout=2.5,
        event_bus="redis",
        job_store="redis",
        locks="redis",
        storage_root=tmp_path,
    )
    with Environment(settings) as env:
        clients = [env.events.client, env.jobs.client, env.locks.client]  # type: ignore[attr-defined]

        assert [socket_timeout_of(c) for c in clients] == [2.5, 2.5, 2.5]


@pytest.mark.integration
def test_a_blocking_read_longer_than_the_reply_timeout_waits_and_then_delivers(
    dcore_redis_url: str, tmp_path: Any
) -> None:
    settings = DcoreSettings(
        redis_url=dcore_redis_url,
        redis_socket_timeout=0.4,
        event_bus="redis",
        key_prefix="timeouts",
        storage_root=tmp_path,
    )
    with Environment(settings) as env:
        bus = env.events
        bus.read_group("t", "g", "c", block=0.01)  # create the group
        started = time.monotonic()

        assert bus.read_group("t", "g", "c", block=0.7) == []  # 0.7 s > 0.4 s timeout
        assert time.monotonic() - started >= 0.69

        timer = threading.Timer(0.5, bus.append, args=("t", {"n": 1}))
        timer.start()
        got = bus.read_group("t", "g", "c", block=5.0)
        timer.join()
        assert [e.payload for e in got] == [{"n": 1}]
