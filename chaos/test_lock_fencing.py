"""A lock holder partitioned past its TTL: the lock moves on, its late write is caught.

Worker A takes a Redis lock through the proxy and writes under it. Then A is cut off
from Redis (the proxy disabled, or A's requests swallowed one way) for longer than the
lock's TTL. A cannot renew the lock; Redis expires it; worker B, on a direct
connection, takes it with a higher fence and writes. A, still believing it holds the
lock and still able to reach storage, writes late: the fenced write rejects it. After
the heal A's release reports ``LockLostError`` instead of releasing B's lock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest
from chaos_fencing import FencedStorage, StaleFenceError

from dcore.backends.redis_locks import RedisLocks
from dcore.backends.s3 import S3Storage
from dcore.errors import LockLostError, ServiceUnavailableError
from dcore_testing.chaos.services import ChaosRedis

pytestmark = pytest.mark.chaos

TTL = 1.0
#: B waits at most this long for A's TTL to run out (it runs out after about TTL)
ACQUIRE_WAIT = TTL + 10.0
KEY = "reports/daily.csv"


def _cut_off(chaos_redis: ChaosRedis, how: str) -> AbstractContextManager[Any]:
    if how == "partition":
        return chaos_redis.proxy.partition()
    return chaos_redis.proxy.one_way_partition("upstream")  # A's requests vanish


@pytest.mark.parametrize("how", ["partition", "one_way_partition"])
def test_lock_holder_partitioned_past_its_ttl_loses_the_lock_and_its_late_write_is_rejected(
    chaos_redis: ChaosRedis, s3_storage: S3Storage, how: str
) -> None:
    """Invariant: after A's TTL ran out while A was partitioned, B holds the lock with a
    strictly greater fence; the stored object is B's; A's late fenced write raises
    StaleFenceError and changes nothing; A's release raises LockLostError and leaves B's
    lock held."""
    locks_a = RedisLocks(chaos_redis.connect(socket_timeout=0.5), prefix=chaos_redis.prefix)
    locks_b = RedisLocks(chaos_redis.direct, prefix=chaos_redis.prefix)
    storage = FencedStorage(s3_storage)

    lock_a = locks_a.lock("daily-report", ttl=TTL)
    assert lock_a.acquire(timeout=5.0)
    fence_a = lock_a.fence
    assert fence_a is not None
    storage.put(KEY, b"A: first draft", fence_a)

    with _cut_off(chaos_redis, how):
        with pytest.raises(ServiceUnavailableError):
            lock_a.extend(30.0)  # A cannot renew: the TTL will run out
        lock_b = locks_b.lock("daily-report", ttl=30.0)
        assert lock_b.acquire(timeout=ACQUIRE_WAIT), "B never got the lock after A's TTL"
        fence_b = lock_b.fence
        assert fence_b is not None
        assert fence_b > fence_a
        storage.put(KEY, b"B: final", fence_b)

        with pytest.raises(StaleFenceError) as stale:
            storage.put(KEY, b"A: late overwrite", fence_a)
        assert (stale.value.fence, stale.value.latest) == (fence_a, fence_b)

    assert s3_storage.get(KEY) == b"B: final"
    assert storage.latest_fence(KEY) == fence_b
    assert not lock_a.owned()
    with pytest.raises(LockLostError):
        lock_a.release()
    assert lock_b.owned(), "A's release must not have released B's lock"
    lock_b.release()
