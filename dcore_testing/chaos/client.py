"""Typed synchronous client for the Toxiproxy HTTP API, on httpx.

Works against the real Toxiproxy (``TOXIPROXY_URL``) and the embedded server.
A :class:`ToxiproxyClient` is bound to exactly one server URL (unlike
toxiproxy-python's class-level host/port globals), so two servers in one test
never share state. Every fault is also a context manager that undoes itself on
exit, error or not::

    proxy = client.create_proxy("redis", "127.0.0.1:0", "127.0.0.1:6379")
    with proxy.latency(100, jitter=10):
        ...
    with proxy.partition():
        ...

Errors are :mod:`.errors` exceptions carrying the server's status and message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from .errors import BadRequestError, NotFoundError, ToxiproxyConnectionError, error_for_status

_WILDCARDS = {"", "0.0.0.0", "::"}


@dataclass(frozen=True)
class Toxic:
    """A toxic as the server reported it."""

    proxy: str
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, int]

    @classmethod
    def from_json(cls, proxy: str, data: Mapping[str, Any]) -> Toxic:
        return cls(
            proxy,
            data["name"],
            data["type"],
            data["stream"],
            float(data.get("toxicity", 1.0)),
            dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class ToxicConfig:
    """A toxic to create via :meth:`ToxiproxyClient.populate` (embedded server only)."""

    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    name: str | None = None
    attributes: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }
        if self.name is not None:
            body["name"] = self.name
        return body


@dataclass(frozen=True)
class ProxyConfig:
    """One entry of :meth:`ToxiproxyClient.populate`."""

    name: str
    listen: str
    upstream: str
    enabled: bool = True
    toxics: tuple[ToxicConfig, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
        }
        if self.toxics:
            body["toxics"] = [t.to_json() for t in self.toxics]
        return body


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class ToxiproxyClient:
    """A client for one Toxiproxy server; ``url`` defaults to ``$TOXIPROXY_URL``."""

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 5.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = url or os.environ.get("TOXIPROXY_URL")
        if not url:
            raise ValueError(
                "ToxiproxyClient needs a server URL: pass url='http://127.0.0.1:8474' "
                "or set TOXIPROXY_URL (or use the embedded ToxiproxyServer)"
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ToxiproxyClient({self.url!r})"

    # transport ----------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one API request; returns decoded JSON (``None`` for 204) or raises."""
        what = f"{method} {path}"
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ToxiproxyConnectionError(f"cannot reach {self.url}: {exc}", None, what) from exc
        if response.status_code >= 400:
            message = response.text.strip()
            try:
                decoded = response.json()
                if isinstance(decoded, dict) and "error" in decoded:
                    message = str(decoded["error"])
            except ValueError:
                pass
            raise error_for_status(response.status_code, message, what)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # API --------------------------------------------------------------------
    def version(self) -> str:
        """The server version string: ``"2.12.0"`` for a release build, ``"git"`` for a dev one."""
        return str(self.request("GET", "/version")["version"])

    def proxies(self) -> dict[str, Proxy]:
        data: dict[str, Any] = self.request("GET", "/proxies")
        return {name: Proxy(self, value) for name, value in data.items()}

    def get_proxy(self, name: str) -> Proxy:
        return Proxy(self, self.request("GET", f"/proxies/{name}"))

    def create_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> Proxy:
        """Create a proxy; ``listen="127.0.0.1:0"`` picks a free port (see ``listen_port``)."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return Proxy(self, self.request("POST", "/proxies", body))

    def populate(self, proxies: Iterable[ProxyConfig | Mapping[str, Any]]) -> list[Proxy]:
        """Create or replace proxies in one call (``POST /populate``)."""
        body = [p.to_json() if isinstance(p, ProxyConfig) else dict(p) for p in proxies]
        data = self.request("POST", "/populate", body)
        return [Proxy(self, value) for value in data.get("proxies") or []]

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.request("POST", "/reset")


class Proxy:
    """A proxy on the server; attributes are a snapshot, methods act at once."""

    def __init__(self, client: ToxiproxyClient, data: Mapping[str, Any]) -> None:
        self.client = client
        self._load(data)

    def _load(self, data: Mapping[str, Any]) -> None:
        self.name: str = data["name"]
        self.listen: str = data["listen"]
        self.upstream: str = data["upstream"]
        self.enabled: bool = data["enabled"]
        self._toxics = [Toxic.from_json(self.name, t) for t in data.get("toxics") or []]

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Proxy {self.name} {self.listen} -> {self.upstream} {state}>"

    @property
    def _path(self) -> str:
        return f"/proxies/{self.name}"

    @property
    def listen_host(self) -> str:
        """Host to connect to; a wildcard bind (``[::]``, ``0.0.0.0``) maps to 127.0.0.1."""
        host = _split(self.listen)[0]
        return "127.0.0.1" if host in _WILDCARDS else host

    @property
    def listen_port(self) -> int:
        return _split(self.listen)[1]

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.listen_port

    def refresh(self) -> Proxy:
        self._load(self.client.request("GET", self._path))
        return self

    def update(self, *, listen: str | None = None, upstream: str | None = None) -> Proxy:
        """Change addresses (restarts the listener, dropping connections)."""
        body = {k: v for k, v in (("listen", listen), ("upstream", upstream)) if v is not None}
        self._load(self.client.request("PATCH", self._path, body))
        return self

    def enable(self) -> None:
        self._load(self.client.request("PATCH", self._path, {"enabled": True}))

    def disable(self) -> None:
        """Close the listener and every connection: a full partition."""
        self._load(self.client.request("PATCH", self._path, {"enabled": False}))

    def delete(self) -> None:
        self.client.request("DELETE", self._path)

    # toxics -----------------------------------------------------------------
    def toxics(self) -> list[Toxic]:
        return [
            Toxic.from_json(self.name, t)
            for t in self.client.request("GET", f"{self._path}/toxics")
        ]

    def get_toxic(self, name: str) -> Toxic:
        return Toxic.from_json(self.name, self.client.request("GET", f"{self._path}/toxics/{name}"))

    def add_toxic(
        self,
        type: str,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: int,
    ) -> Toxic:
        """Add a toxic; it applies at once to open connections too."""
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        if name is not None:
            body["name"] = name
        return Toxic.from_json(self.name, self.client.request("POST", f"{self._path}/toxics", body))

    def update_toxic(self, name: str, toxicity: float | None = None, **attributes: int) -> Toxic:
        """Merge new attribute values into a toxic (others keep their values)."""
        body: dict[str, Any] = {"attributes": attributes}
        if toxicity is not None:
            body["toxicity"] = toxicity
        path = f"{self._path}/toxics/{name}"
        return Toxic.from_json(self.name, self.client.request("PATCH", path, body))

    def remove_toxic(self, name: str) -> None:
        self.client.request("DELETE", f"{self._path}/toxics/{name}")

    def add_one_way_partition(self, stream: str, name: str | None = None) -> Toxic:
        """Swallow one direction, connection kept open.

        Uses the embedded server's ``blackhole``; on the real Toxiproxy (no such
        type) it falls back to ``timeout`` 0, whose removal closes connections.
        """
        try:
            return self.add_toxic("blackhole", stream=stream, name=name)
        except BadRequestError as exc:
            if exc.message != "invalid toxic type":
                raise
            return self.add_toxic("timeout", stream=stream, name=name, timeout=0)

    @contextmanager
    def _toxic(self, toxic: Toxic) -> Iterator[Toxic]:
        try:
            yield toxic
        finally:
            with contextlib.suppress(NotFoundError):  # gone already, e.g. reset() in the block
                self.remove_toxic(toxic.name)

    def toxic(
        self,
        type: str,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: int,
    ) -> AbstractContextManager[Toxic]:
        """Context manager for any toxic type: added on entry, removed on exit."""
        return self._toxic(self.add_toxic(type, stream, toxicity, name, **attributes))

    def latency(
        self, ms: int, jitter: int = 0, stream: str = "downstream", toxicity: float = 1.0
    ) -> AbstractContextManager[Toxic]:
        """Delay each chunk by ``ms`` ± ``jitter`` milliseconds in one direction."""
        return self.toxic("latency", stream, toxicity, latency=ms, jitter=jitter)

    def bandwidth(
        self, kbps: int, stream: str = "downstream", toxicity: float = 1.0
    ) -> AbstractContextManager[Toxic]:
        """Throttle to ``kbps`` kilobytes (1000 bytes) per second: Toxiproxy's ``rate``."""
        return self.toxic("bandwidth", stream, toxicity, rate=kbps)

    def timeout(
        self, ms: int, stream: str = "downstream", toxicity: float = 1.0
    ) -> AbstractContextManager[Toxic]:
        """Drop data, then close after ``ms`` (0: hold until removed; removal closes)."""
        return self.toxic("timeout", stream, toxicity, timeout=ms)

    def reset_peer(
        self, timeout_ms: int = 0, stream: str = "downstream", toxicity: float = 1.0
    ) -> AbstractContextManager[Toxic]:
        """On the first data, wait ``timeout_ms`` then reset the connection (RST)."""
        return self.toxic("reset_peer", stream, toxicity, timeout=timeout_ms)

    def slicer(
        self,
        average_size: int,
        size_variation: int = 0,
        delay_us: int = 0,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> AbstractContextManager[Toxic]:
        """Split data into ~``average_size``-byte writes ``delay_us`` microseconds apart."""
        return self.toxic(
            "slicer",
            stream,
            toxicity,
            average_size=average_size,
            size_variation=size_variation,
            delay=delay_us,
        )

    def limit_data(
        self, bytes: int, stream: str = "downstream", toxicity: float = 1.0
    ) -> AbstractContextManager[Toxic]:
        """Close the connection once ``bytes`` bytes went through in ``stream``."""
        return self.toxic("limit_data", stream, toxicity, bytes=bytes)

    def slow_close(
        self, ms: int, stream: str = "downstream", toxicity: float = 1.0
    ) -> AbstractContextManager[Toxic]:
        """Delay the close by ``ms`` after the other side closed."""
        return self.toxic("slow_close", stream, toxicity, delay=ms)

    @contextmanager
    def one_way_partition(self, stream: str) -> Iterator[Toxic]:
        """Swallow ``stream`` (client→server is ``upstream``) while connections stay open."""
        with self._toxic(self.add_one_way_partition(stream)) as toxic:
            yield toxic

    @contextmanager
    def partition(self) -> Iterator[Proxy]:
        """Disable the proxy (connections dropped, new ones refused), re-enable on exit."""
        self.disable()
        try:
            yield self
        finally:
            self.enable()
