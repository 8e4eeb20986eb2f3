"""A TCP proxy: listener, upstream dialing, and the proxy's toxics applied live.

``start`` binds the listen address (recording the *bound* address, as the real
server reports it); ``stop`` closes the listener and every open connection, which
is what ``enabled: false`` means (a partition). Toxic add, update and remove reach
every open connection as well as new ones.

Differences from Toxiproxy v2.12.0 (see DIFFERENCES.md): an empty ``listen`` binds
127.0.0.1 on a random port (reported as ``127.0.0.1:N``) instead of every
interface; and unless the proxy allows remote addresses (the server's
``allow_remote``), it binds only loopback addresses and dials an upstream only when
every address it resolves to is a loopback one (see :mod:`.addresses`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from .addresses import (
    ALLOW_REMOTE_FIX,
    ProxyError,
    format_address,
    listen_problem,
    lookup,
    remote_addresses,
    resolve,
    split_host_port,
)
from .link import Connection
from .sockets import ReadBuffers, Side
from .toxics import ToxicSpec

log = logging.getLogger(__name__)

__all__ = ["Proxy", "ProxyError"]


class Proxy:
    """One named proxy; all methods run on the server's event loop."""

    def __init__(
        self, name: str, listen: str, upstream: str, *, allow_remote: bool = False
    ) -> None:
        self.name = name
        self.allow_remote = allow_remote
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: list[ToxicSpec] = []
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._serial = 0
        self._buffers = ReadBuffers()

    # lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Bind and serve; a no-op if running. Raises :class:`ProxyError` like Go's listen."""
        if self.enabled:
            return
        try:
            host, port = resolve(self.listen)
        except ProxyError as exc:
            raise ProxyError(f"listen tcp: {exc}") from None
        problem = None if self.allow_remote else listen_problem(self.listen)
        if problem:  # the API checks first; this catches a name that resolved elsewhere since
            raise ProxyError(f"proxy {self.name!r}: {problem}")
        bind_host = host or "127.0.0.1"
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: Side(self._buffers, self._on_client),
                bind_host,
                port,
                reuse_address=True,
                backlog=512,
            )
        except OSError as exc:
            reason = {
                errno.EADDRINUSE: "address already in use",
                errno.EADDRNOTAVAIL: "cannot assign requested address",
                errno.EACCES: "permission denied",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise ProxyError(
                f"listen tcp {format_address(bind_host, port)}: bind: {reason}"
            ) from None
        bound = server.sockets[0].getsockname()
        self.listen = format_address(str(bound[0]), int(bound[1]))
        self._server = server
        self.enabled = True

    async def stop(self) -> None:
        """Close the listener and every connection (clients see EOF, new ones ECONNREFUSED)."""
        self._generation += 1
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.close()
        self.enabled = False
        await asyncio.sleep(0)

    def _on_client(self, client: Side) -> None:
        asyncio.get_running_loop().create_task(self._accept(client))

    async def _accept(self, client: Side) -> None:
        generation = self._generation
        try:
            upstream = await self._dial()
        except asyncio.CancelledError:  # shutdown while dialing
            _close(client)
            return
        if upstream is None:
            _close(client)  # the real server accepts, then closes: the client sees EOF
            return
        if generation != self._generation:
            _close(client)
            _close(upstream)
            return
        self._serial += 1
        conn = Connection(self._serial, client, upstream, self.connections.discard)
        self.connections.add(conn)
        conn.start(list(self.toxics))

    async def _dial(self) -> Side | None:
        """Connect to the upstream, or ``None`` when it cannot (or may not) be reached."""
        try:
            host, port_text = split_host_port(self.upstream)
            port = int(port_text)
        except (ValueError, ProxyError):
            return None
        if self.allow_remote:
            targets = [host]
        else:
            targets = await lookup(host)
            remote = remote_addresses(targets)
            if remote:
                log.warning(
                    "proxy %r: not dialing upstream %r: it resolves to %s, not loopback; %s",
                    self.name,
                    self.upstream,
                    ", ".join(remote),
                    ALLOW_REMOTE_FIX,
                )
                return None
        for target in targets:
            try:
                return await self._connect(target, port)
            except (OSError, ValueError):
                continue
        return None

    async def _connect(self, host: str, port: int) -> Side:
        loop = asyncio.get_running_loop()
        _transport, side = await loop.create_connection(lambda: Side(self._buffers), host, port)
        return side

    # toxics ---------------------------------------------------------------
    def find_toxic(self, name: str) -> ToxicSpec | None:
        return next((t for t in self.toxics if t.name == name), None)

    def add_toxic(self, spec: ToxicSpec) -> None:
        self.toxics.append(spec)
        for conn in list(self.connections):
            if not conn.closed:
                conn.links[spec.direction].append(spec)

    async def restart_toxic(self, spec: ToxicSpec) -> None:
        for conn in list(self.connections):
            if not conn.closed:
                await conn.links[spec.direction].restart(spec)

    async def remove_toxic(self, spec: ToxicSpec) -> None:
        self.toxics.remove(spec)
        for conn in list(self.connections):
            if not conn.closed:
                await conn.links[spec.direction].remove(spec)

    def ordered_toxics(self) -> list[ToxicSpec]:
        """Upstream toxics in insertion order, then downstream ones (the real order)."""
        up = [t for t in self.toxics if t.direction == "upstream"]
        return up + [t for t in self.toxics if t.direction == "downstream"]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [t.to_json() for t in self.ordered_toxics()],
        }


def _close(side: Side) -> None:
    if side.transport is not None:
        side.transport.close()
