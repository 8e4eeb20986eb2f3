"""The event bus contract, run against memory, fakeredis and a real Redis."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dcore._core.environment import Environment
from dcore._core.settings import DcoreSettings
from dcore.backends.memory import MemoryEventBus
from dcore.backends.redis_events import RedisEventBus
from dcore.services.events import Event, EventBusInterface
from dcore_testing import ManualClock

WAIT = 5.0  # upper bound for anything that should happen "soon"; never reached when green


@dataclass
class Harness:
    bus: EventBusInterface
    client: Any  # None for memory
    clock: ManualClock

    def claim_after_idle(
        self, topic: str, group: str, consumer: str, min_idle: float
    ) -> list[Event]:
        """Claim once entries have been idle ``min_idle``: memory moves its clock; Redis
        measures idle time on its own clock, so poll (bounded) until it has passed."""
        if self.client is None:
            self.clock.advance(min_idle)
            return self.bus.claim_idle(topic, group, consumer, min_idle=min_idle)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            claimed = self.bus.claim_idle(topic, group, consumer, min_idle=min_idle)
            if claimed:
                return claimed
            time.sleep(min_idle / 5)  # Redis's idle clock: nothing to wait on but time
        return []


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = ManualClock()
    if request.param == "memory":
        bus: EventBusInterface = MemoryEventBus(clock)
        client = None
    else:
        client = request.getfixturevalue(
            "dcore_fake_redis" if request.param == "fakeredis" else "dcore_redis_client"
        )
        bus = RedisEventBus(client)
    yield Harness(bus, client, clock)
    bus.close()


def collector() -> tuple[queue.Queue[Event], Any]:
    received: queue.Queue[Event] = queue.Queue()
    return received, received.put


# -- fire-and-forget --------------------------------------------------------------------
def test_publish_reaches_every_current_subscriber(h: Harness) -> None:
    a, on_a = collector()
    b, on_b = collector()
    with h.bus.subscribe("news", on_a), h.bus.subscribe("news", on_b):
        assert h.bus.publish("news", {"n": 1, "tags": ["x"]}) == 2
        for got in (a.get(timeout=WAIT), b.get(timeout=WAIT)):
            assert got == Event(topic="news", payload={"n": 1, "tags": ["x"]})


def test_subscribers_of_other_topics_do_not_receive(h: Harness) -> None:
    other, on_other = collector()
    with h.bus.subscribe("other", on_other):
        assert h.bus.publish("news", {"n": 1}) == 0
        assert h.bus.publish("other", {"n": 2}) == 1
        assert other.get(timeout=WAIT).payload == {"n": 2}
        assert other.empty()


def test_no_delivery_after_close(h: Harness) -> None:
    closed, on_closed = collector()
    live, on_live = collector()
    sub = h.bus.subscribe("news", on_closed)
    with h.bus.subscribe("news", on_live):
        sub.close()
        sub.close()  # idempotent
        assert h.bus.publish("news", {"n": 1}) == 1
        assert live.get(timeout=WAIT).payload == {"n": 1}
    assert closed.empty()
    assert h.bus.publish("news", {"n": 2}) == 0


def test_fire_and_forget_leaves_no_durable_trace(h: Harness) -> None:
    assert h.bus.publish("news", {"n": 1}) == 0
    assert h.bus.length("news") == 0
    assert h.bus.entries("news") == []
    if h.client is not None:
        assert h.client.keys("*") == []


def test_a_failing_handler_does_not_stop_delivery(h: Harness) -> None:
    seen, on_seen = collector()

    def explode(event: Event) -> None:
        on_seen(event)
        raise RuntimeError("handler bug")

    good, on_good = collector()
    with h.bus.subscribe("news", explode), h.bus.subscribe("news", on_good):
        h.bus.publish("news", {"n": 1})
        h.bus.publish("news", {"n": 2})
        assert [good.get(timeout=WAIT).payload["n"] for _ in range(2)] == [1, 2]
        assert [seen.get(timeout=WAIT).payload["n"] for _ in range(2)] == [1, 2]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({1: "a"}, "keys must be str"),
        ({"a": object()}, "only JSON values"),
        ({"a": float("nan")}, "only JSON values"),
        ({"a": b"bytes"}, "only JSON values"),
    ],
)
def test_payloads_that_are_not_json_objects_are_type_errors(
    h: Harness, payload: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        h.bus.publish("t", payload)
    with pytest.raises(TypeError, match=match):
        h.bus.append("t", payload)
    assert h.bus.length("t") == 0


# -- durable topics ---------------------------------------------------------------------
def test_append_entries_entry_remove_and_length(h: Harness) -> None:
    ids = [h.bus.append("dlq", {"n": n}) for n in range(4)]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == 4
    assert [e.payload["n"] for e in h.bus.entries("dlq")] == [0, 1, 2, 3]
    assert [e.id for e in h.bus.entries("dlq", count=2)] == ids[:2]
    assert h.bus.entries("dlq", count=0) == []
    assert h.bus.entry("dlq", ids[1]) == Event(topic="dlq", payload={"n": 1}, id=ids[1])
    assert h.bus.remove("dlq", ids[1], ids[3], "1-0") == 2
    assert h.bus.remove("dlq", ids[1]) == 0
    assert h.bus.entry("dlq", ids[1]) is None
    assert h.bus.length("dlq") == 2
    assert [e.id for e in h.bus.entries("dlq")] == [ids[0], ids[2]]
    assert h.bus.length("unknown") == 0
    assert h.bus.entries("unknown") == []


def test_malformed_entry_ids_are_value_errors(h: Harness) -> None:
    for call in (
        lambda: h.bus.entry("t", "nope"),
        lambda: h.bus.remove("t", "1-x"),
        lambda: h.bus.ack("t", "g", "12"),
    ):
        with pytest.raises(ValueError, match="bad durable entry id"):
            call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda bus: bus.append("t", {}, maxlen=0), "maxlen must be >= 1 or None, got 0"),
        (lambda bus: bus.entries("t", count=-1), "count must be >= 0 or None, got -1"),
        (lambda bus: bus.read_group("t", "g", "c", count=0), "count must be >= 1, got 0"),
        (
            lambda bus: bus.claim_idle("t", "g", "c", min_idle=0, count=0),
            "count must be >= 1, got 0",
        ),
    ],
    ids=["append-maxlen", "entries-count", "read_group-count", "claim_idle-count"],
)
def test_out_of_range_counts_are_value_errors_naming_the_argument_and_value(
    h: Harness, call: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call(h.bus)
    assert h.bus.length("t") == 0


def test_maxlen_keeps_only_the_newest_entries(h: Harness) -> None:
    for n in range(6):
        h.bus.append("dlq", {"n": n}, maxlen=3)
    assert h.bus.length("dlq") == 3
    assert [e.payload["n"] for e in h.bus.entries("dlq")] == [3, 4, 5]
    with pytest.raises(ValueError, match="maxlen"):
        h.bus.append("dlq", {"n": 9}, maxlen=0)


def test_a_group_hands_each_entry_to_exactly_one_consumer(h: Harness) -> None:
    ids = [h.bus.append("jobs", {"n": n}) for n in range(5)]
    first = h.bus.read_group("jobs", "workers", "c1", count=2)
    second = h.bus.read_group("jobs", "workers", "c2", count=10)
    assert [e.id for e in first] == ids[:2]
    assert [e.id for e in second] == ids[2:]
    assert all(e.deliveries == 1 and e.topic == "jobs" for e in first + second)
    assert h.bus.read_group("jobs", "workers", "c1") == []
    # another group starts from the beginning of the topic
    assert [e.id for e in h.bus.read_group("jobs", "audit", "a", count=10)] == ids
    later = h.bus.append("jobs", {"n": 5})
    assert [e.id for e in h.bus.read_group("jobs", "workers", "c2")] == [later]


def test_concurrent_consumers_split_the_entries_without_duplicates(h: Harness) -> None:
    ids = {h.bus.append("jobs", {"n": n}) for n in range(30)}
    got: list[str] = []
    lock = threading.Lock()

    def consume(name: str) -> None:
        while batch := h.bus.read_group("jobs", "workers", name, count=2):
            with lock:
                got.extend(e.id for e in batch if e.id is not None)

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
    assert sorted(got) == sorted(ids)
    assert h.bus.pending("jobs", "workers") == 30


def test_ack_and_pending_counts_per_group(h: Harness) -> None:
    ids = [h.bus.append("jobs", {"n": n}) for n in range(3)]
    assert h.bus.pending("jobs", "workers") == 0  # no such group yet
    h.bus.read_group("jobs", "workers", "c1", count=3)
    h.bus.read_group("jobs", "audit", "a", count=1)
    assert h.bus.pending("jobs", "workers") == 3
    assert h.bus.pending("jobs", "audit") == 1
    assert h.bus.ack("jobs", "workers", ids[0], ids[1], ids[1]) == 2
    assert h.bus.ack("jobs", "workers", ids[0]) == 0
    assert h.bus.pending("jobs", "workers") == 1
    assert h.bus.pending("jobs", "audit") == 1
    assert h.bus.ack("jobs", "nobody", ids[2]) == 0
    assert h.bus.ack("jobs", "workers") == 0


def test_claim_idle_takes_over_entries_a_dead_consumer_left(h: Harness) -> None:
    ids = [h.bus.append("jobs", {"n": n}) for n in range(2)]
    h.bus.read_group("jobs", "workers", "dead-worker", count=2)
    h.bus.ack("jobs", "workers", ids[1])
    assert h.bus.claim_idle("jobs", "workers", "rescuer", min_idle=60) == []

    claimed = h.claim_after_idle("jobs", "workers", "rescuer", min_idle=0.05)

    assert claimed == [Event(topic="jobs", payload={"n": 0}, id=ids[0], deliveries=2)]
    assert h.bus.pending("jobs", "workers") == 1
    assert h.bus.ack("jobs", "workers", ids[0]) == 1
    assert h.bus.pending("jobs", "workers") == 0
    assert h.bus.claim_idle("jobs", "nobody", "x", min_idle=0) == []
    assert h.bus.claim_idle("unknown", "workers", "x", min_idle=0) == []


def test_claim_idle_respects_count(h: Harness) -> None:
    ids = [h.bus.append("jobs", {"n": n}) for n in range(3)]
    h.bus.read_group("jobs", "workers", "dead-worker", count=3)
    claimed = h.claim_after_idle("jobs", "workers", "rescuer", min_idle=0.01)
    assert [e.id for e in claimed] == ids  # default count (10) covers all
    again = h.bus.claim_idle("jobs", "workers", "other", min_idle=0, count=2)
    assert [(e.id, e.deliveries) for e in again] == [(ids[0], 3), (ids[1], 3)]


def test_blocking_read_group_returns_when_an_entry_is_appended(h: Harness) -> None:
    assert h.bus.read_group("jobs", "workers", "c1") == []  # the group exists, empty
    # the append is delayed a little so that the read is (almost surely) already blocked;
    # the test is correct either way, it only proves less if the append came first
    timer = threading.Timer(0.05, h.bus.append, args=("jobs", {"n": 1}))
    started = time.monotonic()
    timer.start()
    got = h.bus.read_group("jobs", "workers", "c1", block=WAIT)
    elapsed = time.monotonic() - started
    timer.join()
    assert [e.payload for e in got] == [{"n": 1}]
    assert elapsed < WAIT / 2


def test_blocking_read_group_times_out_empty(h: Harness) -> None:
    started = time.monotonic()
    assert h.bus.read_group("jobs", "workers", "c1", block=0.05) == []
    assert time.monotonic() - started >= 0.04


def test_read_group_on_an_unknown_topic_is_empty(h: Harness) -> None:
    assert h.bus.read_group("new", "workers", "c1", block=0) == []
    assert h.bus.length("new") == 0
    assert h.bus.pending("new", "workers") == 0
    entry = h.bus.append("new", {"n": 1})
    assert [e.id for e in h.bus.read_group("new", "workers", "c1")] == [entry]


# -- Redis specifics --------------------------------------------------------------------
def _listeners() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dcore-redis-subscriber")]


def test_redis_listener_threads_start_on_subscribe_and_stop_on_close(dcore_fake_redis: Any) -> None:
    bus = RedisEventBus(dcore_fake_redis)
    assert _listeners() == []  # the constructor starts nothing
    sub = bus.subscribe("a", lambda e: None)
    bus.subscribe("b", lambda e: None)
    assert len(_listeners()) == 2
    sub.close()
    assert len(_listeners()) == 1
    bus.close()
    assert _listeners() == []


def test_redis_bus_from_environment_prefixes_keys(
    dcore_redis_url: str, dcore_redis_client: Any
) -> None:
    with Environment(DcoreSettings(redis_url=dcore_redis_url, key_prefix="t2")) as env:
        bus = RedisEventBus.from_environment(env)
        bus.append("dlq", {"n": 1})
        assert dcore_redis_client.keys("*") == [b"t2:events:dlq"]
        bus.close()


def test_memory_bus_entry_ids_follow_its_clock() -> None:
    clock = ManualClock(epoch=1000.0)
    bus = MemoryEventBus(clock)
    assert [bus.append("t", {}), bus.append("t", {})] == ["1000000-0", "1000000-1"]
    clock.advance(0.002)
    assert bus.append("t", {}) == "1000002-0"
