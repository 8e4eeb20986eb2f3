"""Benchmark the Redis job store against raw redis-py HSET round trips.

Run: ``python benchmarks/bench_jobstore.py [--seconds 2] [--url redis://...]``.

Each job-store transition is one EVALSHA of the transition script (check, update, history,
indexes, TTL) — one round trip, like an HSET, but doing much more work server-side. The
baseline is measured in the same run on the same server and connection, so the ratios
do not depend on how fast the machine is; a ratio near 1 means the store is
round-trip-bound, as it should be.

Server: a private ``redis-server`` on a free port if the binary is on PATH, else
``$REDIS_URL``, else ``redis://127.0.0.1:6379/15``. Keys use a per-run prefix and are
deleted at the end. Total run time is bounded (about 5 x ``--seconds``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from dcore.backends.redis_events import RedisEventBus
from dcore.backends.redis_jobs import RedisJobStore
from dcore.services.jobs import JobState
from dcore_testing.fixtures.redis import start_redis_server


def rate(op: Callable[[int], None], seconds: float) -> float:
    """Calls per second of ``op(i)`` over about ``seconds`` (after a short warm-up)."""
    for i in range(50):
        op(-i - 1)
    n, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            op(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - started)


def run(client: Any, seconds: float) -> list[tuple[str, float]]:
    prefix = f"bench-{os.getpid()}"
    store = RedisJobStore(client, prefix=prefix)
    bus = RedisEventBus(client, prefix=prefix)
    try:
        hset = rate(lambda i: client.hset(f"{prefix}:raw:{i}", "state", "RUNNING"), seconds)

        def create(i: int) -> None:
            store.create(f"c{i}")

        def lifecycle(i: int) -> None:
            job_id = f"l{i}"
            store.create(job_id)
            store.transition(job_id, JobState.RUNNING, expect=[JobState.PENDING])
            store.transition(job_id, JobState.SUCCEEDED, result={"i": i})

        def announced(i: int) -> None:
            """What a worker does with a Redis bus on the same server: each move publishes
            its state event in the same script, and no record is read back."""
            job_id = f"a{i}"
            store.create_announced(job_id, bus, "job.scheduled", {"job_id": job_id})
            store.transition_announced(job_id, JobState.RUNNING, bus, "job.started",
                                       {"job_id": job_id, "attempt": 1},
                                       expect=[JobState.PENDING])  # fmt: skip
            store.transition_announced(job_id, JobState.SUCCEEDED, bus, "job.succeeded",
                                       {"job_id": job_id, "attempt": 1},
                                       result={"i": i})  # fmt: skip

        created = rate(create, seconds)
        jobs = rate(lifecycle, seconds)
        announced_jobs = rate(announced, seconds)
        got = rate(lambda i: store.get(f"l{abs(i) % 100}"), seconds)
        return [
            ("raw HSET round trip (baseline)", hset),
            ("create()", created),
            ("transition (in create→RUNNING→SUCCEEDED)", jobs * 3),
            ("full job: create→RUNNING→SUCCEEDED", jobs),
            ("full job, each move with its state event", announced_jobs),
            ("get() (one read script)", got),
        ]
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--url", default=None, help="use this Redis instead of a private one")
    args = parser.parse_args()

    proc: subprocess.Popen[bytes] | None = None
    tmp = tempfile.TemporaryDirectory()
    url = args.url
    if url is None and shutil.which("redis-server"):
        proc, url = start_redis_server(Path(tmp.name))
        where = "private redis-server"
    else:
        url = url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
        where = url
    client = redis.Redis.from_url(url)
    try:
        rows = run(client, args.seconds)
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=5)
        tmp.cleanup()

    baseline = rows[0][1]
    print(f"Redis job store vs raw HSET round trips ({where}, {args.seconds:g} s each)\n")
    print(f"{'operation':<44} {'ops/s':>10} {'vs HSET':>8}")
    for name, ops in rows:
        print(f"{name:<44} {ops:>10,.0f} {ops / baseline:>7.2f}x")


if __name__ == "__main__":
    main()
