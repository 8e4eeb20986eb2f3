"""The typed client: lookups, errors, and every fault context manager."""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest

from dcore_testing.chaos import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    Proxy,
    ProxyConfig,
    ServerError,
    ToxicConfig,
    ToxiproxyClient,
    ToxiproxyConnectionError,
    ToxiproxyError,
)


def test_url_comes_from_the_environment_or_must_be_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOXIPROXY_URL", "http://127.0.0.1:8474/")
    with ToxiproxyClient() as client:
        assert client.url == "http://127.0.0.1:8474"
    monkeypatch.delenv("TOXIPROXY_URL")
    with pytest.raises(ValueError, match="TOXIPROXY_URL"):
        ToxiproxyClient()


def test_version_and_proxy_lookups(dcore_toxiproxy: ToxiproxyClient, echo_port: int) -> None:
    assert re.fullmatch(r"2\.\d+\.\d+|git", dcore_toxiproxy.version())
    proxy = dcore_toxiproxy.create_proxy("lookup", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
    assert proxy.listen_host == "127.0.0.1"
    assert proxy.listen_port > 0
    assert proxy.address == ("127.0.0.1", proxy.listen_port)
    assert dcore_toxiproxy.get_proxy("lookup").listen == proxy.listen
    assert list(dcore_toxiproxy.proxies()) == ["lookup"]
    assert dcore_toxiproxy.proxies()["lookup"].upstream == f"127.0.0.1:{echo_port}"
    disabled = dcore_toxiproxy.create_proxy("off", "127.0.0.1:0", "127.0.0.1:1", enabled=False)
    assert disabled.enabled is False


def test_api_errors_are_typed_with_status_and_server_message(
    dcore_toxiproxy: ToxiproxyClient,
) -> None:
    with pytest.raises(NotFoundError) as missing:
        dcore_toxiproxy.get_proxy("nope")
    assert isinstance(missing.value, LookupError)
    assert isinstance(missing.value, ToxiproxyError)
    assert (missing.value.status, missing.value.message) == (404, "proxy not found")
    assert "GET /proxies/nope" in str(missing.value)

    proxy = dcore_toxiproxy.create_proxy("errs", "127.0.0.1:0", "127.0.0.1:1")
    with pytest.raises(ConflictError) as dup:
        dcore_toxiproxy.create_proxy("errs", "127.0.0.1:0", "127.0.0.1:1")
    assert (dup.value.status, dup.value.message) == (409, "proxy already exists")

    with pytest.raises(BadRequestError) as bad:
        proxy.add_toxic("nonsense")
    assert isinstance(bad.value, ValueError)
    assert (bad.value.status, bad.value.message) == (400, "invalid toxic type")

    with pytest.raises(ServerError) as used:
        dcore_toxiproxy.create_proxy("clash", proxy.listen, "127.0.0.1:1")
    assert used.value.status == 500
    assert used.value.message.endswith("bind: address already in use")

    with pytest.raises(NotFoundError):
        proxy.remove_toxic("never-added")


def test_unreachable_server_raises_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ToxiproxyClient(f"http://127.0.0.1:{port}", timeout=2)
    with client, pytest.raises(ToxiproxyConnectionError) as info:
        client.version()
    assert isinstance(info.value, ConnectionError)
    assert info.value.status is None


def test_non_json_error_bodies_keep_their_text() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, content=b""))
    client = ToxiproxyClient("http://toxiproxy.invalid", transport=transport)
    with client, pytest.raises(ServerError) as info:
        client.reset()
    assert (info.value.status, info.value.message) == (503, "")


def test_add_update_and_list_toxics(echo_proxy: Proxy) -> None:
    toxic = echo_proxy.add_toxic("latency", stream="upstream", toxicity=0.5, name="lag", latency=10)
    assert (toxic.name, toxic.type, toxic.stream, toxic.toxicity) == (
        "lag",
        "latency",
        "upstream",
        0.5,
    )
    assert toxic.attributes == {"latency": 10, "jitter": 0}
    updated = echo_proxy.update_toxic("lag", jitter=3)
    assert updated.attributes == {"latency": 10, "jitter": 3}
    assert echo_proxy.update_toxic("lag", toxicity=1.0).toxicity == 1.0
    assert echo_proxy.toxics() == [echo_proxy.get_toxic("lag")]
    assert echo_proxy.refresh().enabled is True


CONTEXT_MANAGERS = [
    (
        "latency",
        lambda p: p.latency(50, jitter=5, stream="upstream"),
        "upstream",
        {"latency": 50, "jitter": 5},
    ),
    ("bandwidth", lambda p: p.bandwidth(100), "downstream", {"rate": 100}),
    ("timeout", lambda p: p.timeout(10), "downstream", {"timeout": 10}),
    ("reset_peer", lambda p: p.reset_peer(timeout_ms=5), "downstream", {"timeout": 5}),
    (
        "slicer",
        lambda p: p.slicer(10, 2, 100),
        "downstream",
        {"average_size": 10, "size_variation": 2, "delay": 100},
    ),
    ("limit_data", lambda p: p.limit_data(1000), "downstream", {"bytes": 1000}),
    ("slow_close", lambda p: p.slow_close(10), "downstream", {"delay": 10}),
    ("noop", lambda p: p.toxic("noop", "upstream"), "upstream", {}),
]


@pytest.mark.parametrize(("type_", "enter", "stream", "attributes"), CONTEXT_MANAGERS)
def test_toxic_context_managers_add_then_remove_even_on_error(
    echo_proxy: Proxy, type_, enter, stream, attributes
) -> None:
    seen = []

    def fail_inside() -> None:
        with enter(echo_proxy) as toxic:
            seen.append((toxic.type, toxic.stream, dict(toxic.attributes)))
            seen.append([t.name for t in echo_proxy.toxics()] == [toxic.name])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == [(type_, stream, attributes), True]
    assert echo_proxy.toxics() == []


def test_context_manager_exit_tolerates_a_reset_inside(
    dcore_toxiproxy: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    with echo_proxy.latency(10):
        dcore_toxiproxy.reset()
    assert echo_proxy.toxics() == []


def test_partition_disables_and_re_enables_even_on_error(
    dcore_toxiproxy: ToxiproxyClient, echo_proxy: Proxy
) -> None:
    inside = []

    def fail_inside() -> None:
        with echo_proxy.partition():
            inside.append(dcore_toxiproxy.get_proxy("echo").enabled)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert inside == [False]
    assert dcore_toxiproxy.get_proxy("echo").enabled is True


@pytest.mark.usefixtures("embedded_only")
def test_one_way_partition_uses_blackhole_on_the_embedded_server(echo_proxy: Proxy) -> None:
    with echo_proxy.one_way_partition("upstream") as toxic:
        assert (toxic.type, toxic.stream) == ("blackhole", "upstream")
    assert echo_proxy.toxics() == []


def test_one_way_partition_falls_back_to_timeout_zero_on_the_real_server() -> None:
    requests: list[tuple[str, str, dict]] = []

    def real_server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        requests.append((request.method, request.url.path, body))
        if request.method == "POST" and body.get("type") == "blackhole":
            return httpx.Response(400, text='{"error":"invalid toxic type","status":400}\n')
        if request.method == "POST":
            toxic = {**body, "name": "timeout_downstream"}
            return httpx.Response(200, json=toxic)
        return httpx.Response(204)

    data = {"name": "p", "listen": "127.0.0.1:1", "upstream": "h:1", "enabled": True}
    with ToxiproxyClient(
        "http://real.invalid", transport=httpx.MockTransport(real_server)
    ) as client:
        proxy = Proxy(client, data)
        with proxy.one_way_partition("downstream") as toxic:
            assert (toxic.type, toxic.attributes) == ("timeout", {"timeout": 0})
    assert [(m, p) for m, p, _ in requests] == [
        ("POST", "/proxies/p/toxics"),
        ("POST", "/proxies/p/toxics"),
        ("DELETE", "/proxies/p/toxics/timeout_downstream"),
    ]


@pytest.mark.usefixtures("embedded_only")
def test_populate_with_typed_configs(dcore_toxiproxy: ToxiproxyClient) -> None:
    proxies = dcore_toxiproxy.populate(
        [
            ProxyConfig(
                "a",
                "127.0.0.1:0",
                "127.0.0.1:1",
                toxics=(ToxicConfig("latency", attributes={"latency": 5}),),
            ),
            {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:2", "enabled": False},
        ]
    )
    assert [(p.name, p.enabled) for p in proxies] == [("a", True), ("b", False)]
    assert [t.type for t in dcore_toxiproxy.get_proxy("a").toxics()] == ["latency"]
    assert dcore_toxiproxy.populate([]) == []


def test_update_changes_upstream(echo_proxy: Proxy) -> None:
    echo_proxy.update(upstream="127.0.0.1:1")
    assert echo_proxy.upstream == "127.0.0.1:1"
    assert echo_proxy.enabled is True


def test_fixture_cleans_proxies_between_tests_part_1(dcore_toxiproxy: ToxiproxyClient) -> None:
    # leaves a proxy with a toxic behind; part 2 (next in file order) proves it is gone
    dcore_toxiproxy.create_proxy("leaky", "127.0.0.1:0", "127.0.0.1:1").add_toxic("noop")
    assert [t.name for t in dcore_toxiproxy.get_proxy("leaky").toxics()] == ["noop_downstream"]


def test_fixture_cleans_proxies_between_tests_part_2(dcore_toxiproxy: ToxiproxyClient) -> None:
    assert "leaky" not in dcore_toxiproxy.proxies()
