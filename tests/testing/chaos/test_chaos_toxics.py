"""Each toxic's effect on real TCP through the proxy (127.0.0.1 only).

Timing asserts are lower bounds with generous slack; upper bounds only where
the point is that nothing was delayed (and then far above loopback times).
"""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcore_testing.chaos import Proxy, ToxiproxyClient
from dcore_testing.chaos.toxics import _slice

FAST = 0.4  # a loopback round trip through the proxy is ~1 ms; even on a loaded machine
# well under 400 ms, while every toxic compared with it delays by 600 ms or more


def test_latency_downstream_delays_responses(echo_proxy: Proxy, net) -> None:
    with net.connect(echo_proxy) as sock:
        assert net.round_trip(sock) < FAST
        with echo_proxy.latency(600):
            assert net.round_trip(sock) >= 0.59
        assert net.round_trip(sock) < FAST


def test_latency_upstream_delays_requests(echo_proxy: Proxy, net) -> None:
    with echo_proxy.latency(120, stream="upstream"), net.connect(echo_proxy) as sock:
        assert net.round_trip(sock) >= 0.11


def test_latency_is_pipelined_not_cumulative(echo_proxy: Proxy, net) -> None:
    with echo_proxy.latency(300), net.connect(echo_proxy) as sock:
        start = time.perf_counter()
        for i in range(5):
            sock.sendall(b"%d" % i)
            time.sleep(0.01)  # spacing the writes so they travel as separate chunks
        assert net.recv_exactly(sock, 5) == b"01234"
        elapsed = time.perf_counter() - start
    assert 0.29 <= elapsed < 0.3 * 4  # cumulative would be 5 x 300 ms


def test_bandwidth_throttles(dcore_toxiproxy: ToxiproxyClient, upstreams, net) -> None:
    payload = bytes(range(256)) * 240  # 61,440 bytes
    port = upstreams.start(net.greeter(payload))
    proxy = dcore_toxiproxy.create_proxy("bw", "127.0.0.1:0", f"127.0.0.1:{port}")
    with net.connect(proxy) as sock:
        start = time.perf_counter()
        assert net.recv_until_eof(sock) == payload
        fast = time.perf_counter() - start
    with proxy.bandwidth(200), net.connect(proxy) as sock:  # 200 KB/s: ~0.3 s
        start = time.perf_counter()
        assert net.recv_until_eof(sock) == payload
        slow = time.perf_counter() - start
    assert fast < FAST
    assert slow >= 0.25


def test_timeout_drops_data_then_closes_after_the_timeout(echo_proxy: Proxy, net) -> None:
    with echo_proxy.timeout(250), net.connect(echo_proxy) as sock:
        start = time.perf_counter()
        sock.sendall(b"lost")
        assert net.recv_until_eof(sock) == b""
        assert time.perf_counter() - start >= 0.2


def test_timeout_zero_holds_until_removed_and_removal_closes(echo_proxy: Proxy, net) -> None:
    toxic = echo_proxy.add_toxic("timeout", timeout=0)
    with net.connect(echo_proxy) as sock:
        sock.sendall(b"lost")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # neither data nor EOF while the toxic holds
        sock.settimeout(5)
        echo_proxy.remove_toxic(toxic.name)
        assert net.recv_until_eof(sock) == b""


def test_reset_peer_resets_the_client_connection(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    port = upstreams.start(net.greeter(b"hello", close=False))
    proxy = dcore_toxiproxy.create_proxy("rst", "127.0.0.1:0", f"127.0.0.1:{port}")
    # The RST can beat connect() returning, so the connect is inside the raises block.
    with proxy.reset_peer(), pytest.raises(ConnectionResetError), net.connect(proxy) as sock:
        net.recv_until_eof(sock)
    with proxy.reset_peer(timeout_ms=200), net.connect(proxy) as sock:
        start = time.perf_counter()
        with pytest.raises(ConnectionResetError):
            net.recv_until_eof(sock)
        assert time.perf_counter() - start >= 0.15


def test_reset_peer_added_to_an_open_connection_resets_it(echo_proxy: Proxy, net) -> None:
    with net.connect(echo_proxy) as sock:
        net.round_trip(sock)
        with echo_proxy.reset_peer():
            sock.sendall(b"trigger")
            with pytest.raises(ConnectionResetError):
                net.recv_until_eof(sock)


def test_slicer_splits_data_into_several_reads(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    payload = b"s" * 2000
    port = upstreams.start(net.greeter(payload))
    proxy = dcore_toxiproxy.create_proxy("slice", "127.0.0.1:0", f"127.0.0.1:{port}")
    with proxy.slicer(100, 20, delay_us=5000), net.connect(proxy) as sock:
        reads = []
        while chunk := sock.recv(65536):
            reads.append(chunk)
    assert b"".join(reads) == payload
    assert len(reads) >= 5
    assert max(len(r) for r in reads) < 1000


def test_slicer_with_variation_equal_to_average_size_delivers_everything(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    # 1000/1000 is valid on the real server (a peer client's own suite uses it)
    payload = bytes(range(256)) * 4096  # 1 MiB
    port = upstreams.start(net.greeter(payload))
    proxy = dcore_toxiproxy.create_proxy("slice_eq", "127.0.0.1:0", f"127.0.0.1:{port}")
    with proxy.slicer(1000, 1000) as toxic, net.connect(proxy, timeout=30) as sock:
        assert toxic.attributes == {"average_size": 1000, "size_variation": 1000, "delay": 0}
        assert net.recv_until_eof(sock) == payload


class _Draws:
    """The two things ``_slice`` uses from a stage: a Random and a draw log."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def log(self, kind: str, value: float) -> None:
        pass


@settings(max_examples=300, deadline=None)
@given(
    average=st.integers(1, 2000),
    data=st.data(),
    length=st.integers(1, 100_000),
    seed=st.integers(0, 2**32),
)
def test_slicer_cuts_stay_inside_the_chunk_whenever_variation_is_at_most_average(
    average: int, data: st.DataObject, length: int, seed: int
) -> None:
    variation = data.draw(st.integers(0, average), label="size_variation")
    cuts = _slice(_Draws(seed), 0, length, average, variation)  # type: ignore[arg-type]
    sizes = [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    assert cuts[-1] == length
    assert min(sizes) >= 0  # a piece may be empty (as in the real server), never negative
    assert max(sizes) <= average + variation


def test_limit_data_closes_after_n_bytes(dcore_toxiproxy: ToxiproxyClient, upstreams, net) -> None:
    port = upstreams.start(net.greeter(b"0123456789abcdefghij", close=False))
    proxy = dcore_toxiproxy.create_proxy("limit", "127.0.0.1:0", f"127.0.0.1:{port}")
    with proxy.limit_data(10), net.connect(proxy) as sock:
        assert net.recv_until_eof(sock) == b"0123456789"


def test_limit_data_counts_upstream_bytes_across_writes(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    received = bytearray()
    closed = threading.Event()

    def recorder(conn: socket.socket) -> None:
        try:
            while data := conn.recv(100):
                received.extend(data)
                conn.sendall(b"k")
        finally:
            closed.set()

    port = upstreams.start(recorder)
    proxy = dcore_toxiproxy.create_proxy("uplimit", "127.0.0.1:0", f"127.0.0.1:{port}")
    with proxy.limit_data(6, stream="upstream"), net.connect(proxy) as sock:
        sock.sendall(b"abcd")
        assert net.recv_exactly(sock, 1) == b"k"
        sock.sendall(b"efgh")
        assert closed.wait(5)
    assert bytes(received) == b"abcdef"


def test_slow_close_delays_the_close(dcore_toxiproxy: ToxiproxyClient, upstreams, net) -> None:
    port = upstreams.start(net.greeter(b"bye"))
    proxy = dcore_toxiproxy.create_proxy("slowclose", "127.0.0.1:0", f"127.0.0.1:{port}")
    with net.connect(proxy) as sock:
        start = time.perf_counter()
        assert net.recv_until_eof(sock) == b"bye"
        assert time.perf_counter() - start < FAST
    with proxy.slow_close(1000), net.connect(proxy) as sock:
        start = time.perf_counter()
        assert net.recv_exactly(sock, 3) == b"bye"
        assert time.perf_counter() - start < FAST  # data is not delayed
        assert sock.recv(10) == b""
        assert time.perf_counter() - start >= 0.99


def test_toxicity_zero_never_applies(echo_proxy: Proxy, net) -> None:
    with echo_proxy.latency(1000, toxicity=0.0):
        for _ in range(5):
            with net.connect(echo_proxy) as sock:
                assert net.round_trip(sock) < FAST


def test_toxics_apply_live_to_an_open_connection(echo_proxy: Proxy, net) -> None:
    with net.connect(echo_proxy) as sock:
        assert net.round_trip(sock) < FAST
        toxic = echo_proxy.add_toxic("latency", latency=600)
        assert net.round_trip(sock) >= 0.59
        echo_proxy.update_toxic(toxic.name, latency=0)
        assert net.round_trip(sock) < FAST
        echo_proxy.update_toxic(toxic.name, latency=600)
        assert net.round_trip(sock) >= 0.59
        echo_proxy.remove_toxic(toxic.name)
        assert net.round_trip(sock) < FAST


def test_removing_a_latency_toxic_flushes_the_held_chunk_at_once(echo_proxy: Proxy, net) -> None:
    toxic = echo_proxy.add_toxic("latency", latency=5000)
    with net.connect(echo_proxy) as sock:
        start = time.perf_counter()
        sock.sendall(b"held")
        threading.Timer(0.1, echo_proxy.remove_toxic, args=(toxic.name,)).start()
        assert net.recv_exactly(sock, 4) == b"held"
        assert time.perf_counter() - start < 2


def test_disable_drops_open_connections_and_refuses_new_ones(echo_proxy: Proxy, net) -> None:
    with net.connect(echo_proxy) as sock:
        net.round_trip(sock)
        with echo_proxy.partition():
            assert sock.recv(10) == b""
            with pytest.raises(ConnectionRefusedError):
                net.connect(echo_proxy)
    with net.connect(echo_proxy) as sock:
        assert net.round_trip(sock) < FAST


def test_delete_closes_open_connections(echo_proxy: Proxy, net) -> None:
    with net.connect(echo_proxy) as sock:
        net.round_trip(sock)
        echo_proxy.delete()
        assert sock.recv(10) == b""


@pytest.mark.usefixtures("embedded_only")
def test_one_way_blackhole_upstream_swallows_requests_but_keeps_the_connection(
    echo_proxy: Proxy, net
) -> None:
    with net.connect(echo_proxy) as sock:
        with echo_proxy.one_way_partition("upstream"):
            sock.sendall(b"lost")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(10)  # no echo, and no EOF either
            sock.settimeout(5)
        assert net.round_trip(sock, b"back") < FAST  # same connection works again


@pytest.mark.usefixtures("embedded_only")
def test_one_way_blackhole_downstream_delivers_requests_only(
    dcore_toxiproxy: ToxiproxyClient, upstreams, net
) -> None:
    received: list[bytes] = []
    got = threading.Event()

    def recorder(conn: socket.socket) -> None:
        while data := conn.recv(100):
            received.append(data)
            got.set()
            conn.sendall(data)

    port = upstreams.start(recorder)
    proxy = dcore_toxiproxy.create_proxy("rec", "127.0.0.1:0", f"127.0.0.1:{port}")
    with proxy.one_way_partition("downstream"), net.connect(proxy) as sock:
        sock.sendall(b"req")
        assert got.wait(5)
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)
    assert received == [b"req"]


def test_unreachable_upstream_accepts_then_closes(dcore_toxiproxy: ToxiproxyClient, net) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    proxy = dcore_toxiproxy.create_proxy("dead", "127.0.0.1:0", f"127.0.0.1:{dead_port}")
    with net.connect(proxy) as sock:
        assert sock.recv(10) == b""


def test_client_half_close_tears_down_both_directions(echo_proxy: Proxy, net) -> None:
    with net.connect(echo_proxy) as sock:
        sock.sendall(b"x")
        net.recv_exactly(sock, 1)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
