"""Real services behind a chaos proxy: the objects the ``dcore_chaos_redis`` / ``dcore_chaos_s3``
fixtures yield, and where their proxies listen and point.

Everything a test sends to Redis or S3 through :class:`ChaosRedis` / :class:`ChaosS3`
crosses a :class:`~dcore_testing.chaos.Proxy`, so ``proxy.partition()``,
``proxy.latency(100)`` … act on it; the ``direct`` side bypasses the proxy, for setting
up and for checking what really reached the server.

Addresses. With the embedded server every proxy listens on ``127.0.0.1:0`` (the OS picks
a free port) and dials the service where the test found it. A real Toxiproxy
(``TOXIPROXY_URL``) may run elsewhere, e.g. in a container, so three variables adjust
the addresses:

``DCORE_CHAOS_UPSTREAM_HOST``
    the host the *proxy* dials for every upstream (default: the service's own host,
    e.g. ``127.0.0.1``). A Toxiproxy container reaches a service on the host as
    ``host.docker.internal``; a service of the same compose network by its name.
``DCORE_CHAOS_LISTEN_HOST``
    the address the proxy binds (default ``127.0.0.1``; ``0.0.0.0`` in a container).
    The embedded server refuses a non-loopback one unless started with ``allow_remote``.
``DCORE_CHAOS_PROXY_HOST``
    the host the *tests* dial to reach a proxy (default: the bound host; for a wildcard
    bind, the host of ``TOXIPROXY_URL``).

A real Toxiproxy gets an explicit listen port (a free local one, retried if the server
reports it taken), since a proxy on another machine cannot be asked for "any port" and
reached through a published one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .client import Proxy, ToxiproxyClient
from .errors import ServerError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from dcore.backends.s3 import S3Storage
    from dcore_testing.fixtures.s3 import S3Endpoint

__all__ = [
    "ChaosRedis",
    "ChaosS3",
    "create_service_proxy",
    "proxy_host",
    "upstream_host",
]

UPSTREAM_HOST_ENV = "DCORE_CHAOS_UPSTREAM_HOST"
LISTEN_HOST_ENV = "DCORE_CHAOS_LISTEN_HOST"
PROXY_HOST_ENV = "DCORE_CHAOS_PROXY_HOST"
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}
_BIND_ATTEMPTS = 5


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def upstream_host(service_host: str) -> str:
    """The host the proxy dials for a service the tests reach at ``service_host``."""
    return _env(UPSTREAM_HOST_ENV) or service_host


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_service_proxy(
    client: ToxiproxyClient, kind: str, service_host: str, service_port: int
) -> Proxy:
    """A new proxy named ``chaos-<kind>-<random>`` in front of ``service_host:port``.

    Embedded server: listens on ``127.0.0.1:0``. Real Toxiproxy: on an explicit free port
    (retried when the server answers ``address already in use``)."""
    name = f"chaos-{kind}-{uuid.uuid4().hex[:8]}"
    upstream = f"{upstream_host(service_host)}:{service_port}"
    listen_host = _env(LISTEN_HOST_ENV) or "127.0.0.1"
    if not _env("TOXIPROXY_URL"):  # the embedded server: let the OS pick the port
        return client.create_proxy(name, f"{listen_host}:0", upstream)
    error: ServerError | None = None
    for _ in range(_BIND_ATTEMPTS):
        try:
            return client.create_proxy(name, f"{listen_host}:{_free_port()}", upstream)
        except ServerError as exc:  # the port was taken on the server's side
            if "address already in use" not in exc.message:
                raise
            error = exc
    assert error is not None
    raise error


def proxy_host(proxy: Proxy) -> str:
    """The host tests dial to reach ``proxy`` (see the module docstring)."""
    explicit = _env(PROXY_HOST_ENV)
    if explicit:
        return explicit
    bound = proxy.listen.rpartition(":")[0]
    if bound in _WILDCARDS:
        server = urlsplit(proxy.client.url).hostname
        return server or "127.0.0.1"
    return proxy.listen_host


def _with_address(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (credentials and path kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def service_address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


class ChaosRedis:
    """A Redis server seen through a proxy.

    ``client`` and ``url`` go through ``proxy``; ``direct_url`` / ``direct`` do not.
    ``connect(**options)`` makes more clients through the proxy (closed with this
    object). Clients made here have bounded socket timeouts and no hidden retries, so
    a fault shows up as a redis ``ConnectionError`` / ``TimeoutError`` instead of a hang
    or a silent reconnect loop."""

    #: seconds; a partition must not hang a test for ever
    SOCKET_TIMEOUT = 5.0
    CONNECT_TIMEOUT = 2.0

    def __init__(self, proxy: Proxy, direct_url: str) -> None:
        self.proxy = proxy
        self.direct_url = direct_url
        host = proxy_host(proxy)
        self.url = _with_address(direct_url, host, proxy.listen_port)
        #: a key prefix unique to this fixture, for dcore backends (``DCORE_KEY_PREFIX``)
        self.prefix = f"dcore-chaos-{uuid.uuid4().hex[:8]}"
        self._clients: list[Any] = []
        self.direct = self._make(direct_url, {})
        self.client = self.connect()

    def _make(self, url: str, options: dict[str, Any]) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        settings: dict[str, Any] = {
            "socket_timeout": self.SOCKET_TIMEOUT,
            "socket_connect_timeout": self.CONNECT_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        settings.update(options)
        client = redis.Redis.from_url(url, **settings)
        self._clients.append(client)
        return client

    def connect(self, **options: Any) -> Any:
        """Another ``redis.Redis`` through the proxy; ``options`` override the defaults
        (e.g. ``socket_timeout=0.05``)."""
        return self._make(self.url, options)

    def close(self) -> None:
        for client in reversed(self._clients):
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def __repr__(self) -> str:
        return f"ChaosRedis(url={self.url!r}, direct_url={self.direct_url!r}, proxy={self.proxy!r})"


class ChaosS3:
    """An S3 endpoint seen through a proxy, with a fresh bucket.

    ``storage`` (an ``S3Storage``) and ``endpoint`` go through ``proxy``; ``direct`` is an
    ``S3Storage`` on the same bucket that bypasses it, for checking what the server
    really holds. ``make_storage(**options)`` builds more storages through the proxy
    (closed with this object), e.g. ``max_attempts=1`` or a small multipart threshold."""

    def __init__(self, proxy: Proxy, direct_endpoint: S3Endpoint, bucket: str) -> None:
        self.proxy = proxy
        self.direct_endpoint = direct_endpoint
        self.bucket = bucket
        self.endpoint = _with_address(direct_endpoint.url, proxy_host(proxy), proxy.listen_port)
        self._storages: list[S3Storage] = []
        self.direct = self._make(direct_endpoint.url, {})
        self.storage = self.make_storage()

    def _make(self, url: str, options: dict[str, Any]) -> S3Storage:
        from dcore.backends.s3 import S3Storage

        settings: dict[str, Any] = {
            "endpoint_url": url,
            "bucket": self.bucket,
            "region": self.direct_endpoint.region,
            "access_key": self.direct_endpoint.access_key,
            "secret_key": self.direct_endpoint.secret_key,
            "connect_timeout": 2.0,
            "read_timeout": 10.0,
        }
        settings.update(options)
        storage = S3Storage(**settings)
        self._storages.append(storage)
        return storage

    def make_storage(self, **options: Any) -> S3Storage:
        """Another ``S3Storage`` on the bucket, through the proxy."""
        return self._make(self.endpoint, options)

    @property
    def client(self) -> S3Client:
        """The boto3 client of ``storage`` (through the proxy)."""
        return self.storage.client

    def multipart_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads still open in the bucket (checked directly)."""
        found: list[dict[str, Any]] = []
        client = self.direct.client
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket):
            found.extend(dict(upload) for upload in page.get("Uploads", []))
        return found

    def close(self) -> None:
        for storage in reversed(self._storages):
            with contextlib.suppress(Exception):
                storage.close()
        self._storages.clear()

    def __repr__(self) -> str:
        return f"ChaosS3(endpoint={self.endpoint!r}, bucket={self.bucket!r}, proxy={self.proxy!r})"
