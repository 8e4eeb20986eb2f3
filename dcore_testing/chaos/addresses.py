"""Proxy addresses: Go's parsing and resolving, and the loopback-only policy.

Parsing follows ``net.SplitHostPort`` / ``net.ResolveTCPAddr`` with Go's error
messages, because clients compare them with the real server's.

The policy is a difference from Toxiproxy v2.12.0 (DIFFERENCES.md): unless the
server was started with ``allow_remote`` (``--allow-remote``), a proxy may only
listen on a loopback address and only dial an upstream that resolves to loopback
addresses. A fault-injection proxy that a test suite starts should never open a
port to the network or relay traffic to another host by accident. The upstream is
checked when the proxy is created or changed (a 400 naming the flag) *and* again
at every dial, on the addresses the dial really uses, so a name that later
resolves elsewhere is not followed either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

ALLOW_REMOTE_FIX = (
    "start the server with allow_remote=True (python -m dcore_testing.chaos --allow-remote) "
    "to allow it"
)


class ProxyError(Exception):
    """A listen or resolve failure; the API reports its message with status 500."""


def format_address(host: str, port: int) -> str:
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
    return format_address(host, port) if host else f":{port}"


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ``::1`` and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def listen_problem(address: str) -> str | None:
    """Why a proxy may not listen on ``address`` without ``allow_remote``, else ``None``.

    An empty host binds 127.0.0.1 here (DIFFERENCES.md), so it passes. An address that
    does not parse passes too: binding it reports Go's error, as the real server does.
    """
    try:
        host, _port = resolve(address)
    except ProxyError:
        return None
    if host == "" or is_loopback(host):
        return None
    return (
        f"listen address {address!r} is not a loopback address ({host}); "
        f"proxies listen on loopback only: use 127.0.0.1:PORT, or {ALLOW_REMOTE_FIX}"
    )


async def lookup(host: str) -> list[str]:
    """The IP addresses ``host`` stands for, in resolver order; ``[]`` if it does not resolve.

    An empty host means the local system, as for Go's ``net.Dial``.
    """
    if host == "":
        return ["127.0.0.1"]
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def remote_addresses(ips: list[str]) -> list[str]:
    return [ip for ip in ips if not is_loopback(ip)]


async def upstream_problem(address: str) -> str | None:
    """Why a proxy may not dial ``address`` without ``allow_remote``, else ``None``.

    A name that does not resolve passes: the real server stores the upstream verbatim
    and only dials it per connection, and every dial is checked again.
    """
    try:
        host, _port = split_host_port(address)
    except ProxyError:
        return None  # never dialable; stored verbatim as the real server does
    remote = remote_addresses(await lookup(host))
    if not remote:
        return None
    return (
        f"upstream {address!r} is not a loopback address (it resolves to {', '.join(remote)}); "
        f"proxies dial loopback upstreams only: {ALLOW_REMOTE_FIX}"
    )
