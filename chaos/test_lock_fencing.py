"""A lock holder in another process, partitioned past its TTL: its late write is refused.

Process A (``chaos_fencing.py``) runs a real pipeline, ``lock`` → ``hold`` →
``storage_write(fenced=True)``, on Redis locks through the proxy and S3 storage. Holding
the lock, it writes a first draft with its fence and stops. Then A is cut off from Redis
(the proxy disabled, or A's requests swallowed one way) for longer than the lock's TTL;
Redis expires the lock, and B (this process, on a direct connection) takes it with a
higher fence and writes. After the heal A goes on to its fenced write: S3's conditional
writes refuse it, across processes, and A's release reports the lost lock instead of
releasing B's.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from chaos_fencing import KEY

from dcore import Fence
from dcore.backends.redis_locks import RedisLocks
from dcore.backends.s3 import S3Storage
from dcore_testing.chaos.services import ChaosRedis
from dcore_testing.fixtures.s3 import S3Endpoint

pytestmark = pytest.mark.chaos

TTL = 1.0
#: B waits at most this long for A's TTL to run out (it runs out after about TTL)
ACQUIRE_WAIT = TTL + 10.0
#: seconds A may take to answer (it starts Python, dcore, boto3 and redis first)
ANSWER_WITHIN = 60.0
HOLDER = Path(__file__).with_name("chaos_fencing.py")


class Holder:
    """Process A, spoken to one JSON line at a time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HOLDER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )

    def read(self) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], ANSWER_WITHIN)
        assert ready, f"process A said nothing for {ANSWER_WITHIN}s"
        line = stdout.readline()
        assert line, f"process A ended (exit code {self.process.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def holder(
    dcore_chaos_redis: ChaosRedis, dcore_s3_endpoint: S3Endpoint, dcore_s3_bucket: str
) -> Iterator[Holder]:
    process = Holder(
        {
            "redis_url": dcore_chaos_redis.url,
            "prefix": dcore_chaos_redis.prefix,
            "ttl": TTL,
            "s3_endpoint": dcore_s3_endpoint.url,
            "bucket": dcore_s3_bucket,
            "region": dcore_s3_endpoint.region,
            "access_key": dcore_s3_endpoint.access_key,
            "secret_key": dcore_s3_endpoint.secret_key,
        }
    )
    try:
        yield process
    finally:
        process.close()


def _cut_off(chaos_redis: ChaosRedis, how: str) -> AbstractContextManager[Any]:
    if how == "partition":
        return chaos_redis.proxy.partition()
    return chaos_redis.proxy.one_way_partition("upstream")  # A's requests vanish


@pytest.mark.parametrize("how", ["partition", "one_way_partition"])
def test_a_holder_in_another_process_partitioned_past_its_ttl_has_its_write_refused(
    dcore_chaos_redis: ChaosRedis, dcore_s3_storage: S3Storage, holder: Holder, how: str
) -> None:
    """Invariant: after A's TTL ran out while A was partitioned, B holds the lock with a
    strictly greater fence; A's fenced write, made later from its own process, raises
    StaleFenceError and changes nothing; the object and its recorded fence are B's; A's
    release reports the lost lock and leaves B's lock held."""
    fence_a = Fence(*holder.read()["holding"])
    assert dcore_s3_storage.get(KEY) == b"A: first draft"
    assert holder.ask("probe") == {"probe": None}

    lock_b = RedisLocks(dcore_chaos_redis.direct, prefix=dcore_chaos_redis.prefix).lock(
        fence_a.lock, ttl=30.0
    )
    with _cut_off(dcore_chaos_redis, how):
        assert holder.ask("probe") == {"probe": "ServiceUnavailableError"}, "A is cut off"
        assert lock_b.acquire(timeout=ACQUIRE_WAIT), "B never got the lock after A's TTL"
        fence_b = Fence.of(lock_b)
        assert fence_b.number > fence_a.number
        dcore_s3_storage.put_fenced(KEY, b"B: final", fence_b)

    ended = holder.ask("go")  # A, healed, goes on to its fenced write
    assert ended["error"] == "StaleFenceError", ended
    assert (Fence(*ended["fence"]), Fence(*ended["latest"])) == (fence_a, fence_b)
    assert any("was lost before release" in note for note in ended["notes"]), ended
    assert dcore_s3_storage.get(KEY) == b"B: final"
    assert dcore_s3_storage.fence_of(KEY) == fence_b
    assert lock_b.owned(), "A's release must not have released B's lock"
    lock_b.release()
