"""What the Redis backends share: the client, key names, and error mapping.

Every Redis backend takes either a ready ``client`` (tests inject fakeredis, an app may
share its own pool) or a URL, and names its keys ``<prefix>:<kind>:<name>`` so that
several deployments can share one database. A Redis that cannot be reached surfaces as
:class:`~dcore.errors.ServiceUnavailableError` naming the URL (never its password), not
as a redis-py exception the caller would have to know about.

redis-py is imported lazily (``dcore._builtins`` imports every backend module at
``import dcore``), so only a Redis backend that is actually built needs the extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

from dcore._core.redact import redact_url
from dcore.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from dcore._core.settings import DcoreSettings

    # redis-py annotates every command as returning ``Awaitable[Any] | Any`` (one set of
    # signatures for its sync and async clients), which strict typing cannot use; the
    # sync client is typed loosely instead of casting every reply.
    RedisClient = Any
    RedisPipeline = Any

__all__ = [
    "DEFAULT_URL",
    "RedisBackend",
    "connect",
    "redact_url",
    "require_redis",
    "same_server",
    "settings_url",
    "socket_timeout_of",
    "text",
    "translate_errors",
]

DEFAULT_URL = "redis://127.0.0.1:6379/0"

P = ParamSpec("P")
R = TypeVar("R")
B = TypeVar("B", bound="RedisBackend")


def require_redis() -> None:
    """Fail with the fix when redis-py is not installed."""
    try:
        import redis  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the Redis backends need redis-py: pip install 'distributed-core[redis]'",
            name="redis",
        ) from None


def connect(url: str) -> RedisClient:
    """A client for ``url``. Connecting is lazy; a short connect timeout makes an
    unreachable server fail fast instead of hanging a request."""
    require_redis()
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=5.0, health_check_interval=30)


def settings_url(settings: DcoreSettings) -> str:
    """``DCORE_REDIS_URL`` with ``DCORE_REDIS_SOCKET_TIMEOUT`` added to its query, unless
    the URL already sets ``socket_timeout`` (the URL wins)."""
    url = settings.redis_url
    timeout = settings.redis_socket_timeout
    parts = urlsplit(url)
    names = {item.partition("=")[0] for item in parts.query.split("&") if item}
    if timeout is None or "socket_timeout" in names or parts.scheme == "unix":
        return url
    query = "&".join(filter(None, [parts.query, f"socket_timeout={timeout:g}"]))
    return urlunsplit(parts._replace(query=query))


def socket_timeout_of(client: Any) -> float | None:
    """The reply timeout a client was built with (None: it waits for ever)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout else None


def text(value: bytes | str) -> str:
    """Decode a reply; clients may or may not be built with ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else value


def _describe(client: Any) -> str:
    """Where an injected client points, for error messages (no credentials)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    host, port, db = kwargs.get("host"), kwargs.get("port"), kwargs.get("db", 0)
    if host is None:
        return f"{type(client).__name__} client"
    return f"redis://{host}:{port}/{db}"


class RedisBackend:
    """Client ownership (close only what we opened), key naming, the URL for errors."""

    def __init__(
        self, client: RedisClient | None = None, *, url: str | None = None, prefix: str = "dcore"
    ) -> None:
        require_redis()
        if client is not None and url is not None:
            raise TypeError("pass either client= or url=, not both")
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f"key prefix must be a non-empty string, got {prefix!r}")
        self._owns_client = client is None
        self.url = redact_url(url or DEFAULT_URL) if client is None else _describe(client)
        self.client: RedisClient = client if client is not None else connect(url or DEFAULT_URL)
        self.prefix = prefix
        # where a client dcore built points; an injected one is only known by identity
        self._server = _address(self.client) if client is None else None

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def close(self) -> None:
        """Close the connection pool if this backend created it (idempotent)."""
        if self._owns_client:
            self._owns_client = False
            self.client.close()

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Turn redis-py's connection/timeout errors into ServiceUnavailableError."""
        try:
            yield
        except _unreachable_errors() as exc:
            raise self.unreachable(exc) from exc

    def unreachable(self, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Redis at {self.url} is unreachable ({exc}); check DCORE_REDIS_URL and "
            "that the server is running"
        )


@functools.cache
def _unreachable_errors() -> tuple[type[Exception], ...]:
    """redis-py's errors for a server that cannot be reached (imported on first use)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


def _address(client: Any) -> tuple[object, ...]:
    kwargs = client.connection_pool.connection_kwargs
    return (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db", 0))


def same_server(a: RedisBackend, b: RedisBackend) -> bool:
    """Whether two backends use one Redis server and database: they share a client, or
    both built theirs from URLs naming the same host and port (or socket) and db. An
    injected client is only known by identity (two fakeredis clients may look alike)."""
    return a.client is b.client or (a._server is not None and a._server == b._server)


def translate_errors(method: Callable[Concatenate[B, P], R]) -> Callable[Concatenate[B, P], R]:
    """Method decorator form of :meth:`RedisBackend.translating`."""

    @functools.wraps(method)
    def wrapper(self: B, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:  # not `with self.translating()`: this wraps every call on the hot path
            return method(self, *args, **kwargs)
        except _unreachable_errors() as exc:
            raise self.unreachable(exc) from exc

    return wrapper
