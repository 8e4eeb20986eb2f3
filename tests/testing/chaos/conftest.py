"""Fixtures for the chaos tests: the toxiproxy client, tiny local upstreams, sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from dcore_testing.chaos import Proxy, ToxiproxyClient

Handler = Callable[[socket.socket], None]


@pytest.fixture
def embedded_only() -> None:
    """Skip when running against a real Toxiproxy: the test covers a documented difference."""
    if os.environ.get("TOXIPROXY_URL"):
        pytest.skip("exercises a documented difference of the embedded server")


class Upstreams:
    """Threaded TCP servers on 127.0.0.1 with a handler per connection."""

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []
        self._conns: list[socket.socket] = []

    def start(self, handler: Handler) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        self._listeners.append(listener)

        def run(conn: socket.socket) -> None:
            with conn, contextlib.suppress(OSError):
                handler(conn)

        def accept_loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                self._conns.append(conn)
                threading.Thread(target=run, args=(conn,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        return int(listener.getsockname()[1])

    def close(self) -> None:
        for sock in self._listeners + self._conns:
            with contextlib.suppress(OSError):
                sock.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def greeter(payload: bytes, close: bool = True) -> Handler:
    """Send ``payload`` on connect, then close (or wait for the client to close)."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(payload)
        if not close:
            while conn.recv(65536):
                pass

    return handle


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    servers = Upstreams()
    yield servers
    servers.close()


@pytest.fixture
def echo_port(upstreams: Upstreams) -> int:
    return upstreams.start(echo)


@pytest.fixture
def echo_proxy(dcore_toxiproxy: ToxiproxyClient, echo_port: int) -> Proxy:
    return dcore_toxiproxy.create_proxy("echo", "127.0.0.1:0", f"127.0.0.1:{echo_port}")


@pytest.fixture
def api(dcore_toxiproxy: ToxiproxyClient) -> Iterator[httpx.Client]:
    """Raw HTTP access to the same server, for status/body/header checks."""
    with httpx.Client(base_url=dcore_toxiproxy.url, timeout=5) as client:
        yield client


def connect(proxy: Proxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def recv_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.perf_counter()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.perf_counter() - start


@pytest.fixture
def net() -> type[Net]:
    return Net


class Net:
    """Socket helpers, handed to tests as the ``net`` fixture."""

    connect = staticmethod(connect)
    recv_exactly = staticmethod(recv_exactly)
    recv_until_eof = staticmethod(recv_until_eof)
    round_trip = staticmethod(round_trip)
    greeter = staticmethod(greeter)
    echo = staticmethod(echo)
