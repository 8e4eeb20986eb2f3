"""The event bus: fire-and-forget pub/sub, and durable topics with consumer groups.

Fire-and-forget (``publish``/``subscribe``): subscribers that are listening get the
event; nobody listening means it is gone (Redis pub/sub). Durable topics (``append`` …
``ack``): entries stay until trimmed or removed; a consumer group hands each entry to
one consumer, and an entry not acked within ``min_idle`` can be claimed by another
(Redis Streams + XAUTOCLAIM). The dead-letter queue is a durable topic.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from dcore._plugins.registry import define_interface
from dcore.services.base import ServiceInterface

__all__ = ["Event", "EventBusInterface", "EventHandler", "Subscription"]


class Event(BaseModel):
    """One event. ``id`` is the durable entry id (None for fire-and-forget);
    ``deliveries`` counts how often a consumer group has handed it out."""

    topic: str
    payload: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    deliveries: int = 0


EventHandler = Callable[[Event], None]


class Subscription:
    """A live subscription; ``close()`` stops delivery (idempotent)."""

    def __init__(self, topic: str, close: Callable[[], None]) -> None:
        self.topic = topic
        self._close = close
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@define_interface
class EventBusInterface(ServiceInterface):
    """Payloads are JSON objects (dicts of JSON values); anything else is a TypeError."""

    service_name: ClassVar[str] = "events"

    # -- fire-and-forget ------------------------------------------------------------
    @abstractmethod
    def publish(self, topic: str, payload: Mapping[str, Any]) -> int:
        """Deliver to current subscribers of ``topic``; returns how many received it."""

    @abstractmethod
    def subscribe(self, topic: str, handler: EventHandler) -> Subscription:
        """Call ``handler`` for each event published on ``topic`` from now on."""

    # -- durable topics -------------------------------------------------------------
    @abstractmethod
    def append(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        maxlen: int | None = None,
        key: str | None = None,
    ) -> str:
        """Append a durable entry; returns its id. ``maxlen`` bounds the topic (oldest go).
        With ``key``, the append is idempotent: while an entry appended with that key is
        on the topic, appending again adds nothing and returns that entry's id."""

    @abstractmethod
    def entries(self, topic: str, *, count: int | None = None) -> list[Event]:
        """The topic's entries, oldest first (all, or the first ``count``)."""

    @abstractmethod
    def entry(self, topic: str, entry_id: str) -> Event | None: ...

    @abstractmethod
    def remove(self, topic: str, *entry_ids: str) -> int:
        """Delete entries; returns how many existed."""

    @abstractmethod
    def length(self, topic: str) -> int: ...

    @abstractmethod
    def read_group(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        count: int = 1,
        block: float | None = None,
    ) -> list[Event]:
        """New entries for ``consumer`` in ``group`` (created on first use, from the
        start of the topic). ``block`` waits up to that many seconds when there are none."""

    @abstractmethod
    def ack(self, topic: str, group: str, *entry_ids: str) -> int:
        """Mark entries processed for ``group``; returns how many were pending."""

    @abstractmethod
    def claim_idle(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int = 10
    ) -> list[Event]:
        """Take over entries delivered to other consumers but not acked for ``min_idle``
        seconds (a consumer that died mid-entry)."""

    @abstractmethod
    def pending(self, topic: str, group: str) -> int:
        """How many entries of ``group`` are delivered but not acked."""
