"""The job store contract, run against memory, fakeredis and a real Redis.

The same assertions pass on all three, which is what lets the memory store stand in for
Redis in every other test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from dcore._core.environment import Environment
from dcore._core.settings import DcoreSettings
from dcore.backends.memory import MemoryJobStore
from dcore.backends.redis_jobs import RedisJobStore
from dcore.errors import IllegalTransitionError, JobNotFoundError, ServiceUnavailableError
from dcore.services.jobs import ALLOWED, JobState, JobStorageInterface, check
from dcore_testing import ManualClock

P, R, S, F, D = (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED,
                 JobState.DEAD)  # fmt: skip
T0 = 1_700_000_000.25
TTL = 3600.0
#: how to reach each state from a fresh (PENDING) record
PATHS = {
    P: [],
    R: [R],
    S: [R, S],
    F: [R, F],
    D: [D],
    JobState.COMPENSATING: [R, F, JobState.COMPENSATING],
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(epoch=T0)


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def client(request: pytest.FixtureRequest) -> Any:
    """None for the memory store, else the Redis client the store runs on."""
    if request.param == "memory":
        return None
    name = "dcore_fake_redis" if request.param == "fakeredis" else "dcore_redis_client"
    return request.getfixturevalue(name)


@pytest.fixture(params=["fakeredis", "redis"])
def redis_only(request: pytest.FixtureRequest) -> Any:
    """A Redis client, for what only the Redis store has (keys, index pruning)."""
    name = "dcore_fake_redis" if request.param == "fakeredis" else "dcore_redis_client"
    return request.getfixturevalue(name)


@pytest.fixture
def store(client: Any, clock: ManualClock) -> Iterator[JobStorageInterface]:
    s: JobStorageInterface = (
        MemoryJobStore(clock, ttl=TTL) if client is None else RedisJobStore(client, clock=clock,
                                                                             ttl=TTL)
    )  # fmt: skip
    yield s
    s.close()


def at_state(store: JobStorageInterface, job_id: str, state: JobState) -> None:
    store.create(job_id)
    for step in PATHS[state]:
        store.transition(job_id, step)
    assert store.get(job_id).state is state


def test_happy_path_records_history_attempts_and_clock_timestamps(
    store: JobStorageInterface, clock: ManualClock
) -> None:
    created = store.create("j1", message='{"dcore": 1}')
    clock.advance(2)
    store.transition("j1", R, expect=[P], note="worker-1")
    clock.advance(3)
    done = store.transition("j1", S, result={"rows": 3})

    assert created.state is P
    assert created.attempts == 0
    assert created.message == '{"dcore": 1}'
    assert (created.created_at, created.updated_at) == (T0, T0)
    assert done.state is S
    assert done.attempts == 1
    assert done.result == {"rows": 3}
    assert (done.created_at, done.updated_at) == (T0, T0 + 5)
    assert [(h.state, h.at, h.attempt, h.note) for h in done.history] == [
        (P, T0, 0, None),
        (R, T0 + 2, 1, "worker-1"),
        (S, T0 + 5, 1, None),
    ]
    assert store.get("j1") == done


def test_retries_count_attempts_and_a_dead_job_can_be_rescheduled(
    store: JobStorageInterface, clock: ManualClock
) -> None:
    store.create("j")
    store.transition("j", R)
    store.transition("j", F, error="boom 1")
    store.transition("j", P, note="retry in 2s")
    store.transition("j", R)
    store.transition("j", R, note="redelivered")
    failed = store.transition("j", F, error="boom 3")
    dead = store.transition("j", D)
    clock.advance(1)
    again = store.create("j", message="replayed")

    assert failed.attempts == 3
    assert failed.error == "boom 3"
    assert dead.state is D
    assert again.state is P
    assert again.attempts == 3
    assert again.message == "replayed"
    assert [h.state for h in again.history] == [P, R, F, P, R, R, F, D, P]
    assert again.history[-1].at == T0 + 1
    assert again.updated_at == T0 + 1


@pytest.mark.parametrize("to", list(JobState))
@pytest.mark.parametrize("start", list(JobState))
def test_every_transition_is_allowed_exactly_as_the_table_says(
    store: JobStorageInterface, start: JobState, to: JobState
) -> None:
    """Exhaustive over all 36 (from, to) pairs rather than sampled: there are few."""
    at_state(store, "j", start)
    before = store.get("j")
    if to in ALLOWED[start]:
        assert store.transition("j", to).state is to
        return
    with pytest.raises(IllegalTransitionError) as caught:
        store.transition("j", to)
    with pytest.raises(IllegalTransitionError) as expected:
        check("j", start, to, None)
    assert str(caught.value) == str(expected.value)
    assert store.get("j") == before


def test_expect_makes_a_transition_a_compare_and_set(store: JobStorageInterface) -> None:
    at_state(store, "j", R)
    before = store.get("j")
    with pytest.raises(IllegalTransitionError, match="is RUNNING, expected FAILED/PENDING"):
        store.transition("j", R, expect=[P, F])
    assert store.get("j") == before
    assert store.transition("j", S, expect={R}).state is S
    with pytest.raises(IllegalTransitionError, match="expected"):
        store.transition("j", R, expect=[])


def test_two_threads_racing_to_start_a_pending_job_exactly_one_wins(
    store: JobStorageInterface,
) -> None:
    for round_ in range(50):
        job_id = f"race-{round_}"
        store.create(job_id)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def start(
            jid: str = job_id, gate: threading.Barrier = barrier, out: list[str] = outcomes
        ) -> None:
            gate.wait()
            try:
                store.transition(jid, R, expect=[P])
                out.append("won")
            except IllegalTransitionError:
                out.append("lost")

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert sorted(outcomes) == ["lost", "won"], job_id
        assert store.get(job_id).attempts == 1


@pytest.mark.parametrize("state", [P, R, S])
def test_create_refuses_an_existing_live_job(store: JobStorageInterface, state: JobState) -> None:
    at_state(store, "j", state)
    before = store.get("j")
    with pytest.raises(IllegalTransitionError, match=f"already exists and is {state}"):
        store.create("j", message="again")
    assert store.get("j") == before


@pytest.mark.parametrize("state", [F, D])
def test_create_reschedules_a_failed_or_dead_job(
    store: JobStorageInterface, state: JobState
) -> None:
    at_state(store, "j", state)
    again = store.create("j")
    assert again.state is P
    assert again.history[-1].state is P
    assert store.list(P) == [again]


def test_create_rejects_an_empty_id(store: JobStorageInterface) -> None:
    with pytest.raises(ValueError, match="job_id"):
        store.create("")


def test_unknown_job_raises_job_not_found(store: JobStorageInterface) -> None:
    with pytest.raises(JobNotFoundError, match="'nope'"):
        store.get("nope")
    with pytest.raises(JobNotFoundError):
        store.transition("nope", R)
    with pytest.raises(JobNotFoundError):
        store.transition("", R)
    with pytest.raises(KeyError):  # JobNotFoundError is a KeyError
        store.get("nope")
    assert store.delete("nope") is False


def test_delete_removes_the_record_and_its_index_entries(store: JobStorageInterface) -> None:
    at_state(store, "j", F)
    assert store.delete("j") is True
    with pytest.raises(JobNotFoundError):
        store.get("j")
    assert store.list() == []
    assert store.list(F) == []


def test_list_is_newest_first_filtered_by_state_and_limited(
    store: JobStorageInterface, clock: ManualClock
) -> None:
    for name in ["a", "b", "c", "d"]:
        store.create(name)
        clock.advance(1)
    store.transition("b", R)
    clock.advance(1)
    store.transition("a", R)

    assert [r.job_id for r in store.list()] == ["a", "b", "d", "c"]
    assert [r.job_id for r in store.list(R)] == ["a", "b"]
    assert [r.job_id for r in store.list(P)] == ["d", "c"]
    assert [r.job_id for r in store.list(limit=3)] == ["a", "b", "d"]
    assert store.list(S) == []
    assert store.list(limit=0) == []
    assert store.list(R)[0] == store.get("a")


def test_list_orders_equal_timestamps_by_id_descending(store: JobStorageInterface) -> None:
    for name in ["x1", "x3", "x2"]:
        store.create(name)
    assert [r.job_id for r in store.list()] == ["x3", "x2", "x1"]


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def test_results_round_trip_as_json(store: JobStorageInterface) -> None:
    at_state(store, "j", R)
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    result = {"n": 1, "f": 0.5, "s": "é", "t": (1, 2), "when": when, "none": None, "o": Opaque()}
    stored = store.transition("j", S, result=result)
    expected = {"n": 1, "f": 0.5, "s": "é", "t": [1, 2], "when": "2024-05-01T12:00:00Z",
                "none": None, "o": "<Opaque>"}  # fmt: skip
    assert stored.result == expected
    assert store.get("j").result == expected


def test_error_is_kept_until_replaced(store: JobStorageInterface) -> None:
    at_state(store, "j", R)
    store.transition("j", F, error="boom")
    assert store.transition("j", R).error == "boom"
    assert store.transition("j", F, error="bang").error == "bang"


def test_terminal_records_expire_after_the_ttl(
    store: JobStorageInterface, client: Any, clock: ManualClock
) -> None:
    at_state(store, "done", S)
    at_state(store, "dead", D)
    at_state(store, "replayed", D)
    store.create("replayed")  # DEAD -> PENDING: no longer expires
    at_state(store, "running", R)
    if client is not None:  # Redis: a key TTL, on the server's clock
        for job_id in ["done", "dead"]:
            for key in [f"dcore:job:{job_id}", f"dcore:job:{job_id}:history"]:
                assert 0 < client.pttl(key) <= TTL * 1000
        for job_id in ["replayed", "running"]:
            assert client.pttl(f"dcore:job:{job_id}") == -1
            assert client.pttl(f"dcore:job:{job_id}:history") == -1
        return
    clock.advance(TTL - 1)
    assert store.get("done").state is S
    clock.advance(1)
    for job_id in ["done", "dead"]:
        with pytest.raises(JobNotFoundError):
            store.get(job_id)
    assert {r.job_id for r in store.list()} == {"replayed", "running"}


def test_list_skips_and_prunes_records_that_expired(redis_only: Any, clock: ManualClock) -> None:
    client = redis_only
    store = RedisJobStore(client, clock=clock, ttl=TTL)
    at_state(store, "gone", S)
    at_state(store, "kept", S)
    client.delete("dcore:job:gone", "dcore:job:gone:history")  # what expiry does
    assert [r.job_id for r in store.list(S)] == ["kept"]
    assert client.zrange("dcore:jobs:all", 0, -1) == [b"kept"]
    assert store.create("gone").history[0].state is P  # a fresh record, stale ids dropped
    assert [r.job_id for r in store.list(S)] == ["kept"]


def test_redis_store_from_environment_uses_url_prefix_ttl_and_clock(
    dcore_redis_url: str, dcore_redis_client: Any, clock: ManualClock
) -> None:
    settings = DcoreSettings(redis_url=dcore_redis_url, key_prefix="t1", job_ttl=60)
    with Environment(settings, clock=clock) as env:
        store = RedisJobStore.from_environment(env)
        at_state(store, "j", S)
        assert store.get("j").created_at == T0
        assert 0 < dcore_redis_client.pttl("t1:job:j") <= 60_000
        store.close()


def test_memory_store_from_environment_uses_the_clock(clock: ManualClock) -> None:
    env = Environment(DcoreSettings(job_ttl=5), clock=clock)
    store = MemoryJobStore.from_environment(env)
    assert store.create("j").created_at == T0
    assert store.ttl == 5


def test_unreachable_redis_is_service_unavailable_without_the_password() -> None:
    store = RedisJobStore(url="redis://user:s3cret@127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailableError) as caught:
        store.get("j")
    assert "s3cret" not in str(caught.value)
    assert "redis://user:***@127.0.0.1:1/0" in str(caught.value)
    store.close()
