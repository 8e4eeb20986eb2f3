"""Benchmark the embedded Toxiproxy-compatible server: toxic accuracy and overhead.

Run: ``python benchmarks/bench_chaos.py``. Prints target vs measured with a
PASS/MISS column; finishes in well under a minute. All traffic is on 127.0.0.1.

* latency 50 ms downstream: p50 echo round trip (target: within 2 ms of 50 ms)
* bandwidth 1000 KB/s downstream: measured rate (target: within 5 %)
* throughput with no toxics vs direct loopback (target: at least 0.1x)
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable

from dcore_testing.chaos import ToxiproxyClient, ToxiproxyServer


def _serve(handler: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return listener, listener.getsockname()[1]


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _source(total: int) -> Callable[[socket.socket], None]:
    block = b"x" * 65536

    def send(conn: socket.socket) -> None:
        with conn:
            remaining = total
            while remaining > 0:
                n = min(remaining, len(block))
                conn.sendall(block[:n])
                remaining -= n

    return send


def _drain(address: tuple[str, int], total: int) -> float:
    """Connect, read ``total`` bytes, return seconds taken."""
    start = time.perf_counter()
    with socket.create_connection(address) as sock:
        got = 0
        while got < total:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"stream ended after {got} of {total} bytes")
            got += len(data)
    return time.perf_counter() - start


def bench_latency(client: ToxiproxyClient, echo_port: int) -> float:
    proxy = client.create_proxy("bench_latency", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
    samples = []
    with proxy.latency(50), socket.create_connection(proxy.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(60):
            start = time.perf_counter()
            sock.sendall(b"ping")
            sock.recv(64)
            samples.append((time.perf_counter() - start) * 1000)
    proxy.delete()
    return statistics.median(samples)


def bench_bandwidth(client: ToxiproxyClient) -> float:
    total = 2_000_000
    listener, port = _serve(_source(total))
    proxy = client.create_proxy("bench_bandwidth", "127.0.0.1:0", f"127.0.0.1:{port}")
    with proxy.bandwidth(1000):
        elapsed = _drain(proxy.address, total)
    proxy.delete()
    listener.close()
    return total / elapsed / 1000


def bench_throughput(client: ToxiproxyClient) -> tuple[float, float]:
    total = 256 * 1024 * 1024
    listener, port = _serve(_source(total))
    direct = total / _drain(("127.0.0.1", port), total) / 1e6
    proxy = client.create_proxy("bench_throughput", "127.0.0.1:0", f"127.0.0.1:{port}")
    proxied = total / _drain(proxy.address, total) / 1e6
    proxy.delete()
    listener.close()
    return direct, proxied


def main() -> None:
    echo, echo_port = _serve(_echo)
    with ToxiproxyServer() as server, ToxiproxyClient(server.url) as client:
        p50 = bench_latency(client, echo_port)
        rate = bench_bandwidth(client)
        direct, proxied = bench_throughput(client)
    echo.close()
    ratio = proxied / direct
    rows = [
        ("latency 50 ms: p50 RTT", "50 +/- 2 ms", f"{p50:.2f} ms", abs(p50 - 50) <= 2),
        ("bandwidth 1000 KB/s", "1000 +/- 5 %", f"{rate:.1f} KB/s", abs(rate - 1000) <= 50),
        (
            "throughput no toxics / direct",
            ">= 0.1x",
            f"{ratio:.2f}x ({proxied:.0f} / {direct:.0f} MB/s)",
            ratio >= 0.1,
        ),
    ]
    print(f"{'benchmark':32} {'target':14} {'measured':34} result")
    for name, target, measured, ok in rows:
        print(f"{name:32} {target:14} {measured:34} {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
