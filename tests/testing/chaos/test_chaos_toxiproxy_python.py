"""The third-party toxiproxy-python client drives the server unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from dcore_testing.chaos import ToxiproxyClient


@pytest.fixture
def legacy(dcore_toxiproxy: ToxiproxyClient) -> Iterator[Toxiproxy]:
    """toxiproxy-python keeps host/port in class globals; point them here, then restore."""
    saved = APIConsumer.host, APIConsumer.port
    url = dcore_toxiproxy.url.removeprefix("http://")
    host, port = url.rsplit(":", 1)
    server = Toxiproxy()
    server.update_api_consumer(host, int(port))
    yield server
    APIConsumer.host, APIConsumer.port = saved


def test_toxiproxy_python_full_lifecycle(legacy, echo_port: int, net) -> None:
    assert legacy.running()
    assert legacy.version().startswith(b'{"version": ')

    proxy = legacy.create(upstream=f"127.0.0.1:{echo_port}", name="legacy", listen="127.0.0.1:0")
    assert proxy.enabled is True
    assert set(legacy.proxies()) == {"legacy"}
    assert legacy.get_proxy("legacy").upstream == f"127.0.0.1:{echo_port}"
    with pytest.raises(ProxyExists):
        legacy.create(upstream="127.0.0.1:1", name="legacy")

    proxy.add_toxic(type="latency", attributes={"latency": 100})
    proxy.add_toxic(type="noop", stream="upstream", name="quiet", toxicity=0.5)
    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream", "quiet"}
    assert toxics["latency_downstream"].attributes == {"latency": 100, "jitter": 0}
    assert toxics["quiet"].stream == "upstream"
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="does-not-exist")

    client = ToxiproxyClient(f"http://{APIConsumer.host}:{APIConsumer.port}")
    with client, net.connect(client.get_proxy("legacy")) as sock:
        assert net.round_trip(sock) >= 0.09  # the toxic it added is live
    assert proxy.destroy_toxic("latency_downstream") is True
    with pytest.raises(NotFound):
        proxy.destroy_toxic("latency_downstream")

    proxy.disable()
    assert legacy.get_proxy("legacy").enabled is False
    with proxy.down():
        assert legacy.get_proxy("legacy").enabled is False
    assert legacy.get_proxy("legacy").enabled is True
    proxy.disable()

    assert legacy.reset() is True
    assert legacy.get_proxy("legacy").enabled is True
    assert legacy.get_proxy("legacy").toxics() == {}

    assert legacy.destroy(proxy) is True
    assert legacy.proxies() == {}


def test_toxiproxy_python_populate(legacy) -> None:
    created = legacy.populate(
        [
            {"name": "one", "upstream": "127.0.0.1:1", "listen": "127.0.0.1:0"},
            {"name": "two", "upstream": "127.0.0.1:2", "listen": "127.0.0.1:0"},
        ]
    )
    assert [p.name for p in created] == ["one", "two"]
    assert set(legacy.proxies()) == {"one", "two"}
    legacy.destroy_all()
    assert legacy.proxies() == {}
