"""ToxiproxyServer lifecycle and the HTTP/1.1 layer under the API."""

from __future__ import annotations

import socket

import httpx
import pytest

from dcore_testing.chaos import ToxiproxyClient, ToxiproxyServer


def test_server_binds_an_ephemeral_loopback_port_and_stops_cleanly() -> None:
    server = ToxiproxyServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    with server:
        assert server.host == "127.0.0.1"
        api_port = server.port
        assert api_port > 0
        assert server.url == f"http://127.0.0.1:{api_port}"
        with ToxiproxyClient(server.url) as client:
            listen = client.create_proxy("p", "127.0.0.1:0", "127.0.0.1:1").address
        socket.create_connection(listen, timeout=5).close()
    for closed in (listen, ("127.0.0.1", api_port)):  # the API and its proxies close
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(closed, timeout=5)
    server.stop()  # idempotent


def test_server_start_reports_a_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address already in use"):
            ToxiproxyServer(port=port).start()


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with (
        ToxiproxyServer() as server,
        socket.create_connection((server.host, server.port), 5) as sock,
    ):
        request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request + request)
        data = b""
        while data.count(b'{"version": "2.12.0"}\n') < 2:
            data += sock.recv(4096)
        assert data.count(b"HTTP/1.1 200 OK") == 2
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = b""
        while chunk := sock.recv(4096):
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 200 OK")
        assert b"Connection: close" in rest


def test_chunked_request_bodies_are_decoded() -> None:
    def body():
        yield b'{"name": "chunky", '
        yield b'"listen": "127.0.0.1:0", "upstream": "h:1"}'

    with ToxiproxyServer() as server, httpx.Client(base_url=server.url) as client:
        response = client.post("/proxies", content=body())
        assert response.status_code == 201
        assert response.json()["name"] == "chunky"


def test_fixture_prefers_toxiproxy_url_else_one_embedded_server(
    monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    from dcore_testing.chaos import fixtures

    monkeypatch.setenv("TOXIPROXY_URL", "http://127.0.0.1:8474")
    assert fixtures._server_url(pytestconfig) == "http://127.0.0.1:8474"
    monkeypatch.delenv("TOXIPROXY_URL")
    url = fixtures._server_url(pytestconfig)
    assert fixtures._server_url(pytestconfig) == url  # started once per session
    assert httpx.get(f"{url}/version").status_code == 200
