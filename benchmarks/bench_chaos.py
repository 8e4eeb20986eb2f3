"""Benchmark the embedded Toxiproxy-compatible server: toxic accuracy and proxy overhead.

Run: ``python benchmarks/bench_chaos.py`` (``--quick`` for a smoke run; about two
minutes otherwise). All traffic is on 127.0.0.1. Prints target vs measured with a
PASS/MISS column; verdicts are on medians, and every row shows min and median.

Accuracy:

* latency 50 ms downstream: p50 echo round trip (target: within 2 ms of 50 ms)
* bandwidth 1000 KB/s downstream: measured rate (target: within 5 %)

Overhead of the proxy with no toxics, in interleaved rounds (each round runs every
variant once, in a rotating order, so load elsewhere on the machine hits them alike;
ratios are taken within a round):

* request rate: ``redis-benchmark -c 200`` (SET and GET, 3-byte values, no pipelining)
  against a private ``redis-server``. Also the CPU time the proxy spends per request,
  read from this process's rusage while redis-benchmark runs (the proxy is then the
  only thing this process does), which machine load moves far less than rates.
* bulk: 256 MiB from a local source, read through the proxy (target: at least 0.5x
  direct).

Baselines, strictest first:

* ``direct``: the client talks to the server itself. No proxy can beat it.
* ``relay``: the smallest asyncio relay we can write (a ``Protocol`` that writes each
  received chunk straight to the other socket, with flow control), on a loop thread
  like the embedded server's: what any pure-asyncio proxy costs at best. Target: the
  proxy's CPU per request at most 1.1x the relay's.

The real Toxiproxy (Go) is not installed here, so the target against its request rate
cannot be checked in the same run; ``benchmarks/README.md`` says what was measured
instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dcore_testing.chaos import ToxiproxyClient, ToxiproxyServer

BULK_BYTES = 256 * 1024 * 1024
CLIENTS = 200


# -- local servers ----------------------------------------------------------------------


def _serve(handler: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)

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
    block = b"x" * (1 << 20)

    def send(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            remaining = total
            while remaining > 0:
                n = min(remaining, len(block))
                conn.sendall(block[:n])
                remaining -= n

    return send


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A private, non-persistent redis-server on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; it comes with redis-benchmark")
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--maxclients",
                "2000",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


# -- the minimal relay baseline -----------------------------------------------------------


class _Half(asyncio.Protocol):
    """One socket of a relayed pair: what it receives is written to the other one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def _other(self) -> asyncio.Transport:
        other = self.peer.transport if self.peer is not None else None
        assert other is not None, "the relay reads only once both sockets are joined"
        return other

    def data_received(self, data: bytes) -> None:
        self._other().write(data)

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        for half in (self, self.peer):
            if half is not None and half.transport is not None:
                half.transport.close()

    def pause_writing(self) -> None:  # our output is full: stop reading the other socket
        self._other().pause_reading()

    def resume_writing(self) -> None:
        self._other().resume_reading()


class _ClientHalf(_Half):
    """The accepted socket: dials the upstream, then starts relaying."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, other = await loop.create_connection(_Half, *self.upstream)
        except OSError:
            self.transport.close()
            return
        self.peer, other.peer = other, self
        self.transport.resume_reading()


class Relay:
    """The minimal asyncio relay on its own loop thread."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()

        async def listen() -> asyncio.Server:
            return await self.loop.create_server(
                lambda: _ClientHalf(self.upstream), "127.0.0.1", 0, backlog=512
            )

        self._server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


# -- measures -----------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_rate(port: int, requests: int, cpu: list[float] | None = None) -> float:
    """requests/s of ``redis-benchmark -c 200`` SET + GET (total requests / total time).

    With ``cpu``, also appends this process's CPU µs per request: while
    redis-benchmark runs, this process only runs the proxy under test, so that is
    the proxy's cost, which load elsewhere on the machine hardly moves.
    """
    before = _cpu_seconds()
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(CLIENTS),
            "-n",
            str(requests),
            "-t",
            "set,get",
            "--csv",
            "-q",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    if len(rows) != 2:
        raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")
    if cpu is not None:
        cpu.append((_cpu_seconds() - before) / (2 * requests) * 1e6)
    seconds = sum(requests / float(row["rps"]) for row in rows)
    return 2 * requests / seconds


def bulk_rate(port: int) -> float:
    """MB/s reading :data:`BULK_BYTES` from a connection to ``port``."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        got = 0
        while got < BULK_BYTES:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"stream ended after {got} of {BULK_BYTES} bytes")
            got += len(data)
    return BULK_BYTES / (time.perf_counter() - start) / 1e6


@dataclass
class Samples:
    """Per-variant figures of interleaved rounds."""

    order: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, variant: str, value: float) -> None:
        self.values.setdefault(variant, []).append(value)

    def ratios(self, variant: str, baseline: str) -> list[float]:
        """Per-round ratios (each round's pair ran back to back)."""
        return [a / b for a, b in zip(self.values[variant], self.values[baseline], strict=True)]


def interleave(rounds: int, variants: dict[str, Callable[[], float]]) -> Samples:
    names = list(variants)
    samples = Samples(names)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples.add(name, variants[name]())
    return samples


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
        start = time.perf_counter()
        with socket.create_connection(proxy.address) as sock:
            got = 0
            while got < total:
                got += len(sock.recv(1 << 20) or b"x" * total)
        elapsed = time.perf_counter() - start
    proxy.delete()
    listener.close()
    return total / elapsed / 1000


def _proxy_port(client: ToxiproxyClient, name: str, upstream: int) -> int:
    return client.create_proxy(name, "127.0.0.1:0", f"127.0.0.1:{upstream}").listen_port


def bench_requests(
    client: ToxiproxyClient, rounds: int, requests: int
) -> tuple[Samples, dict[str, list[float]]]:
    """Request rates, and CPU µs per request of the relay and of the proxy."""
    cpu: dict[str, list[float]] = {"relay": [], "proxy": []}
    with redis_server() as redis, Relay(redis) as relay:
        proxied = _proxy_port(client, "bench_redis", redis)
        samples = interleave(
            rounds,
            {
                "direct": lambda: redis_rate(redis, requests),
                "relay": lambda: redis_rate(relay.port, requests, cpu["relay"]),
                "proxy": lambda: redis_rate(proxied, requests, cpu["proxy"]),
            },
        )
    return samples, cpu


def bench_bulk(client: ToxiproxyClient, rounds: int) -> Samples:
    listener, source = _serve(_source(BULK_BYTES))
    try:
        with Relay(source) as relay:
            proxied = _proxy_port(client, "bench_bulk", source)
            return interleave(
                rounds,
                {
                    "direct": lambda: bulk_rate(source),
                    "relay": lambda: bulk_rate(relay.port),
                    "proxy": lambda: bulk_rate(proxied),
                },
            )
    finally:
        listener.close()


# -- report -------------------------------------------------------------------------------


Row = tuple[str, str, str, bool | None]


def _span(values: list[float], fmt: str) -> str:
    return f"min {format(min(values), fmt)}, median {format(statistics.median(values), fmt)}"


def _rate_rows(
    what: str, samples: Samples, unit: str, fmt: str, target: float | None = None
) -> list[Row]:
    """Each variant's figures, then the proxy against the strict and the lenient baseline."""
    rows: list[Row] = [
        (f"{what}: {variant}", "", f"{_span(samples.values[variant], fmt)} {unit}", None)
        for variant in samples.order
    ]
    strict = samples.ratios("proxy", "direct")
    rows.append(
        (
            f"{what}: proxy/direct (strict)",
            "" if target is None else f">= {target}x",
            _span(strict, ".2f"),
            None if target is None else statistics.median(strict) >= target,
        )
    )
    rows.append((f"{what}: proxy/relay", "", _span(samples.ratios("proxy", "relay"), ".2f"), None))
    return rows


def report(
    p50: float, rate: float, req: Samples, cpu: dict[str, list[float]], bulk: Samples
) -> list[Row]:
    """The table: accuracy, then request rate and CPU, then bulk; verdicts on medians."""
    rows: list[Row] = [
        ("latency 50 ms: p50 RTT", "50 +/- 2 ms", f"{p50:.2f} ms", abs(p50 - 50) <= 2),
        ("bandwidth 1000 KB/s", "1000 +/- 5 %", f"{rate:.1f} KB/s", abs(rate - 1000) <= 50),
    ]
    rows += _rate_rows(f"redis -c {CLIENTS} req/s", req, "req/s", ",.0f")
    for variant, values in cpu.items():
        rows.append((f"redis: {variant} CPU/request", "", f"{_span(values, '.1f')} us", None))
    cpu_ratio = [p / r for p, r in zip(cpu["proxy"], cpu["relay"], strict=True)]
    rows.append(
        (
            "redis: proxy/relay CPU/request",
            "<= 1.1x",
            _span(cpu_ratio, ".2f"),
            statistics.median(cpu_ratio) <= 1.1,
        )
    )
    rows += _rate_rows("bulk MB/s", bulk, "MB/s", ".0f", target=0.5)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (7)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 7)
    requests = 10_000 if args.quick else 20_000

    echo, echo_port = _serve(_echo)
    with ToxiproxyServer() as server, ToxiproxyClient(server.url) as client:
        p50 = bench_latency(client, echo_port)
        rate = bench_bandwidth(client)
        req, cpu = bench_requests(client, rounds, requests)
        bulk = bench_bulk(client, rounds)
    echo.close()

    print(
        f"{rounds} interleaved rounds; redis-benchmark -c {CLIENTS}: {requests} SET + "
        f"{requests} GET per run; bulk: {BULK_BYTES >> 20} MiB per run"
    )
    print(f"{'benchmark':36} {'target':12} {'measured':36} result")
    for name, target, measured, ok in report(p50, rate, req, cpu, bulk):
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:36} {target:12} {measured:36} {verdict}")
    print(
        "The real Toxiproxy is not installed here, so the target against its request rate "
        "cannot be checked in this run; see benchmarks/README.md."
    )


if __name__ == "__main__":
    main()
