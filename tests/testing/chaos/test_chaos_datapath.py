"""The proxy's data path: byte order across toxic changes, and back-pressure.

A link without toxics writes what it reads straight to the other socket; adding a
toxic queues it again. These tests hold on a real Toxiproxy too.
"""

from __future__ import annotations

import socket
import threading

from dcore_testing.chaos import ToxiproxyClient

PATTERN = bytes(range(251))  # a prime length: any reordering or loss shows


def test_bytes_keep_their_order_while_toxics_come_and_go(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    payload = PATTERN * ((16 << 20) // len(PATTERN))  # ~16 MiB
    port = upstreams.start(net.greeter(payload))
    proxy = dcore_toxiproxy.create_proxy("order", "127.0.0.1:0", f"127.0.0.1:{port}")
    toxics = [
        ("latency", {"latency": 300}),  # holds what arrives meanwhile; removal flushes it
        ("noop", {}),
        ("slicer", {"average_size": 700, "size_variation": 300}),
        ("bandwidth", {"rate": 100_000}),
    ]
    received = bytearray()
    changes = 0
    with net.connect(proxy, timeout=30) as sock:
        while chunk := sock.recv(65536):
            received += chunk
            if changes < 2 * len(toxics) and len(received) >= changes * (1 << 20):
                kind, attributes = toxics[changes // 2]
                if changes % 2 == 0:  # add, so the link queues ...
                    proxy.add_toxic(kind, name="flip", **attributes)
                else:  # ... then remove, so it goes direct again
                    proxy.remove_toxic("flip")
                changes += 1
    assert changes == 2 * len(toxics)  # every change happened mid-stream
    assert len(received) == len(payload)
    assert received == payload


def test_a_client_that_stops_reading_stops_the_upstream_writer(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    total = 64 << 20
    sent = 0
    stalled = threading.Event()

    def writer(conn: socket.socket) -> None:
        nonlocal sent
        block = PATTERN * 4096
        conn.settimeout(1.0)  # blocked that long: the proxy is not reading
        try:
            while sent < total:
                sent += conn.send(block[: total - sent])
        except TimeoutError:
            stalled.set()

    port = upstreams.start(writer)
    proxy = dcore_toxiproxy.create_proxy("pressure", "127.0.0.1:0", f"127.0.0.1:{port}")
    with net.connect(proxy, timeout=30) as sock:
        assert stalled.wait(30), f"the upstream wrote all {total} bytes into the proxy"
        assert sent < total // 2  # socket buffers plus about one read held by the proxy
        sock.settimeout(5)
        received = bytearray()
        while len(received) < sent:
            chunk = sock.recv(1 << 20)
            assert chunk, f"EOF after {len(received)} of the {sent} bytes sent"
            received += chunk
    assert received[:sent] == (PATTERN * (sent // len(PATTERN) + 1))[:sent]
