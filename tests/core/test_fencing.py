"""``current_fence()``: what the lock stage hands to the stages after it. Scoped to the
block that holds it (also on error), stacked when nested, private to a thread and to an
asyncio task; ``Fence`` values checked up front with messages that name the fix."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import dcore
from dcore import Fence, current_fence
from dcore.services.fencing import check_fence, holding_fence


def test_no_fence_outside_a_lock() -> None:
    assert current_fence() is None
    assert current_fence("report") is None


def test_nested_fences_stack_and_each_is_found_by_name() -> None:
    with holding_fence(Fence("outer", 4)):
        assert current_fence() == Fence("outer", 4)
        with holding_fence(Fence("inner", 9)):
            assert current_fence() == Fence("inner", 9)
            assert current_fence("outer") == Fence("outer", 4)
            assert current_fence("inner") == Fence("inner", 9)
            assert current_fence("other") is None
        assert current_fence() == Fence("outer", 4)
        assert current_fence("inner") is None
    assert current_fence() is None


def test_the_same_name_nested_finds_the_innermost() -> None:
    with holding_fence(Fence("a", 1)), holding_fence(Fence("a", 2)):
        assert current_fence("a") == Fence("a", 2)


def test_the_fence_is_gone_after_a_failing_block() -> None:
    with pytest.raises(KeyError), holding_fence(Fence("a", 1)):
        raise KeyError("failed under the lock")
    assert current_fence() is None


def test_another_thread_does_not_see_the_fence() -> None:
    seen: list[Fence | None] = []
    with holding_fence(Fence("a", 1)):
        thread = threading.Thread(target=lambda: seen.append(current_fence()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_concurrent_asyncio_tasks_each_see_their_own_fence() -> None:
    async def holder(number: int, both_inside: asyncio.Barrier) -> Fence | None:
        with holding_fence(Fence("a", number)):
            await both_inside.wait()  # the other task holds its own fence now
            return current_fence()

    async def main() -> list[Fence | None]:
        both_inside = asyncio.Barrier(2)
        return list(await asyncio.gather(holder(1, both_inside), holder(2, both_inside)))

    assert asyncio.run(main()) == [Fence("a", 1), Fence("a", 2)]


def test_fence_of_a_lock_handle(dcore_env: dcore.Environment) -> None:
    lock = dcore_env.locks.lock("report", ttl=5)
    with pytest.raises(ValueError, match="lock 'report' has no fence: acquire"):
        Fence.of(lock)
    assert lock.acquire()
    assert Fence.of(lock) == Fence("report", lock.fence or 0)
    lock.release()


def test_a_fence_reads_as_its_lock_and_number() -> None:
    assert str(Fence("report:q3", 7)) == "fence 7 of lock 'report:q3'"
    assert Fence("a", 1) < Fence("a", 2)


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (None, TypeError, "needs the writer's fence, got None"),
        (7, TypeError, "must be a Fence(lock, number), got int 7"),
        (("a", 1, 2), TypeError, "must be a Fence(lock, number)"),
        ((3, 1), ValueError, "non-empty str, got 3"),
        (("a", -1), ValueError, "int >= 1 (from lock.fence), got -1"),
        (("a", 1.0), ValueError, "got 1.0"),
    ],
)
def test_a_bad_fence_is_named_with_the_fix(bad: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as refused:
        check_fence(bad, "put_fenced('k')")
    assert str(refused.value).startswith("put_fenced('k')")
    assert words in str(refused.value)
    with pytest.raises(error):
        holding_fence(bad).__enter__()
    assert current_fence() is None


def test_a_pair_becomes_a_fence() -> None:
    checked = check_fence(("a", 3), "here")
    assert type(checked) is Fence
    assert checked == Fence("a", 3)
