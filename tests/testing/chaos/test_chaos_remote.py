"""Proxies listen on and dial loopback addresses only, unless the server allows remote ones.

No test sends traffic off the machine: non-loopback addresses are only ever refused,
stored without binding (``enabled: false``), or documentation addresses (192.0.2.0/24,
RFC 5737) that nothing dials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from dcore_testing.chaos import ToxiproxyServer, addresses, proxy
from dcore_testing.chaos.addresses import is_loopback, listen_problem, upstream_problem

from .conftest import Upstreams, echo

FLAG = "--allow-remote"


@pytest.fixture
def strict_api() -> Iterator[httpx.Client]:
    with ToxiproxyServer() as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def open_api() -> Iterator[httpx.Client]:
    with (
        ToxiproxyServer(allow_remote=True) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client


def _refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content.endswith(b"}\n")
    error = response.json()["error"]
    for word in (FLAG, "allow_remote=True", "not a loopback address", *words):
        assert word in error


@pytest.mark.parametrize(
    "address",
    ["", ":0", "127.0.0.1:0", "127.8.9.10:80", "localhost:0", "[::1]:0", "[::ffff:127.0.0.1]:1"],
)
def test_loopback_listen_addresses_pass(address: str) -> None:
    assert listen_problem(address) is None


@pytest.mark.parametrize(
    "address", ["0.0.0.0:0", "[::]:0", "192.0.2.1:80", "[2001:db8::1]:1", "[::ffff:192.0.2.1]:1"]
)
def test_other_listen_addresses_are_refused_naming_the_flag(address: str) -> None:
    problem = listen_problem(address)
    assert problem is not None
    assert address in problem
    assert FLAG in problem


def test_loopback_is_127_slash_8_and_ipv6_loopback() -> None:
    assert is_loopback("127.255.0.1")
    assert is_loopback("::1")
    assert not is_loopback("128.0.0.1")
    assert not is_loopback("0.0.0.0")


def test_upstream_names_are_judged_by_what_they_resolve_to() -> None:
    def check(address: str) -> str | None:
        return asyncio.run(upstream_problem(address))

    assert check("localhost:6379") is None
    assert check("127.0.0.1:6379") is None
    assert check("no-such-host.invalid:1") is None  # dialing it will fail anyway
    assert check("nonsense") is None  # never dialable, stored verbatim
    problem = check("192.0.2.7:80")
    assert problem is not None
    assert "192.0.2.7" in problem
    assert FLAG in problem


def test_create_refuses_a_wildcard_listen_and_a_remote_upstream(strict_api: httpx.Client) -> None:
    wildcard = {"name": "w", "listen": "0.0.0.0:0", "upstream": "127.0.0.1:1"}
    _refused(strict_api.post("/proxies", json=wildcard), "proxy 'w'", "0.0.0.0:0")
    remote = {"name": "r", "listen": "127.0.0.1:0", "upstream": "192.0.2.1:80"}
    _refused(strict_api.post("/proxies", json=remote), "proxy 'r'", "192.0.2.1")
    assert strict_api.get("/proxies").json() == {}


def test_update_refuses_remote_addresses_and_leaves_the_proxy_alone(
    strict_api: httpx.Client,
) -> None:
    body = {"name": "u", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}
    created = strict_api.post("/proxies", json=body).json()
    _refused(strict_api.patch("/proxies/u", json={"upstream": "192.0.2.1:80"}), "192.0.2.1")
    _refused(strict_api.patch("/proxies/u", json={"listen": "[::]:0"}), "[::]:0")
    assert strict_api.get("/proxies/u").json() == created


def test_populate_refuses_before_changing_anything(strict_api: httpx.Client) -> None:
    entries = [
        {"name": "ok", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"},
        {"name": "bad", "listen": "127.0.0.1:0", "upstream": "192.0.2.1:80"},
    ]
    response = strict_api.post("/populate", json=entries)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["proxies"] is None
    assert FLAG in body["error"]
    assert strict_api.get("/proxies").json() == {}


def test_allow_remote_accepts_them(open_api: httpx.Client) -> None:
    # disabled, so nothing binds every interface and nothing is dialed
    body = {"name": "o", "listen": "0.0.0.0:0", "upstream": "192.0.2.1:80", "enabled": False}
    response = open_api.post("/proxies", json=body)
    assert response.status_code == 201
    assert response.json()["upstream"] == "192.0.2.1:80"


def test_a_loopback_upstream_by_name_relays(strict_api: httpx.Client) -> None:
    upstreams = Upstreams()
    try:
        port = upstreams.start(echo)
        body = {"name": "n", "listen": "127.0.0.1:0", "upstream": f"localhost:{port}"}
        listen = strict_api.post("/proxies", json=body).json()["listen"]
        host, _, proxy_port = listen.rpartition(":")
        with socket.create_connection((host, int(proxy_port)), timeout=10) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
    finally:
        upstreams.close()


def test_a_name_that_resolves_elsewhere_by_dial_time_is_not_dialed(
    strict_api: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"name": "later", "listen": "127.0.0.1:0", "upstream": "moved.invalid:80"}
    listen = strict_api.post("/proxies", json=body).json()["listen"]  # does not resolve: accepted

    async def moved(host: str) -> list[str]:
        return ["192.0.2.9"] if host == "moved.invalid" else await addresses.lookup(host)

    dialed: list[object] = []

    async def no_dial(*args: object, **kwargs: object) -> None:
        dialed.append(args)
        raise OSError("must not dial")

    monkeypatch.setattr(proxy, "lookup", moved)
    monkeypatch.setattr(proxy.Proxy, "_connect", no_dial)
    host, _, port = listen.rpartition(":")
    with (
        caplog.at_level(logging.WARNING, logger="dcore_testing.chaos.proxy"),
        socket.create_connection((host, int(port)), timeout=10) as sock,
    ):
        assert sock.recv(10) == b""  # accepted, then closed: like an unreachable upstream
    assert dialed == []
    assert any("192.0.2.9" in r.getMessage() and FLAG in r.getMessage() for r in caplog.records)


def test_the_refusal_is_the_api_error_shape(strict_api: httpx.Client) -> None:
    response = strict_api.post(
        "/proxies", json={"name": "w", "listen": "0.0.0.0:0", "upstream": "127.0.0.1:1"}
    )
    assert (
        response.content
        == json.dumps(
            {"error": response.json()["error"], "status": 400}, separators=(",", ":")
        ).encode()
        + b"\n"
    )
