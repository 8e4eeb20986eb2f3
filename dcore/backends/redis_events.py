"""The Redis event bus: pub/sub for fire-and-forget, Streams for durable topics.

Fire-and-forget events go to channel ``<prefix>:pubsub:<topic>``. Each ``subscribe``
opens its own pub/sub connection, waits for Redis to confirm the subscription (so an
event published after ``subscribe`` returns is delivered) and only then starts one
listener thread for it. ``Subscription.close()`` (or ``bus.close()``) stops and joins
that thread, so no handler runs after ``close()`` returns — except when ``close()`` is
called from inside the handler itself. Nothing is started by the constructor.

Durable topics are streams ``<prefix>:events:<topic>`` with the JSON payload in one
field. An append with an idempotency ``key`` is one script that records ``key → id``
(and ``id → key``) in the hash ``<stream>:keys`` and adds nothing while that entry is on
the stream; removing the entry forgets its key.

``maxlen`` trims exactly (``MAXLEN n``, not ``~``) so that the length a caller
asks for is the length it gets, as with the memory bus; the topics we expect (DLQ,
audit) are small enough that exact trimming costs nothing noticeable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from dcore._plugins.registry import register_plugin
from dcore.backends._redis import (
    RedisBackend,
    settings_url,
    socket_timeout_of,
    text,
    translate_errors,
)
from dcore.backends._shared import at_least, decode_payload, encode_payload, parse_entry_id
from dcore.errors import ServiceUnavailableError
from dcore.services.events import Event, EventBusInterface, EventHandler, Subscription

if TYPE_CHECKING:
    from redis.client import PubSub

    from dcore._core.environment import Environment
    from dcore.backends._redis import RedisClient

__all__ = ["RedisEventBus"]

_log = logging.getLogger("dcore.events")
_FIELD = "payload"

#: KEYS: 1 stream, 2 its keys hash; ARGV: 1 payload, 2 maxlen ('' none), 3 key ('' none).
#: Also run, with these two keys last, inside the job store's dead-letter script.
KEYED_APPEND_LUA = """
local function keyed_append(stream, keys, payload, maxlen, key)
  if key ~= '' then
    local known = redis.call('HGET', keys, 'k:' .. key)
    if known then
      if #redis.call('XRANGE', stream, known, known) > 0 then return known end
      redis.call('HDEL', keys, 'k:' .. key, 'i:' .. known)
    end
  end
  local id
  if maxlen ~= '' then
    id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'payload', payload)
  else
    id = redis.call('XADD', stream, '*', 'payload', payload)
  end
  if key ~= '' then redis.call('HSET', keys, 'k:' .. key, id, 'i:' .. id, key) end
  return id
end
"""
_APPEND_LUA = KEYED_APPEND_LUA + "return keyed_append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])"
# KEYS: 1 stream, 2 its keys hash; ARGV: entry ids. Returns how many existed.
_REMOVE_LUA = """
local removed = 0
for _, id in ipairs(ARGV) do
  removed = removed + redis.call('XDEL', KEYS[1], id)
  local key = redis.call('HGET', KEYS[2], 'i:' .. id)
  if key then redis.call('HDEL', KEYS[2], 'i:' .. id, 'k:' .. key) end
end
return removed
"""
#: How long a listener blocks on its socket between checks of its stop flag; bounds
#: how long ``close()`` waits for the thread.
_LISTEN_SLICE = 0.05
_SUBSCRIBE_TIMEOUT = 5.0


class _Listener:
    """One subscription's pub/sub connection and the thread that reads it."""

    def __init__(self, pubsub: PubSub, topic: str, handler: EventHandler) -> None:
        self.pubsub = pubsub
        self.topic = topic
        self.handler = handler
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"dcore-redis-subscriber[{topic}]", daemon=True
        )

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                message = self.pubsub.get_message(timeout=_LISTEN_SLICE)
                if self.stopping.is_set():
                    break
                if message is None or message.get("type") != "message":
                    continue
                try:
                    event = Event(topic=self.topic, payload=decode_payload(message["data"]))
                    self.handler(event)
                except Exception:
                    _log.exception("subscriber of %r failed on %r", self.topic, message["data"])
        except Exception:  # the connection died: nothing to deliver to any more
            if not self.stopping.is_set():
                _log.exception("subscription to %r lost its Redis connection", self.topic)
        finally:
            self.pubsub.close()

    def stop(self) -> None:
        self.stopping.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=_LISTEN_SLICE * 20 + 1)


@register_plugin("redis")
class RedisEventBus(RedisBackend, EventBusInterface):
    """Events on Redis; see the module docstring for the key layout and threads."""

    def __init__(
        self, client: RedisClient | None = None, *, url: str | None = None, prefix: str = "dcore"
    ) -> None:
        super().__init__(client, url=url, prefix=prefix)
        self._listeners: set[_Listener] = set()
        self._guard = threading.Lock()
        self._append = self.client.register_script(_APPEND_LUA)
        self._remove = self.client.register_script(_REMOVE_LUA)

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        return cls(url=settings_url(env.settings), prefix=env.settings.key_prefix, **options)

    def _stream(self, topic: str) -> str:
        return self.key("events", topic)

    def stream_keys(self, topic: str) -> list[str]:
        """The durable ``topic``'s stream and its idempotency-keys hash (for scripts that
        append to it, such as the job store's dead-letter step)."""
        stream = self._stream(topic)
        return [stream, f"{stream}:keys"]

    def _event(self, topic: str, entry: Sequence[Any], deliveries: int = 0) -> Event:
        entry_id, fields = entry
        fields = {text(k): v for k, v in (fields or {}).items()}
        payload = decode_payload(fields[_FIELD]) if _FIELD in fields else {}
        return Event(topic=topic, payload=payload, id=text(entry_id), deliveries=deliveries)

    # -- fire-and-forget -------------------------------------------------------------
    def channel(self, topic: str) -> str:
        """The Redis pub/sub channel of a fire-and-forget ``topic``."""
        return self.key("pubsub", topic)

    @translate_errors
    def publish(self, topic: str, payload: Mapping[str, Any]) -> int:
        return int(self.client.publish(self.channel(topic), encode_payload(payload)))

    @translate_errors
    def subscribe(self, topic: str, handler: EventHandler) -> Subscription:
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel(topic))
            confirmed = False
            for _ in range(int(_SUBSCRIBE_TIMEOUT / _LISTEN_SLICE)):
                message = pubsub.get_message(timeout=_LISTEN_SLICE)
                if message is not None and message.get("type") == "subscribe":
                    confirmed = True
                    break
            if not confirmed:
                raise ServiceUnavailableError(
                    f"Redis at {self.url} did not confirm the subscription to {topic!r} "
                    f"within {_SUBSCRIBE_TIMEOUT:g} s"
                )
        except BaseException:
            pubsub.close()
            raise
        listener = _Listener(pubsub, topic, handler)
        with self._guard:
            self._listeners.add(listener)
        listener.thread.start()

        def close() -> None:
            with self._guard:
                self._listeners.discard(listener)
            listener.stop()

        return Subscription(topic, close)

    # -- durable topics --------------------------------------------------------------
    @translate_errors
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
        if key is None:
            entry_id = self.client.xadd(
                self._stream(topic), {_FIELD: raw}, maxlen=maxlen, approximate=False
            )
        else:
            limit = "" if maxlen is None else str(maxlen)
            entry_id = self._append(keys=self.stream_keys(topic), args=[raw, limit, key])
        return text(entry_id)

    @translate_errors
    def entries(self, topic: str, *, count: int | None = None) -> list[Event]:
        at_least("count", count, 0, or_none=True)
        if count == 0:
            return []
        return [self._event(topic, e) for e in self.client.xrange(self._stream(topic), count=count)]

    @translate_errors
    def entry(self, topic: str, entry_id: str) -> Event | None:
        parse_entry_id(entry_id)
        found = self.client.xrange(self._stream(topic), min=entry_id, max=entry_id, count=1)
        return self._event(topic, found[0]) if found else None

    @translate_errors
    def remove(self, topic: str, *entry_ids: str) -> int:
        for entry_id in entry_ids:
            parse_entry_id(entry_id)
        if not entry_ids:
            return 0
        return int(self._remove(keys=self.stream_keys(topic), args=list(dict.fromkeys(entry_ids))))

    @translate_errors
    def length(self, topic: str) -> int:
        return int(self.client.xlen(self._stream(topic)))

    @translate_errors
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
        from redis.exceptions import ResponseError

        stream = self._stream(topic)
        # BLOCK 0 would mean "forever" to Redis; here 0 / None means "do not wait". A long
        # wait is split into blocks shorter than the client's reply timeout (with room for
        # Redis rounding a block up to its ~100 ms tick), so blocking is never mistaken for
        # a dead server. Real seconds, like Redis's BLOCK.
        wait = block if block is not None and block > 0 else 0.0
        timeout = socket_timeout_of(self.client)
        step_limit = wait
        if timeout is not None:
            step_limit = min(wait, max(0.01, min(timeout / 2, timeout - 0.15)))
        deadline = time.monotonic() + wait
        while True:
            step = min(step_limit, max(0.0, deadline - time.monotonic()))
            block_ms = max(1, round(step * 1000)) if step > 0 else None
            try:
                reply = self.client.xreadgroup(group, consumer, {stream: ">"}, count, block_ms)
            except ResponseError:
                # the group (or the stream) does not exist yet. Real Redis says NOGROUP,
                # fakeredis words it differently; if it was another error, the retry
                # re-raises
                self._create_group(stream, group)
                reply = self.client.xreadgroup(group, consumer, {stream: ">"}, count, block_ms)
            if reply or block_ms is None or time.monotonic() >= deadline:
                break
        entries = reply[0][1] if reply else []
        return [self._event(topic, e, deliveries=1) for e in entries]

    def _create_group(self, stream: str, group: str) -> None:
        """Create ``group`` reading from the start of the topic (racing creators are fine)."""
        from redis.exceptions import ResponseError

        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @translate_errors
    def ack(self, topic: str, group: str, *entry_ids: str) -> int:
        for entry_id in entry_ids:
            parse_entry_id(entry_id)
        if not entry_ids:
            return 0
        from redis.exceptions import ResponseError

        try:
            ids = dict.fromkeys(entry_ids)
            return int(self.client.execute_command("XACK", self._stream(topic), group, *ids))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise

    @translate_errors
    def claim_idle(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int = 10
    ) -> list[Event]:
        at_least("count", count, 1)
        from redis.exceptions import ResponseError

        stream = self._stream(topic)
        idle_ms = max(0, round(min_idle * 1000))
        try:
            reply = self.client.xautoclaim(stream, group, consumer, idle_ms, "0-0", count)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        claimed = [e for e in reply[1] if e and e[1] is not None]  # deleted entries: skip
        if not claimed:
            return []
        # XAUTOCLAIM does not report delivery counts; XPENDING over the claimed range does
        first, last = text(claimed[0][0]), text(claimed[-1][0])
        counts = {
            text(p["message_id"]): int(p["times_delivered"])
            for p in self.client.xpending_range(stream, group, first, last, len(claimed), consumer)
        }
        return [self._event(topic, e, counts.get(text(e[0]), 1)) for e in claimed]

    @translate_errors
    def pending(self, topic: str, group: str) -> int:
        from redis.exceptions import ResponseError

        try:
            summary = self.client.execute_command("XPENDING", self._stream(topic), group)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise
        # redis-py parses the summary into a dict; a raw reply starts with the count
        return int(summary["pending"] if isinstance(summary, dict) else summary[0])

    def close(self) -> None:
        """Stop every subscription's listener thread, then close our pool."""
        with self._guard:
            listeners, self._listeners = list(self._listeners), set()
        for listener in listeners:
            listener.stop()
        super().close()
