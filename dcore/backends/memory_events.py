"""``memory`` event bus: fire-and-forget pub/sub and durable topics with consumer groups,
with Redis Streams' observable semantics (entry ids ``<ms>-<seq>``, pending-entries
lists, exact ``maxlen``). Idle times come from the injected clock; a blocking
``read_group`` waits on a condition that the append wakes, in real seconds like ``BLOCK``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from dcore._core.clock import Clock, SystemClock
from dcore._plugins.registry import register_plugin
from dcore.backends._shared import (
    at_least,
    decode_payload,
    encode_payload,
    parse_entry_id,
)
from dcore.services.events import Event, EventBusInterface, EventHandler, Subscription

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["MemoryEventBus"]

_log = logging.getLogger("dcore.events")


@dataclass
class _Delivery:
    consumer: str
    at: float  # clock.monotonic() of the last delivery
    count: int


@dataclass
class _Group:
    last: tuple[int, int] = (0, 0)
    pending: dict[tuple[int, int], _Delivery] = field(default_factory=dict)


@dataclass
class _Topic:
    entries: dict[tuple[int, int], str] = field(default_factory=dict)  # in id order
    groups: dict[str, _Group] = field(default_factory=dict)
    last_id: tuple[int, int] = (0, 0)
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)  # idempotency key → id
    key_of: dict[tuple[int, int], str] = field(default_factory=dict)

    def drop(self, entry_id: tuple[int, int]) -> bool:
        key = self.key_of.pop(entry_id, None)
        if key is not None:
            self.keys.pop(key, None)
        return self.entries.pop(entry_id, None) is not None


def _fmt(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@register_plugin("memory")
class MemoryEventBus(EventBusInterface):
    """Handlers run synchronously in the publisher's thread; a failing handler is logged
    and does not stop the others (as a Redis listener thread would carry on)."""

    process_local = True

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._topics: dict[str, _Topic] = {}
        self._subscribers: dict[str, dict[int, EventHandler]] = {}
        self._next_sub = 0

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        return cls(clock=env.clock, **options)

    # fire-and-forget
    def publish(self, topic: str, payload: Mapping[str, Any]) -> int:
        raw = encode_payload(payload)  # refuses what Redis would, subscribers or not
        with self._cond:
            handlers = list(self._subscribers.get(topic, {}).values())
        if not handlers:  # (most publishes: nobody listens, and nothing is kept)
            return 0
        event = Event(topic=topic, payload=decode_payload(raw))
        for handler in handlers:
            try:
                handler(event.model_copy(deep=True))
            except Exception:
                _log.exception("subscriber of %r failed on %r", topic, event.payload)
        return len(handlers)

    def subscribe(self, topic: str, handler: EventHandler) -> Subscription:
        with self._cond:
            self._next_sub += 1
            sub_id = self._next_sub
            self._subscribers.setdefault(topic, {})[sub_id] = handler

        def close() -> None:
            with self._cond:
                self._subscribers.get(topic, {}).pop(sub_id, None)

        return Subscription(topic, close)

    # durable topics
    def append(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        maxlen: int | None = None,
        key: str | None = None,
    ) -> str:
        raw = encode_payload(payload)
        at_least("maxlen", maxlen, 1, or_none=True)
        with self._cond:
            t = self._topics.setdefault(topic, _Topic())
            if key is not None and key in t.keys:
                return _fmt(t.keys[key])
            ms = int(self.clock.time() * 1000)
            last_ms, last_seq = t.last_id
            new_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
            t.entries[new_id] = raw
            t.last_id = new_id
            if key is not None:
                t.keys[key] = new_id
                t.key_of[new_id] = key
            while maxlen is not None and len(t.entries) > maxlen:
                t.drop(next(iter(t.entries)))
            self._cond.notify_all()
        return _fmt(new_id)

    def _event(self, topic: str, entry_id: tuple[int, int], raw: str, count: int = 0) -> Event:
        return Event(topic=topic, payload=decode_payload(raw), id=_fmt(entry_id), deliveries=count)

    def entries(self, topic: str, *, count: int | None = None) -> list[Event]:
        at_least("count", count, 0, or_none=True)
        with self._cond:
            items = list(self._topics.get(topic, _Topic()).entries.items())
        items = items if count is None else items[:count]
        return [self._event(topic, i, raw) for i, raw in items]

    def entry(self, topic: str, entry_id: str) -> Event | None:
        key = parse_entry_id(entry_id)
        with self._cond:
            raw = self._topics.get(topic, _Topic()).entries.get(key)
        return None if raw is None else self._event(topic, key, raw)

    def remove(self, topic: str, *entry_ids: str) -> int:
        keys = [parse_entry_id(i) for i in entry_ids]
        with self._cond:
            t = self._topics.get(topic)
            if t is None:
                return 0
            # like XDEL: the pending lists keep the ids; claim_idle drops them
            return sum(t.drop(k) for k in dict.fromkeys(keys))

    def length(self, topic: str) -> int:
        with self._cond:
            return len(self._topics.get(topic, _Topic()).entries)

    def _group(self, topic: str, group: str) -> tuple[_Topic, _Group]:
        t = self._topics.setdefault(topic, _Topic())
        return t, t.groups.setdefault(group, _Group())

    def read_group(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        count: int = 1,
        block: float | None = None,
    ) -> list[Event]:
        at_least("count", count, 1)
        with self._cond:
            t, g = self._group(topic, group)

            def fresh() -> list[tuple[int, int]]:
                return [k for k in t.entries if k > g.last][:count]

            if block is not None and block > 0:
                self._cond.wait_for(lambda: bool(fresh()), timeout=block)
            keys = fresh()
            now = self.clock.monotonic()
            for k in keys:
                g.pending[k] = _Delivery(consumer, now, 1)
            if keys:
                g.last = keys[-1]
            return [self._event(topic, k, t.entries[k], 1) for k in keys]

    def ack(self, topic: str, group: str, *entry_ids: str) -> int:
        keys = [parse_entry_id(i) for i in entry_ids]
        with self._cond:
            g = self._topics.get(topic, _Topic()).groups.get(group)
            if g is None:
                return 0
            return sum(g.pending.pop(k, None) is not None for k in dict.fromkeys(keys))

    def claim_idle(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int = 10
    ) -> list[Event]:
        at_least("count", count, 1)
        with self._cond:
            t = self._topics.get(topic)
            g = t.groups.get(group) if t is not None else None
            if t is None or g is None:
                return []
            now = self.clock.monotonic()
            claimed: list[Event] = []
            for k in sorted(g.pending):
                if len(claimed) >= count:
                    break
                d = g.pending[k]
                if now - d.at < min_idle:
                    continue
                if k not in t.entries:  # deleted or trimmed: XAUTOCLAIM drops it
                    del g.pending[k]
                    continue
                g.pending[k] = _Delivery(consumer, now, d.count + 1)
                claimed.append(self._event(topic, k, t.entries[k], d.count + 1))
            return claimed

    def pending(self, topic: str, group: str) -> int:
        with self._cond:
            g = self._topics.get(topic, _Topic()).groups.get(group)
            return 0 if g is None else len(g.pending)

    def close(self) -> None:
        with self._cond:
            self._subscribers.clear()
