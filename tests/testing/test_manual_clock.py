"""``ManualClock`` and the ``dcore_manual_clock`` / ``dcore_manual_env`` fixtures: time
moves only when the test (or a sleep) moves it, sleeps are recorded, and it never goes
backwards."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcore import Clock, Environment, RetryPolicy, current_environment
from dcore._core.retry import call_with_retry
from dcore_testing import ManualClock
from dcore_testing.clock import EPOCH


def test_it_is_a_dcore_clock_starting_at_the_fixed_epoch() -> None:
    clock = ManualClock()
    assert isinstance(clock, Clock)
    assert (clock.monotonic(), clock.time()) == (0.0, EPOCH)
    assert clock.now() == datetime.fromtimestamp(EPOCH, UTC)
    assert clock.now().tzinfo is UTC


def test_start_and_epoch_set_monotonic_and_wall_time() -> None:
    clock = ManualClock(start=5.0, epoch=1000.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 1005.0)


def test_sleep_returns_at_once_moves_time_and_records_the_wait() -> None:
    clock = ManualClock(epoch=1000.0)
    clock.sleep(3600)
    clock.sleep(0.5)
    assert clock.sleeps == [3600, 0.5]
    assert (clock.monotonic(), clock.time()) == (3600.5, 4600.5)


def test_advance_moves_time_without_recording_a_sleep() -> None:
    clock = ManualClock()
    clock.advance(2.5)
    assert clock.monotonic() == 2.5
    assert clock.time() == EPOCH + 2.5
    assert clock.sleeps == []


@pytest.mark.parametrize("move", ["sleep", "advance"])
def test_a_negative_duration_is_refused_and_time_stays_put(move: str) -> None:
    clock = ManualClock()
    clock.advance(10)
    with pytest.raises(ValueError, match=rf"{move}\(\) needs seconds >= 0, got -1"):
        getattr(clock, move)(-1)
    assert clock.monotonic() == 10
    assert clock.sleeps == []


def test_advance_to_an_earlier_time_is_refused_naming_both_times() -> None:
    clock = ManualClock(start=10.0)
    with pytest.raises(ValueError, match=r"cannot go backwards: it is 10.0, asked for 5.0"):
        clock.advance_to(5.0)
    assert clock.monotonic() == 10.0


@given(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=20))
def test_time_never_decreases_and_equals_the_sum_of_the_sleeps(waits: list[float]) -> None:
    clock = ManualClock()
    seen = [clock.monotonic()]
    for wait in waits:
        clock.sleep(wait)
        seen.append(clock.monotonic())
    assert seen == sorted(seen)
    assert clock.sleeps == waits
    assert clock.monotonic() == pytest.approx(sum(waits))


def test_sleeps_from_many_threads_are_all_counted() -> None:
    clock = ManualClock()

    def sleeper() -> None:
        for _ in range(500):
            clock.sleep(1)

    threads = [threading.Thread(target=sleeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.monotonic() == 2000
    assert len(clock.sleeps) == 2000


def test_the_fixture_gives_a_fresh_clock(dcore_manual_clock: ManualClock) -> None:
    assert isinstance(dcore_manual_clock, ManualClock)
    assert (dcore_manual_clock.monotonic(), dcore_manual_clock.sleeps) == (0.0, [])


def test_manual_env_is_current_and_its_retries_sleep_on_the_manual_clock(
    dcore_manual_env: Environment, dcore_manual_clock: ManualClock
) -> None:
    assert current_environment() is dcore_manual_env
    assert dcore_manual_env.clock is dcore_manual_clock
    failures = iter([RuntimeError("first"), RuntimeError("second")])

    def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(attempts=3, initial=60.0, backoff=2.0, max_delay=3600.0)
    assert call_with_retry(flaky, policy, dcore_manual_env.clock) == "ok"
    assert dcore_manual_clock.sleeps == [policy.delay(1), policy.delay(2)]
