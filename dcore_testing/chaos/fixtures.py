"""pytest fixtures for chaos tests; imports nothing heavy until a fixture runs.

``toxiproxy`` yields a :class:`ToxiproxyClient`. With ``TOXIPROXY_URL`` set it
talks to that (real) server; otherwise one embedded server is started lazily
for the whole session and stopped when pytest finishes. After each test the
server is ``reset()`` (proxies enabled, toxics removed) and the proxies the test
created are deleted, so names and ports never leak into the next test; proxies
that existed before the test (e.g. from a docker-compose config) are kept.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .client import ToxiproxyClient
    from .server import ToxiproxyServer

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
def toxiproxy(request: pytest.FixtureRequest) -> Iterator[ToxiproxyClient]:
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
