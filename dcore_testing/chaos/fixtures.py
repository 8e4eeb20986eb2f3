"""pytest fixtures for chaos tests; imports nothing heavy until a fixture runs.

``dcore_toxiproxy`` yields a :class:`ToxiproxyClient`. With ``TOXIPROXY_URL`` set it
talks to that (real) server; otherwise one embedded server is started lazily
for the whole session and stopped when pytest finishes. After each test the
server is ``reset()`` (proxies enabled, toxics removed) and the proxies the test
created are deleted, so names and ports never leak into the next test; proxies
that existed before the test (e.g. from a docker-compose config) are kept.

``dcore_chaos_redis`` puts a proxy in front of the ``dcore_redis_url`` server and yields a
:class:`~dcore_testing.chaos.services.ChaosRedis` (``.client``, ``.url`` through the
proxy, ``.proxy``, ``.direct_url``); the database is flushed before and after.
``dcore_chaos_s3`` does the same for the ``dcore_s3_endpoint`` server and a fresh
``dcore_s3_bucket``:
a :class:`~dcore_testing.chaos.services.ChaosS3` (``.endpoint``, ``.storage`` through
the proxy, ``.direct`` beside it). Against a real Toxiproxy, set
``DCORE_CHAOS_UPSTREAM_HOST`` when the proxy reaches the services under another host
name than the tests do (see :mod:`.services`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dcore_testing.fixtures.s3 import S3Endpoint

    from .client import ToxiproxyClient
    from .server import ToxiproxyServer
    from .services import ChaosRedis, ChaosS3

_embedded: ToxiproxyServer | None = None


def _server_url(config: pytest.Config) -> str:
    url = os.environ.get("TOXIPROXY_URL")
    if url:
        return url
    global _embedded
    if _embedded is None:
        from .server import ToxiproxyServer

        server = ToxiproxyServer().start()
        _embedded = server

        def stop() -> None:
            global _embedded
            server.stop()
            _embedded = None

        config.add_cleanup(stop)
    return _embedded.url


@pytest.fixture
def dcore_toxiproxy(request: pytest.FixtureRequest) -> Iterator[ToxiproxyClient]:
    """A client for the real (``TOXIPROXY_URL``) or embedded Toxiproxy, clean per test."""
    from .client import ToxiproxyClient
    from .errors import NotFoundError

    client = ToxiproxyClient(_server_url(request.config))
    before = set(client.proxies())
    try:
        yield client
    finally:
        try:
            client.reset()
            for name in set(client.proxies()) - before:
                with contextlib.suppress(NotFoundError):
                    client.get_proxy(name).delete()
        finally:
            client.close()


@pytest.fixture
def dcore_chaos_redis(
    dcore_toxiproxy: ToxiproxyClient, dcore_redis_url: str
) -> Iterator[ChaosRedis]:
    """The test Redis behind a fresh proxy; flushed before and after the test."""
    from .services import ChaosRedis, create_service_proxy, service_address

    host, port = service_address(dcore_redis_url, 6379)
    proxy = create_service_proxy(dcore_toxiproxy, "redis", host, port)
    chaos = ChaosRedis(proxy, dcore_redis_url)
    try:
        chaos.direct.flushdb()
        yield chaos
    finally:
        try:
            chaos.direct.flushdb()
        finally:
            chaos.close()


@pytest.fixture
def dcore_chaos_s3(
    dcore_toxiproxy: ToxiproxyClient, dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> Iterator[ChaosS3]:
    """The test S3 endpoint behind a fresh proxy, on this test's fresh bucket."""
    from .services import ChaosS3, create_service_proxy, service_address

    default_port = 443 if dcore_s3_endpoint.url.startswith("https:") else 80
    host, port = service_address(dcore_s3_endpoint.url, default_port)
    proxy = create_service_proxy(dcore_toxiproxy, "s3", host, port)
    chaos = ChaosS3(proxy, dcore_s3_endpoint, dcore_s3_bucket)
    try:
        yield chaos
    finally:
        chaos.close()
