"""Fixtures shared across test directories.

``private_redis``: a Redis server private to the test session, whose configuration a
test may change (``CONFIG SET appendonly``/``maxmemory-policy`` changes a whole server,
so these tests never use the session's ``redis_url``, which may be a shared server); its
configuration is put back after each test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

import dcore._core.settings as settings_module
from dcore_testing.fixtures.redis import start_redis_server
from dcore_testing.fixtures.require import unavailable

#: the private server's configuration as started, put back after each test
DEFAULTS = {"appendonly": "no", "save": "", "maxmemory": "0", "maxmemory-policy": "noeviction"}


@pytest.fixture(scope="session")
def private_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        unavailable("no redis-server on PATH to start a private server")
    proc, url = start_redis_server(tmp_path_factory.mktemp("doctor-redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def private_redis(private_redis_server: str) -> Iterator[tuple[str, Any]]:
    """The private server's URL and an admin client on it; its configuration, users and
    data are restored after the test."""
    import redis

    admin = redis.Redis.from_url(private_redis_server, decode_responses=True)
    try:
        yield private_redis_server, admin
    finally:
        for name, value in DEFAULTS.items():
            admin.config_set(name, value)
        for user in admin.acl_users():
            if user != "default":
                admin.acl_deluser(user)
        admin.flushall()
        admin.close()


@pytest.fixture
def clean_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DCORE_* variables, and no memory of unknown ones already warned about."""
    for key in list(os.environ):
        if key.upper().startswith("DCORE_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(settings_module, "_warned", set())
    return monkeypatch
