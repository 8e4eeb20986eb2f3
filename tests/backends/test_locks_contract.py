"""The lock contract, run against memory, fakeredis and a real Redis."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dcore._core.environment import Environment
from dcore._core.settings import DcoreSettings
from dcore.backends.memory import MemoryLocks
from dcore.backends.redis_locks import RedisLocks
from dcore.errors import LockLostError, LockNotAcquired, ServiceUnavailableError
from dcore.services.locks import LockInterface
from dcore_testing import ManualClock

WAIT = 5.0  # upper bound for anything that should happen "soon"; never reached when green
SHORT = 0.05  # a TTL that runs out quickly on Redis's real clock


@dataclass
class Harness:
    locks: LockInterface
    client: Any  # None for memory
    clock: ManualClock

    def run_out(self, name: str, ttl: float) -> None:
        """Let ``ttl`` pass for lock ``name``: memory moves its clock; Redis expires keys on
        its own clock, so wait (bounded) until the key is gone."""
        if self.client is None:
            self.clock.advance(ttl)
            return
        deadline = time.monotonic() + WAIT
        while self.client.exists(f"dcore:lock:{name}") and time.monotonic() < deadline:
            time.sleep(ttl / 5)  # Redis's expiry clock: nothing to wait on but time

    def remaining(self, name: str) -> float:
        """Seconds of TTL left on ``name`` (memory: on its clock)."""
        if self.client is not None:
            return float(self.client.pttl(f"dcore:lock:{name}")) / 1000
        assert isinstance(self.locks, MemoryLocks)
        expires = self.locks.held[name].expires_at
        assert expires is not None
        return expires - self.clock.monotonic()


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = ManualClock()
    if request.param == "memory":
        locks: LockInterface = MemoryLocks(clock)
        client = None
    else:
        client = request.getfixturevalue(
            "dcore_fake_redis" if request.param == "fakeredis" else "dcore_redis_client"
        )
        locks = RedisLocks(client, poll_interval=0.002)
    yield Harness(locks, client, clock)
    locks.close()


def test_only_one_thread_holds_the_lock_at_a_time(h: Harness) -> None:
    holders: list[int] = []
    max_holders = 0
    total = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal max_holders, total
        for _ in range(10):
            with h.locks.lock("m", ttl=WAIT * 4, timeout=WAIT):
                with guard:
                    holders.append(1)
                    max_holders = max(max_holders, len(holders))
                seen = total
                time.sleep(0)  # invite a switch inside the critical section
                total = seen + 1
                with guard:
                    holders.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT * 4)
    assert max_holders == 1
    assert total == 40


def test_ttl_expiry_lets_another_holder_in_with_a_higher_fence(h: Harness) -> None:
    first, second = h.locks.lock("x", ttl=SHORT), h.locks.lock("x", ttl=WAIT)
    assert first.acquire(blocking=False)
    assert first.owned()
    assert not second.acquire(blocking=False)
    h.run_out("x", SHORT)
    assert not first.owned()
    assert second.acquire(blocking=False)
    assert second.owned()
    assert first.fence is not None
    assert second.fence is not None
    assert second.fence > first.fence


def test_release_after_expiry_is_lock_lost_and_does_not_free_the_new_holder(h: Harness) -> None:
    late, taker = h.locks.lock("x", ttl=SHORT), h.locks.lock("x", ttl=WAIT)
    late.acquire()
    h.run_out("x", SHORT)
    taker.acquire()
    with pytest.raises(LockLostError, match="expired"):
        late.release()
    assert taker.owned()
    assert not h.locks.lock("x").acquire(blocking=False)
    taker.release()
    assert not taker.owned()


def test_release_after_expiry_with_no_new_holder_is_still_lock_lost(h: Harness) -> None:
    late = h.locks.lock("x", ttl=SHORT)
    late.acquire()
    h.run_out("x", SHORT)
    with pytest.raises(LockLostError):
        late.release()


def test_extend_after_expiry_is_lock_lost(h: Harness) -> None:
    late, taker = h.locks.lock("x", ttl=SHORT), h.locks.lock("x", ttl=WAIT)
    late.acquire()
    h.run_out("x", SHORT)
    taker.acquire()
    with pytest.raises(LockLostError):
        late.extend(10)
    assert taker.owned()


def test_extend_by_a_negative_time_is_a_value_error_and_keeps_the_ttl(h: Harness) -> None:
    lock = h.locks.lock("x", ttl=10)
    lock.acquire()
    with pytest.raises(ValueError, match=r"^additional must be >= 0 seconds, got -1$"):
        lock.extend(-1)
    assert 9 < h.remaining("x") <= 10
    lock.release()


def test_extend_adds_to_the_remaining_ttl(h: Harness) -> None:
    lock = h.locks.lock("x", ttl=10)
    lock.acquire()
    assert 9 < h.remaining("x") <= 10
    lock.extend(20)
    assert 29 < h.remaining("x") <= 30
    assert lock.owned()
    lock.release()


def test_fence_strictly_increases_with_every_acquisition(h: Harness) -> None:
    fences = []
    for _ in range(5):
        lock = h.locks.lock("f", ttl=WAIT)
        assert lock.acquire()
        fences.append(lock.fence)
        lock.release()
    other = h.locks.lock("other")
    other.acquire()
    assert fences == [1, 2, 3, 4, 5]
    assert other.fence == 1  # one counter per name


def test_blocking_acquire_gives_up_after_the_timeout(h: Harness) -> None:
    holder = h.locks.lock("x", ttl=WAIT * 4)
    holder.acquire()
    waiter = h.locks.lock("x", ttl=WAIT)
    started = time.monotonic()
    assert waiter.acquire(timeout=0.05) is False
    assert 0.04 <= time.monotonic() - started < WAIT
    assert waiter.fence is None
    with pytest.raises(LockNotAcquired, match="'x'"), h.locks.lock("x", timeout=0.05):
        pytest.fail("entered a lock someone else holds")


def test_a_blocked_acquire_proceeds_when_the_holder_releases(h: Harness) -> None:
    holder = h.locks.lock("x", ttl=WAIT * 4)
    holder.acquire()
    timer = threading.Timer(0.05, holder.release)  # released while the other waits
    timer.start()
    waiter = h.locks.lock("x", ttl=WAIT)
    assert waiter.acquire(timeout=WAIT)
    timer.join()
    assert waiter.owned()
    assert not holder.owned()


def test_locks_are_not_reentrant(h: Harness) -> None:
    lock = h.locks.lock("x", ttl=WAIT)
    assert lock.acquire()
    assert lock.acquire(blocking=False) is False
    assert lock.owned()
    lock.release()


def test_a_lock_can_be_released_from_another_thread(h: Harness) -> None:
    lock = h.locks.lock("x", ttl=WAIT)
    lock.acquire()
    errors: list[BaseException] = []

    def release() -> None:
        try:
            lock.release()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=release)
    t.start()
    t.join(timeout=WAIT)
    assert errors == []
    assert h.locks.lock("x").acquire(blocking=False)


def test_misuse_is_reported_clearly(h: Harness) -> None:
    never = h.locks.lock("x")
    with pytest.raises(LockLostError, match="not held"):
        never.release()
    with pytest.raises(LockLostError, match="not held"):
        never.extend(1)
    forever = h.locks.lock("y", ttl=None)
    forever.acquire()
    with pytest.raises(ValueError, match="no ttl"):
        forever.extend(1)
    forever.release()
    with pytest.raises(LockLostError, match="not held"):
        forever.release()
    with pytest.raises(ValueError, match="ttl"):
        h.locks.lock("z", ttl=0)


def test_context_manager_holds_then_releases(h: Harness) -> None:
    with h.locks.lock("x", ttl=WAIT) as held:
        assert held.owned()
        assert not h.locks.lock("x").acquire(blocking=False)
    assert h.locks.lock("x").acquire(blocking=False)


def test_redis_locks_from_environment_prefix_their_keys(
    dcore_redis_url: str, dcore_redis_client: Any
) -> None:
    with Environment(DcoreSettings(redis_url=dcore_redis_url, key_prefix="t3")) as env:
        locks = RedisLocks.from_environment(env)
        with locks.lock("job-1"):
            assert sorted(dcore_redis_client.keys("*")) == [b"t3:lock:job-1", b"t3:lockfence:job-1"]
        locks.close()


def test_unreachable_redis_is_service_unavailable() -> None:
    locks = RedisLocks(url="redis://:pw@127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailableError, match=r"redis://:\*\*\*@127.0.0.1:1/0"):
        locks.lock("x").acquire(blocking=False)
    locks.close()


def test_redis_backends_import_without_redis_py_and_say_how_to_get_it() -> None:
    """``import dcore`` imports every backend module; redis-py is an optional extra."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import dcore.backends.redis_events, dcore.backends.redis_jobs\n"
        "from dcore.backends.redis_locks import RedisLocks\n"
        "try:\n"
        "    RedisLocks()\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'distributed-core[redis]'" in done.stdout
