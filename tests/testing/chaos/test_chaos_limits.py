"""The API's HTTP limits: body size, connection count, read / idle timeouts.

Each test starts its own embedded server with small limits, so nothing waits for
the production defaults. The refusals use the API's error shape (DIFFERENCES.md).
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from dcore_testing.chaos import HttpLimits, ToxiproxyServer

TEXT = "text/plain; charset=utf-8"
VERSION = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
SOCKET_TIMEOUT = 10.0  # far above every limit below; a hang fails instead of blocking


def _server(**limits: float) -> ToxiproxyServer:
    return ToxiproxyServer(limits=HttpLimits(**limits))  # type: ignore[arg-type]


@pytest.fixture
def small_body() -> Iterator[ToxiproxyServer]:
    with _server(max_body_bytes=1024) as server:
        yield server


def _connect(server: ToxiproxyServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=SOCKET_TIMEOUT)


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (the API always sends one here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == TEXT
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["connection"] == "close"
    assert response.content.endswith(b"}\n")
    body = json.loads(response.content)
    assert body["status"] == status
    for word in words:
        assert word in body["error"]


def _proxy_body(name: str, size: int) -> bytes:
    """A valid proxy definition padded with JSON whitespace to exactly ``size`` bytes."""
    body = json.dumps({"name": name, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"})
    assert len(body) <= size
    return body.encode() + b" " * (size - len(body))


# -- request body -------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(
    small_body: ToxiproxyServer,
) -> None:
    with httpx.Client(base_url=small_body.url, timeout=SOCKET_TIMEOUT) as api:
        response = api.post("/proxies", content=_proxy_body("big", 1025))
        _assert_refused(response, 413, "1025 bytes", "1024", "--max-body-bytes")
        assert api.get("/proxies").json() == {}  # nothing was created
        assert api.post("/proxies", content=_proxy_body("fits", 1024)).status_code == 201
        assert list(api.get("/proxies").json()) == ["fits"]


def test_a_chunked_body_over_the_limit_is_413_too(small_body: ToxiproxyServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * 200

    with httpx.Client(base_url=small_body.url, timeout=SOCKET_TIMEOUT) as api:
        response = api.post("/proxies", content=chunks())
        _assert_refused(response, 413, "more than 1024 bytes", "max_body_bytes")
        assert api.get("/version").status_code == 200


def test_a_huge_declared_body_is_refused_before_any_of_it_is_read(
    small_body: ToxiproxyServer,
) -> None:
    with _connect(small_body) as sock:
        sock.sendall(b"POST /proxies HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n{")
        answer = _read_until_eof(sock)  # no body sent, yet the answer and the close come
    assert answer.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(b',"status":413}\n')
    assert b"60000000 bytes" in answer


def test_a_request_head_over_one_mib_is_gos_431(small_body: ToxiproxyServer) -> None:
    with _connect(small_body) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        answer = _read_until_eof(sock)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answer.endswith(b"\r\n\r\n431 Request Header Fields Too Large")


# -- connections --------------------------------------------------------------------


def test_connections_over_the_limit_get_503_until_one_closes() -> None:
    with _server(max_connections=2) as server:
        held = [_connect(server), _connect(server)]
        for sock in held:  # each is being served: it answers on a kept-alive connection
            sock.sendall(VERSION)
            assert _read_response(sock).startswith(b"HTTP/1.1 200 OK")
        with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT) as api:
            response = api.get("/version")
            _assert_refused(response, 503, "too many connections", "2", "--max-connections")
        with _connect(server) as third:  # also refused when it has not sent a thing yet
            assert _read_until_eof(third).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        first = held.pop(0)
        first.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_until_eof(first).startswith(b"HTTP/1.1 200 OK")  # its slot is free now
        first.close()
        with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT) as api:
            assert api.get("/version").status_code == 200
        for sock in held:
            sock.close()


# -- timeouts -----------------------------------------------------------------------


def test_a_partial_second_request_is_closed_after_the_read_timeout_not_the_idle_one() -> None:
    with _server(read_timeout=0.2, idle_timeout=60) as server, _connect(server) as sock:
        sock.sendall(VERSION)
        assert _read_response(sock).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        sock.sendall(b"GET /version HTTP/1.1\r\nHo")
        assert _read_until_eof(sock) == b""  # closed without an answer, as Go does
        assert time.monotonic() - started < SOCKET_TIMEOUT
        with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT) as api:
            assert api.get("/version").status_code == 200


def test_a_partial_first_request_is_closed_after_the_read_timeout() -> None:
    with _server(read_timeout=0.2) as server, _connect(server) as sock:
        sock.sendall(b"POST /proxies HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        assert _read_until_eof(sock) == b""


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    with _server(read_timeout=60, idle_timeout=0.2) as server, _connect(server) as sock:
        sock.sendall(VERSION)
        assert _read_response(sock).startswith(b"HTTP/1.1 200 OK")
        assert _read_until_eof(sock) == b""


def test_blank_lines_before_a_request_are_ignored() -> None:
    with _server() as server, _connect(server) as sock:
        sock.sendall(b"\r\n\r\n" + VERSION)
        assert _read_response(sock).endswith(b'{"version": "2.12.0"}\n')


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_body_bytes", 0, ValueError),
        ("max_connections", -1, ValueError),
        ("read_timeout", math.inf, ValueError),
        ("idle_timeout", math.nan, ValueError),
        ("write_timeout", "30", TypeError),
        ("max_connections", True, TypeError),
    ],
)
def test_bad_limits_name_the_field_and_the_value(field: str, value: object, error: type) -> None:
    with pytest.raises(error, match=rf"HttpLimits\.{field} must be .*{value!r}"):
        HttpLimits(**{field: value})  # type: ignore[arg-type]


def test_the_server_wants_an_httplimits() -> None:
    with pytest.raises(TypeError, match="limits must be an HttpLimits, got dict"):
        ToxiproxyServer(limits={"max_body_bytes": 1})  # type: ignore[arg-type]
