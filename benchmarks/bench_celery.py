"""dcore through Celery vs a raw Celery task doing the same work, same broker, same run.

    .venv/bin/python benchmarks/bench_celery.py [--jobs 1000] [--rounds 3]

Starts a private ``redis-server`` on a free port and one ``--pool=solo`` Celery worker
serving both paths. Each round fills a queue with N messages (worker idle), then lets
the worker drain it; throughput is measured inside the worker, from the first task's
start to the last task's end, so worker start-up and the sender do not count. The work
is the same on every path: SHA-256 of a payload (1 and 16 KiB) carried in the message,
and one pipelined Redis round trip to record progress. The dcore path adds what dcore is
for: a JobMessage parsed and its pipeline rebuilt, and the job's RUNNING and SUCCEEDED
transitions (atomic, with history) plus their events. Two baselines: a bare raw task,
and a raw task doing the same job-state and event work by hand (two pipelined round
trips: the lean hand-written equivalent, without atomic transitions or history).

Target: dcore ≥ 0.85x the raw task doing the same work (median of the per-round ratios,
the two running back to back in each round, in turns first), no round below 0.8x. The
worker's and redis-server's CPU per task are printed beside the rates: on a shared
machine they move much less than throughput does. Sending rates (``pipeline.run()`` vs
``send_task``) are shown too. Bounded: a few seconds per round, under 2 minutes in all.

The sender side (``--only sender`` runs it alone, without a worker): ``pipeline.run()``
through the ``celery`` Dispatch (the job record written to Redis, then the message sent)
against the strict baseline, a bare ``app.send_task`` of the same message text (built
before the timer starts) with the same task id to the same queue on the same broker.
The queue has no consumer and is purged after each round. Target: dcore ≥ 0.8x the bare
send's rate. Rounds interleave the variants in a rotating order; min and median of the
per-round ratios. Also printed: the same pipeline built per request (``create_pipeline``
+ ``chain`` + ``run``), and a send of the same message through the same app by hand
with the record written first (``create_announced`` then ``send_task``), the lean
hand-written equivalent.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import redis

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    PipelineContext,
    core_function,
    use_environment,
)
from dcore.celery import make_celery_app

HERE = Path(__file__).resolve().parent
SIZES = (1024, 16 * 1024)
RAW_QUEUE = "bench.raw"
DRAIN_TIMEOUT = 60.0


class BenchContext(PipelineContext):
    payload: bytes
    run_id: str


def _record(run_id: str) -> None:
    """One pipelined round trip: first start (kept), last end, count."""
    client = _client()
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.set(f"bench:{run_id}:first", now, nx=True)
    pipe.set(f"bench:{run_id}:last", now)
    pipe.incr(f"bench:{run_id}:count")
    pipe.execute()


_clients: dict[str, redis.Redis[Any]] = {}


def _client() -> redis.Redis[Any]:
    url = os.environ["DCORE_REDIS_URL"]
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


@core_function("bench_celery.work", replace=True)
def work(ctx: BenchContext) -> str:
    """The dcore core function."""
    digest = hashlib.sha256(ctx.payload).hexdigest()
    _record(ctx.run_id)
    return digest


# the worker's app: dcore's, plus the raw task on the same broker
app = make_celery_app()


@app.task(name="bench.raw", shared=False)  # type: ignore[untyped-decorator]
def raw_task(payload: str, run_id: str) -> str:
    digest = hashlib.sha256(base64.b64decode(payload)).hexdigest()
    _record(run_id)
    return digest


@app.task(name="bench.raw_tracked", shared=False)  # type: ignore[untyped-decorator]
def raw_tracked_task(payload: str, run_id: str, job_id: str) -> str:
    """The same work plus what dcore records, written by hand the lean way: the job's
    state as a hash and a state event, each pair pipelined into one round trip."""
    client = _client()
    key = f"bench:job:{job_id}"
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={"state": "RUNNING", "updated_at": time.time()})
    pipe.hincrby(key, "attempts", 1)
    pipe.publish("job.started", f'{{"job_id": "{job_id}"}}')
    pipe.execute()
    digest = hashlib.sha256(base64.b64decode(payload)).hexdigest()
    _record(run_id)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={"state": "SUCCEEDED", "result": digest, "updated_at": time.time()})
    pipe.publish("job.succeeded", f'{{"job_id": "{job_id}"}}')
    pipe.execute()
    return digest


# -- the driver ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH")
    port = _free_port()
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
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.02)


def _wait_count(client: redis.Redis[Any], run_id: str, n: int) -> tuple[float, float]:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while int(client.get(f"bench:{run_id}:count") or 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id}: worker did not finish {n} tasks in time")
        time.sleep(0.01)
    first = float(client.get(f"bench:{run_id}:first") or 0)
    last = float(client.get(f"bench:{run_id}:last") or 0)
    return first, last


def _cpu(pid: int) -> float:
    """CPU seconds the process ``pid`` (every thread) has run so far (Linux)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9


class Round(NamedTuple):
    rate: float  # tasks/s in the worker, first task's start to last task's end
    send_rate: float  # sends/s while the round was being filled
    cpu: float  # CPU seconds per task of the worker while draining
    redis_cpu: float  # and of redis-server


def _drain(
    sender: Any, client: redis.Redis[Any], worker: str, queue: str, run_id: str, n: int,
    pids: tuple[int, int], send_rate: float,
) -> Round:  # fmt: skip
    """Let the worker drain the filled ``queue``; the round's rate and CPU per task."""
    worker_pid, redis_pid = pids
    cpu, redis_cpu = _cpu(worker_pid), _cpu(redis_pid)
    _pause(sender, worker, queue, False)
    first, last = _wait_count(client, run_id, n)
    return Round(
        n / (last - first),
        send_rate,
        (_cpu(worker_pid) - cpu) / n,
        (_cpu(redis_pid) - redis_cpu) / n,
    )


def _pause(control_app: Any, worker: str, queue: str, on: bool) -> None:
    """Stop (or resume) the worker consuming ``queue`` while a round is being filled."""
    if on:
        control_app.control.cancel_consumer(queue, destination=[worker], reply=True)
    else:
        control_app.control.add_consumer(queue, destination=[worker], reply=True)


def _round_raw(
    sender: Any,
    client: redis.Redis[Any],
    worker: str,
    n: int,
    size: int,
    pids: tuple[int, int],
    tracked: bool = False,
) -> Round:
    run_id = uuid.uuid4().hex
    encoded = base64.b64encode(os.urandom(size)).decode()
    _pause(sender, worker, RAW_QUEUE, True)
    start = time.perf_counter()
    for _ in range(n):
        if tracked:
            sender.send_task(
                "bench.raw_tracked", args=[encoded, run_id, uuid.uuid4().hex], queue=RAW_QUEUE
            )
        else:
            sender.send_task("bench.raw", args=[encoded, run_id], queue=RAW_QUEUE)
    send_rate = n / (time.perf_counter() - start)
    return _drain(sender, client, worker, RAW_QUEUE, run_id, n, pids, send_rate)


def _round_dcore(
    sender: Any,
    env: Environment,
    client: redis.Redis[Any],
    worker: str,
    n: int,
    size: int,
    pids: tuple[int, int],
) -> Round:
    run_id = uuid.uuid4().hex
    queue = f"{env.settings.celery_queue}.0"
    _pause(sender, worker, queue, True)
    payload = os.urandom(size)
    contexts = [BenchContext(payload=payload, run_id=run_id) for _ in range(n)]
    start = time.perf_counter()
    with use_environment(env):
        for ctx in contexts:
            pipeline = ctx.create_pipeline(core_fn=work)
            pipeline.chain(Dispatch, plugin="celery")
            pipeline.run()
    send_rate = n / (time.perf_counter() - start)
    return _drain(sender, client, worker, queue, run_id, n, pids, send_rate)


# -- the sender side ------------------------------------------------------------------------
SENDER_QUEUE = "bench.sender"  # no worker consumes it


def _sender_env(url: str) -> Environment:
    return Environment(
        DcoreSettings(
            redis_url=url,
            celery_broker_url=url,
            job_store="redis",
            event_bus="redis",
            locks="redis",
            celery_queue=SENDER_QUEUE,
        )
    )


def _sender_pipeline(ctx: BenchContext) -> Any:
    pipeline = ctx.create_pipeline(core_fn=work)
    pipeline.chain(Dispatch, plugin="celery")
    return pipeline


def _purge(client: redis.Redis[Any]) -> None:
    """Drop the round's messages and job records (nothing consumes them)."""
    client.delete(f"{SENDER_QUEUE}.0")
    keys = list(client.scan_iter("dcore:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def _sender_round(
    variant: str, env: Environment, n: int, size: int, client: redis.Redis[Any]
) -> tuple[float, float]:
    """Seconds for ``n`` sends of one variant, and the CPU seconds this process spent on
    them (set-up before the timer, purge after)."""
    from dcore._core.lifecycle import schedule
    from dcore.celery import TASK_NAME, queue_for
    from dcore.dispatchers.celery import celery_app

    app = celery_app(env)
    payload = os.urandom(size)
    run_id = uuid.uuid4().hex
    with use_environment(env):
        contexts = [BenchContext(payload=payload, run_id=run_id) for _ in range(n)]
        built = _sender_pipeline(contexts[0])
        messages = [built.continuation(1).to_message(ctx).to_json() for ctx in contexts]
        queue = queue_for(contexts[0].shard_key, env.settings)
        cpu = time.process_time()
        start = time.perf_counter()
        if variant == "send_task":
            for ctx, text in zip(contexts, messages, strict=True):
                app.send_task(TASK_NAME, args=[text], queue=queue, task_id=ctx.job_id)
        elif variant == "by_hand":
            for ctx, text in zip(contexts, messages, strict=True):
                schedule(env, ctx.job_id, message=text)
                app.send_task(TASK_NAME, args=[text], queue=queue, task_id=ctx.job_id)
        elif variant == "run":
            for ctx in contexts:
                built.run(ctx)
        else:  # "build_run": a pipeline built per request
            for ctx in contexts:
                _sender_pipeline(ctx).run()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    sent = client.llen(f"{queue}")
    _purge(client)
    if sent != n:
        raise SystemExit(f"{variant}: {sent} messages on {queue}, expected {n}")
    return elapsed, cpu


def sender_rows(url: str, rounds: int, n: int, size: int) -> list[tuple[str, str, str, str]]:
    """The sender-side table: per-send µs (min / median) and rates against send_task."""
    env = _sender_env(url)
    client = redis.Redis.from_url(url)
    variants = ["send_task", "run", "by_hand", "build_run"]
    runs: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for v in variants:  # warm-up: connections, caches, the compiled chain
            _sender_round(v, env, 50, size, client)
        for r in range(rounds):
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                elapsed, cpu = _sender_round(v, env, n, size, client)
                runs[v].append(elapsed)
                cpus[v].append(cpu)
    finally:
        env.close()
        client.close()

    def ratios(v: str) -> list[float]:  # rate(v) / rate(send_task), per round
        return sorted(b / c for b, c in zip(runs["send_task"], runs[v], strict=True))

    def us(v: str) -> str:
        return (
            f"{min(runs[v]) / n * 1e6:,.0f} / "
            f"{statistics.median(runs[v]) / n * 1e6:,.0f} us, "
            f"CPU {statistics.median(cpus[v]) / n * 1e6:,.0f} us"
        )

    def rate(v: str) -> str:
        rs = ratios(v)
        return f"{statistics.median(rs):.2f}x (rounds {rs[0]:.2f}-{rs[-1]:.2f})"

    main_ratio = statistics.median(ratios("run"))
    return [
        ("strict: bare app.send_task of the same message", "baseline", us("send_task"), ""),
        (
            "dcore pipeline.run(), celery Dispatch (record + send)",
            ">= 0.80x",
            f"{us('run')}, {rate('run')}",
            "PASS" if main_ratio >= 0.8 else "MISS",
        ),
        ("by hand: create_announced + send_task", "-", f"{us('by_hand')}, {rate('by_hand')}", ""),
        (
            "dcore create_pipeline + chain + run per request",
            "-",
            f"{us('build_run')}, {rate('build_run')}",
            "",
        ),
    ]


def _print_sender(rows: list[tuple[str, str, str, str]], n: int, size: int, rounds: int) -> None:
    print(
        f"\nsender side: {n} sends x {rounds} interleaved rounds, {size // 1024} KiB context, "
        "per send (min / median; the sender's CPU, median) and rate vs send_task (median "
        "of per-round ratios)\n"
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--stores",
        choices=("redis", "memory"),
        default="redis",
        help="the worker's job store and event bus (memory isolates dcore's "
        "own overhead from Redis round trips)",
    )
    parser.add_argument(
        "--only", choices=("worker", "sender"), help="run only the worker side or the sender side"
    )
    parser.add_argument(
        "--sender-rounds",
        type=int,
        default=7,
        help="interleaved rounds of the sender side (default 7)",
    )
    args = parser.parse_args()

    if args.only == "sender":
        with tempfile.TemporaryDirectory() as tmp:
            redis_proc, url = _start_redis(Path(tmp))
            try:
                rows = sender_rows(url, args.sender_rounds, args.jobs, SIZES[0])
            finally:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
        _print_sender(rows, args.jobs, SIZES[0], args.sender_rounds)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = _start_redis(Path(tmp))
        hostname = f"bench-{uuid.uuid4().hex[:6]}@127.0.0.1"
        settings = DcoreSettings(
            redis_url=url,
            celery_broker_url=url,
            job_store="redis",
            event_bus="redis",
            locks="redis",
            celery_queue="bench.dcore",
        )
        worker_env = {
            **os.environ,
            "DCORE_REDIS_URL": url,
            "DCORE_CELERY_BROKER_URL": url,
            "DCORE_JOB_STORE": args.stores,
            "DCORE_EVENT_BUS": args.stores,
            "DCORE_LOCKS": "redis",
            "DCORE_CELERY_QUEUE": "bench.dcore",
            "DCORE_IMPORTS": '["bench_celery"]',
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        }
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench_celery:app",
                    "worker",
                    "--pool=solo",
                    "-Q",
                    f"{RAW_QUEUE},bench.dcore.0",
                    "-n",
                    hostname,
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                    "-l",
                    "WARNING",
                ],
                env=worker_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        env = Environment(settings)
        sender = make_celery_app(settings)
        client = redis.Redis.from_url(url)
        try:
            deadline = time.monotonic() + 30
            while not sender.control.ping(destination=[hostname], timeout=0.5):
                if worker.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(errors="replace")[-3000:])
                    return 1
            results: dict[tuple[str, int], list[Round]] = {}
            pids = (worker.pid, redis_proc.pid)
            _round_raw(sender, client, hostname, 100, SIZES[0], pids)  # warm-up
            _round_dcore(sender, env, client, hostname, 100, SIZES[0], pids)
            for size in SIZES:
                raw, tracked, dc = (
                    results[("raw", size)],
                    results[("tracked", size)],
                    results[("dcore", size)],
                ) = [], [], []
                for i in range(args.rounds):
                    raw.append(_round_raw(sender, client, hostname, args.jobs, size, pids))
                    # the pair compared runs back to back, in turns first (load drifts)
                    for path in ("tracked", "dcore")[:: 1 if i % 2 == 0 else -1]:
                        if path == "tracked":
                            tracked.append(
                                _round_raw(
                                    sender, client, hostname, args.jobs, size, pids, tracked=True
                                )
                            )
                        else:
                            dc.append(
                                _round_dcore(sender, env, client, hostname, args.jobs, size, pids)
                            )
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
            sender.close()
            env.close()
            client.close()
            sender_table = None
            if args.only is None and worker.returncode is not None:
                sender_table = sender_rows(url, args.sender_rounds, args.jobs, SIZES[0])
            redis_proc.terminate()
            redis_proc.wait(timeout=10)

    print(
        f"\n{args.jobs} tasks x {args.rounds} rounds (median of rounds), solo worker, "
        f"Redis broker, worker stores: {args.stores}\n"
    )
    print(
        f"{'payload':>8}  {'path':<36} {'tasks/s':>9} {'vs raw':>7} {'vs tracked':>10} "
        f"{'CPU us/task: worker + redis':>28}"
    )
    print("-" * 107)
    worst_tracked = worst_bare = float("inf")
    for size in SIZES:

        def median(path: str, field: str, size: int = size) -> float:
            return statistics.median(getattr(r, field) for r in results[(path, size)])

        def cpu(path: str) -> str:
            worker_us, redis_us = (median(path, f) * 1e6 for f in ("cpu", "redis_cpu"))
            return f"{worker_us:.0f} + {redis_us:.0f}"

        raw_rate, tr_rate, dc_rate = (median(p, "rate") for p in ("raw", "tracked", "dcore"))
        raw_send, dc_send = median("raw", "send_rate"), median("dcore", "send_rate")
        worst_bare = min(worst_bare, dc_rate / raw_rate)
        worst_tracked = min(worst_tracked, dc_rate / tr_rate)
        for label, rate, base, base2, cpu_us in [
            ("raw Celery task (worker)", raw_rate, raw_rate, tr_rate, cpu("raw")),
            ("raw task + hand-written tracking", tr_rate, raw_rate, tr_rate, cpu("tracked")),
            ("dcore via Celery (worker)", dc_rate, raw_rate, tr_rate, cpu("dcore")),
            ("raw send_task (sender)", raw_send, raw_send, None, None),
            ("dcore pipeline.run() (sender)", dc_send, raw_send, None, None),
        ]:  # fmt: skip
            vs2 = f"{rate / base2:>9.2f}x" if base2 else f"{'':>10}"
            us = f"{cpu_us:>28}" if cpu_us is not None else ""
            print(f"{size // 1024:>6}KiB  {label:<36} {rate:>9.0f} {rate / base:>6.2f}x {vs2} {us}")
    print("\ndcore vs the raw task doing the same work, per round (the two ran back to back):")
    per_round: list[float] = []
    for size in SIZES:
        pairs = list(zip(results[("tracked", size)], results[("dcore", size)], strict=True))
        ratios = [d.rate / t.rate for t, d in pairs]
        per_round += ratios
        print(f"{size // 1024:>6}KiB  rate    " + "  ".join(f"{r:.2f}x" for r in ratios))
        print(
            f"{'':>9}CPU     "
            + "  ".join(f"{(t.cpu + t.redis_cpu) / (d.cpu + d.redis_cpu):.2f}x" for t, d in pairs)
            + "  (the tracked task's CPU per task over dcore's: worker + redis-server)"
        )
    median_round = statistics.median(per_round)
    verdict = "meets" if median_round >= 0.85 and min(per_round) >= 0.8 else "misses"
    print(
        f"\nper-round ratios: median {median_round:.2f}x, min {min(per_round):.2f}x "
        f"({verdict} the target: median >= 0.85x, no round below 0.8x)"
    )
    print(
        f"worst dcore vs a raw task doing the same work (job state + events), medians of "
        f"rounds: {worst_tracked:.2f}x"
    )
    print(f"worst dcore vs a bare raw task (no job state, no events): {worst_bare:.2f}x")
    if sender_table is not None:
        _print_sender(sender_table, args.jobs, SIZES[0], args.sender_rounds)
    return 0


if __name__ == "__main__":
    # run the copy importable by name, so core_fn resolves as 'bench_celery:work'
    sys.path.insert(0, str(HERE))
    import bench_celery

    sys.exit(bench_celery.main())
