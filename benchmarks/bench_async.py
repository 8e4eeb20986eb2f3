"""Event-loop blocking per request: ``await pipeline.arun()`` vs ``pipeline.run()`` inside
an async endpoint, with the Celery dispatcher on a real Redis broker.

    .venv/bin/python benchmarks/bench_async.py [--requests 20] [--rounds 11]

Starts a private ``redis-server``; the job store and the event bus are Redis too, so a
hand-off costs what it costs in production: the job record and its event (one atomic
round trip), then the message sent to the broker. No worker runs: the messages go to a
queue nobody consumes, purged after each round.

Each round serves ``--requests`` concurrent requests on one event loop, per variant,
the variants interleaved in a rotating order. A request builds its context and then:

- *strict* (the floor): awaits nothing else, the least an async request costs the loop;
- *arun*: ``await pipeline.arun()`` (the hand-off in a worker thread);
- *run*: ``pipeline.run()`` called in the coroutine, as an async endpoint would if it
  had no ``arun()``: the loop waits for the round trips.

Blocking is measured inside the loop: every callback it runs (a task's step included)
is timed, so "busy per request" is the loop's time spent running the round's callbacks
divided by the requests, and "longest" the longest single callback (how long every
other request waited at once). The table prints min and median over the rounds, and
the ratio of the medians to the strict floor's. Bounded: well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
from bench_celery import _free_port, _start_redis

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    PipelineContext,
    core_function,
    use_environment,
)
from dcore_testing.chaos import ToxiproxyClient


class Upload(PipelineContext):
    name: str
    payload: bytes


@core_function("bench_async.stored")
def stored(ctx: Upload) -> str:
    return ctx.name


class LoopMeter:
    """Times every callback the event loop runs (``Handle._run``, which runs a task's
    steps too), for the whole process while installed."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.longest = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None  # the one measured

    def install(self) -> None:
        original = asyncio.events.Handle._run
        meter = self

        def timed(handle: Any) -> None:
            if handle._loop is not meter.loop:
                original(handle)
                return
            started = time.perf_counter()
            original(handle)
            spent = time.perf_counter() - started
            meter.busy += spent
            meter.longest = max(meter.longest, spent)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        self.busy = self.longest = 0.0


def _pipeline(ctx: Upload) -> Any:
    pipeline = ctx.create_pipeline(core_fn=stored)
    pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="logging")
    return pipeline


async def _strict(i: int) -> Any:
    Upload(name=f"f{i}", payload=b"x" * 1024)
    await asyncio.sleep(0)


async def _arun(i: int) -> Any:
    return await _pipeline(Upload(name=f"f{i}", payload=b"x" * 1024)).arun()


async def _run(i: int) -> Any:
    return _pipeline(Upload(name=f"f{i}", payload=b"x" * 1024)).run()


VARIANTS: dict[str, Callable[[int], Awaitable[Any]]] = {
    "strict": _strict,
    "arun": _arun,
    "run": _run,
}


def _round(meter: LoopMeter, variant: str, requests: int) -> tuple[float, float, float]:
    """One round of ``requests`` concurrent requests: loop busy µs per request, longest
    callback ms, wall ms."""
    handler = VARIANTS[variant]

    async def serve() -> None:
        await asyncio.gather(*(handler(i) for i in range(requests)))

    loop = meter.loop = asyncio.new_event_loop()
    try:
        meter.reset()
        started = time.perf_counter()
        loop.run_until_complete(serve())
        wall = time.perf_counter() - started
        busy, longest = meter.busy, meter.longest
    finally:
        loop.close()
    return busy / requests * 1e6, longest * 1e3, wall * 1e3


def _purge(client: redis.Redis[Any], queue: str) -> None:
    keys = list(client.scan_iter(f"{queue}*"))
    if keys:
        client.delete(*keys)


def _start_proxy(redis_url: str, latency_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    """The embedded Toxiproxy-compatible server in its own process (its work must not
    share this process's GIL), proxying Redis with ``latency_ms`` on every reply."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcore_testing.chaos", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = ToxiproxyClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 15
    while True:
        try:
            client.version()
            break
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("the chaos proxy did not start")
            time.sleep(0.05)
    upstream = redis_url.removeprefix("redis://").split("/")[0]
    proxy = client.create_proxy("redis", "127.0.0.1:0", upstream)
    proxy.add_toxic("latency", stream="downstream", latency=latency_ms, jitter=0)
    return proc, f"redis://127.0.0.1:{proxy.listen_port}/0"


def _measure(
    url: str, tmp: Path, requests: int, rounds: int, budget: float
) -> dict[str, list[tuple[float, float, float]]]:
    queue = "bench.async.unconsumed"
    settings = DcoreSettings(
        redis_url=url,
        celery_broker_url=url,
        job_store="redis",
        event_bus="redis",
        locks="redis",
        celery_queue=queue,
        storage_root=tmp / "storage",
    )
    env = Environment(settings)
    client: redis.Redis[Any] = redis.Redis.from_url(url)
    meter = LoopMeter()
    meter.install()
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    names = list(VARIANTS)
    deadline = time.monotonic() + budget
    with use_environment(env):
        for variant in names:  # warm-up: connections, compiled chains, threads
            _round(meter, variant, requests)
        _purge(client, queue)
        for n in range(rounds):
            order = names[n % len(names) :] + names[: n % len(names)]
            for variant in order:
                results[variant].append(_round(meter, variant, requests))
            _purge(client, queue)
            if time.monotonic() > deadline:
                print(f"(stopped after {n + 1} rounds: time bound)")
                break
    env.close()
    return results


def _table(title: str, results: dict[str, list[tuple[float, float, float]]]) -> None:
    strict = statistics.median(r[0] for r in results["strict"])
    print(f"\n{title} ({len(results['strict'])} rounds)")
    print(
        f"{'variant':<8} {'loop busy us/request (min-median)':>34} {'x strict':>9} "
        f"{'longest block ms (median)':>26} {'wall ms (median)':>17}"
    )
    for variant, rows in results.items():
        busy = sorted(r[0] for r in rows)
        median = statistics.median(busy)
        print(
            f"{variant:<8} {busy[0]:>20.1f} - {median:<11.1f} {median / strict:>9.1f} "
            f"{statistics.median(r[1] for r in rows):>26.2f} "
            f"{statistics.median(r[2] for r in rows):>17.1f}"
        )
    run = statistics.median(r[0] for r in results["run"])
    arun = statistics.median(r[0] for r in results["arun"])
    print(f"run() / arun() loop busy per request: {run / arun:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument(
        "--latency-ms", type=int, default=1, help="reply latency of the proxied Redis (default 1)"
    )
    args = parser.parse_args()

    print(
        f"{args.requests} concurrent requests per round, Celery dispatcher, "
        "Redis job store and event bus, no worker"
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_redis(Path(tmp))
        proxy: subprocess.Popen[bytes] | None = None
        try:
            _table(
                "Redis on loopback (~0.2 ms a round trip)",
                _measure(url, Path(tmp), args.requests, args.rounds, 20),
            )
            proxy, proxied = _start_proxy(url, args.latency_ms)
            _table(
                f"Redis behind a proxy adding {args.latency_ms} ms to every reply",
                _measure(proxied, Path(tmp), args.requests, args.rounds, 25),
            )
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(10)
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
