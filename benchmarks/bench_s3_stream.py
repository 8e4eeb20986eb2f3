"""Stream a large object through S3Storage and back; report the client's peak memory.

The claim under test: ``put_stream``/``get_stream`` never hold the object in memory, so a
1 GB object costs the client about one multipart part, not a gigabyte. moto keeps objects
in its own process, so the server runs as a separate process (``python -m moto.server``)
and only this process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is measured.

    .venv/bin/python benchmarks/bench_s3_stream.py             # 1 GiB
    .venv/bin/python benchmarks/bench_s3_stream.py --size-mb 64
    .venv/bin/python benchmarks/bench_s3_stream.py --endpoint http://127.0.0.1:9000 \\
        --access-key minioadmin --secret-key minioadmin        # an existing MinIO
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# run from a checkout without installing it
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1024 * 1024
TARGET_PEAK_RSS_MB = 150.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_subprocess() -> Iterator[str]:
    """moto's S3 server in a child process on 127.0.0.1; stopped (only it) at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on port {port}")
            time.sleep(0.1)  # a script polling a child's start-up, not a test
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def generated(size: int, chunk: int = MiB) -> Iterator[bytes]:
    """``size`` bytes made on the fly: one random block, stamped with its index."""
    block = os.urandom(chunk)
    sent = 0
    index = 0
    while sent < size:
        n = min(chunk, size - sent)
        yield index.to_bytes(8, "big") + block[8:n] if n > 8 else block[:n]
        sent += n
        index += 1


def run(endpoint: str, access_key: str, secret_key: str, size: int, part: int) -> int:
    from dcore.backends.s3 import S3Storage

    storage = S3Storage(
        endpoint_url=endpoint,
        bucket=f"dcore-bench-{uuid.uuid4().hex[:12]}",
        access_key=access_key,
        secret_key=secret_key,
        create_bucket=True,
        multipart_threshold=part,
        multipart_chunk_size=part,
        read_timeout=300,
    )
    storage.put("warm-up", b"x")  # client, connection pool and bucket ready
    baseline = peak_rss_mb()

    sent_digest = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for chunk in generated(size):
            sent_digest.update(chunk)
            yield chunk

    start = time.perf_counter()
    info = storage.put_stream("big.bin", source())
    put_seconds = time.perf_counter() - start
    after_put = peak_rss_mb()

    start = time.perf_counter()
    got_digest = hashlib.sha256()
    received = 0
    for chunk in storage.get_stream("big.bin", chunk_size=MiB):
        got_digest.update(chunk)
        received += len(chunk)
    get_seconds = time.perf_counter() - start
    peak = peak_rss_mb()

    ok = (
        info.size == received == size
        and info.sha256 == sent_digest.hexdigest() == got_digest.hexdigest()
        and storage.info("big.bin").sha256 == info.sha256
    )
    storage.delete("big.bin")
    storage.delete("warm-up")
    with suppress(Exception):
        storage.client.delete_bucket(Bucket=storage.bucket)
    storage.close()

    mb = size / MiB
    verdict = "PASS" if peak < TARGET_PEAK_RSS_MB else "MISS"
    rows = [
        ("object size", f"{mb:,.0f} MiB", "", ""),
        ("multipart part size", f"{part / MiB:,.0f} MiB", "", ""),
        ("client RSS before streaming", f"{baseline:,.1f} MB", "", ""),
        ("client peak RSS after put_stream", f"{after_put:,.1f} MB", "", ""),
        (
            "client peak RSS (put + get)",
            f"{peak:,.1f} MB",
            f"< {TARGET_PEAK_RSS_MB:.0f} MB",
            verdict,
        ),
        ("put_stream throughput", f"{mb / put_seconds:,.1f} MiB/s", "", f"{put_seconds:.1f} s"),
        ("get_stream throughput", f"{mb / get_seconds:,.1f} MiB/s", "", f"{get_seconds:.1f} s"),
        (
            "size and sha256 round trip",
            "match" if ok else "MISMATCH",
            "match",
            "PASS" if ok else "FAIL",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measure", "value", "target", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0 if ok and verdict == "PASS" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--part-mb", type=int, default=8, help="multipart part size in MiB")
    parser.add_argument("--endpoint", help="an existing S3 endpoint (default: start moto)")
    parser.add_argument("--access-key", default="bench-access-key")
    parser.add_argument("--secret-key", default="bench-secret-key")
    args = parser.parse_args(argv)
    size, part = args.size_mb * MiB, args.part_mb * MiB
    if args.endpoint:
        return run(args.endpoint, args.access_key, args.secret_key, size, part)
    with moto_subprocess() as endpoint:
        return run(endpoint, args.access_key, args.secret_key, size, part)


if __name__ == "__main__":
    sys.exit(main())
