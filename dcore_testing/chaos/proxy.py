"""A TCP proxy: listener, upstream dialing, and the proxy's toxics applied live.

``start`` binds the listen address (recording the *bound* address, as the real
server reports it); ``stop`` closes the listener and every open connection, which
is what ``enabled: false`` means (a partition). Toxic add, update and remove reach
every open connection as well as new ones.

Difference from Toxiproxy v2.12.0: an empty ``listen`` binds 127.0.0.1 on a random
port (reported as ``127.0.0.1:N``) instead of every interface, so a test fixture
never exposes a port to the network. ``0.0.0.0:N`` or ``[::]:N`` still do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from typing import Any

from .link import Connection
from .toxics import ToxicSpec


class ProxyError(Exception):
    """A listen or resolve failure; the API reports its message with status 500."""


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``, with its error messages."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ProxyError(f"address {address}: missing ']' in address")
        if not address[end + 1 :].startswith(":"):
            raise ProxyError(f"address {address}: missing port in address")
        return address[1:end], address[end + 2 :]
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ProxyError(f"address {address}: missing port in address")
    if ":" in host:
        raise ProxyError(f"address {address}: too many colons in address")
    return host, port


def resolve(address: str) -> tuple[str, int]:
    """Resolve ``host:port`` like ``net.ResolveTCPAddr``, IPv4 first; returns (ip, port)."""
    if address == "":
        return "", 0
    host, port_text = split_host_port(address)
    if not port_text.isdigit() or int(port_text) > 65535:
        if port_text == "":
            return _resolve_host(host, address), 0
        raise ProxyError(f"address {port_text}: invalid port")
    return _resolve_host(host, address), int(port_text)


def _resolve_host(host: str, address: str) -> str:
    if host == "":
        return ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
        except OSError:
            continue
        if infos:
            return str(infos[0][4][0])
    raise ProxyError(f"lookup {host}: no such host")


def canonical(address: str) -> str:
    """The address string ``ResolveTCPAddr(...).String()`` would give."""
    host, port = resolve(address)
    return _format(host, port) if host else f":{port}"


class Proxy:
    """One named proxy; all methods run on the server's event loop."""

    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: list[ToxicSpec] = []
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._serial = 0

    # lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Bind and serve; a no-op if running. Raises :class:`ProxyError` like Go's listen."""
        if self.enabled:
            return
        try:
            host, port = resolve(self.listen)
        except ProxyError as exc:
            raise ProxyError(f"listen tcp: {exc}") from None
        bind_host = host or "127.0.0.1"
        try:
            server = await asyncio.start_server(
                self._on_client, bind_host, port, reuse_address=True, limit=1 << 16
            )
        except OSError as exc:
            reason = {
                errno.EADDRINUSE: "address already in use",
                errno.EADDRNOTAVAIL: "cannot assign requested address",
                errno.EACCES: "permission denied",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise ProxyError(f"listen tcp {_format(bind_host, port)}: bind: {reason}") from None
        bound = server.sockets[0].getsockname()
        self.listen = _format(str(bound[0]), int(bound[1]))
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

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # shutdown while dialing
            await self._accept(reader, writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation
        try:
            host, port = split_host_port(self.upstream)
            upstream = await asyncio.open_connection(host, int(port), limit=1 << 16)
        except (OSError, ValueError, ProxyError):
            writer.close()  # the real server accepts, then closes: the client sees EOF
            return
        if generation != self._generation:
            writer.close()
            upstream[1].close()
            return
        self._serial += 1
        conn = Connection(self._serial, (reader, writer), upstream, self.connections.discard)
        self.connections.add(conn)
        conn.start(list(self.toxics))

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
