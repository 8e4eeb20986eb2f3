"""In-process backends: event bus, job store and locks that need no server.

They are the embedded default and the reference the Redis backends are tested against
(one contract suite runs over both), so they copy Redis's observable semantics: stream
entry ids ``<ms>-<seq>``, consumer groups with a pending-entries list, exact ``maxlen``
trimming, JSON payloads, token-checked lock release and a fence counter.

All timestamps, TTLs and idle times come from the injected ``clock``, so a virtual clock
drives them. Blocking waits (``read_group(block=...)``, ``acquire(timeout=...)``) are
thread waits in real seconds, like Redis's ``BLOCK`` and ``threading.Lock``: they are
woken by the append or release they wait for, never by polling a queue.

The payload and result encoders at the top are shared with the Redis backends, so both
accept and reject exactly the same values.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from pydantic_core import to_jsonable_python

from dcore.core.clock import Clock, SystemClock
from dcore.core.plugins import register_plugin
from dcore.errors import IllegalTransitionError, JobNotFoundError, LockLostError
from dcore.services.events import Event, EventBusInterface, EventHandler, Subscription
from dcore.services.jobs import (
    TERMINAL,
    JobRecord,
    JobState,
    JobStorageInterface,
    Transition,
    check,
)
from dcore.services.locks import Lock, LockInterface

if TYPE_CHECKING:
    from dcore.core.environment import Environment

__all__ = [
    "MemoryEventBus",
    "MemoryJobStore",
    "MemoryLock",
    "MemoryLocks",
    "at_least",
    "decode_payload",
    "encode_payload",
    "encode_result",
    "exists_message",
    "not_found",
    "parse_entry_id",
]

_log = logging.getLogger("dcore.events")

DEFAULT_JOB_TTL = 7 * 24 * 3600.0
#: While a TTL'd lock is held, waiters re-check its expiry this often (real seconds), so
#: a virtual clock moved by another thread is noticed; a release wakes them at once.
_EXPIRY_RECHECK = 0.05


# -- shared encoding (memory and Redis must agree) -----------------------------------
def encode_payload(payload: Mapping[str, Any]) -> str:
    """A payload as JSON text; TypeError unless it is a JSON object with string keys."""
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"event payload must be a JSON object (a dict with str keys), got "
            f"{type(payload).__name__}: {payload!r}"
        )
    bad_keys = [k for k in payload if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"event payload keys must be str, got {bad_keys[0]!r}")
    try:
        return json.dumps(dict(payload), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"event payload must contain only JSON values (str, int, float, bool, None, "
            f"list, dict); {exc}. Convert the value first (e.g. str() or .model_dump())"
        ) from None


def decode_payload(raw: str | bytes) -> dict[str, Any]:
    value = json.loads(raw)
    return value if isinstance(value, dict) else {"value": value}


def encode_result(result: Any) -> str:
    """A job result as JSON; values JSON cannot hold are stored as their repr()."""
    return json.dumps(to_jsonable_python(result, fallback=repr, bytes_mode="base64"))


_ENTRY_ID = re.compile(r"^(\d+)-(\d+)$")


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    match = _ENTRY_ID.match(entry_id) if isinstance(entry_id, str) else None
    if match is None:
        raise ValueError(f"bad durable entry id {entry_id!r}; ids look like '1700000000000-0'")
    return int(match[1]), int(match[2])


def not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"no job with id {job_id!r} (never created, deleted or expired)")


def exists_message(job_id: str, current: str) -> str:
    return (
        f"job {job_id} already exists and is {current}; only a FAILED or DEAD job can be "
        "created again (re-scheduled)"
    )


def at_least(name: str, value: float | None, minimum: int, *, or_none: bool = False,
             unit: str = "") -> None:
    """ValueError naming ``name`` and the value unless it is >= ``minimum`` (or None, where
    ``or_none``): one check, so memory and Redis refuse the same arguments alike."""
    if value is None:
        if or_none:
            return
        raise TypeError(f"{name} must be a number >= {minimum}, got None")
    if value < minimum:
        bound = f">= {minimum}" + (f" {unit}" if unit else "") + (" or None" if or_none else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")


# -- event bus -------------------------------------------------------------------------
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


def _fmt(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@register_plugin("memory")
class MemoryEventBus(EventBusInterface):
    """Handlers run synchronously in the publisher's thread; a failing handler is logged
    and does not stop the others (as a Redis listener thread would carry on)."""

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
        event = Event(topic=topic, payload=decode_payload(encode_payload(payload)))
        with self._cond:
            handlers = list(self._subscribers.get(topic, {}).values())
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
    def append(self, topic: str, payload: Mapping[str, Any], *, maxlen: int | None = None) -> str:
        raw = encode_payload(payload)
        at_least("maxlen", maxlen, 1, or_none=True)
        with self._cond:
            t = self._topics.setdefault(topic, _Topic())
            ms = int(self.clock.time() * 1000)
            last_ms, last_seq = t.last_id
            new_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
            t.entries[new_id] = raw
            t.last_id = new_id
            while maxlen is not None and len(t.entries) > maxlen:
                del t.entries[next(iter(t.entries))]
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
            return sum(t.entries.pop(k, None) is not None for k in dict.fromkeys(keys))

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


# -- job store -------------------------------------------------------------------------
@dataclass
class _Job:
    job_id: str
    state: JobState
    attempts: int
    created_at: float
    updated_at: float
    result: str | None = None  # JSON text, as Redis stores it
    error: str | None = None
    message: str | None = None
    history: list[Transition] = field(default_factory=list)
    expires_at: float | None = None  # clock.time() after which the record is gone

    def record(self) -> JobRecord:
        return JobRecord(
            job_id=self.job_id,
            state=self.state,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            result=None if self.result is None else json.loads(self.result),
            error=self.error,
            message=self.message,
            history=[h.model_copy() for h in self.history],
        )


def states(expect: Collection[JobState] | None) -> frozenset[JobState] | None:
    """``expect`` validated (a bare string would silently become its characters)."""
    if expect is None:
        return None
    if isinstance(expect, str):
        raise TypeError(f"expect must be a collection of JobState, got the string {expect!r}")
    return frozenset(JobState(s) for s in expect)


@register_plugin("in_memory")
@register_plugin("memory")
class MemoryJobStore(JobStorageInterface):
    """Job records in a dict behind one lock; terminal records expire after ``ttl``
    seconds of the clock, like the Redis store's key TTL."""

    def __init__(self, clock: Clock | None = None, *, ttl: float = DEFAULT_JOB_TTL) -> None:
        _positive("ttl", ttl)
        self.clock = clock or SystemClock()
        self.ttl = ttl
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        options.setdefault("ttl", env.settings.job_ttl)
        return cls(clock=env.clock, **options)

    def _live(self, job_id: str) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.expires_at is not None and self.clock.time() >= job.expires_at:
            del self._jobs[job_id]
            return None
        return job

    def _move(self, job: _Job, to: JobState, now: float, note: str | None) -> None:
        if to is JobState.RUNNING:
            job.attempts += 1
        job.state = to
        job.updated_at = now
        job.history.append(Transition(state=to, at=now, attempt=job.attempts, note=note))
        job.expires_at = now + self.ttl if to in TERMINAL else None

    def create(self, job_id: str, *, message: str | None = None) -> JobRecord:
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        with self._lock:
            now = self.clock.time()
            job = self._live(job_id)
            if job is None:
                job = _Job(job_id, JobState.PENDING, 0, now, now, message=message)
                job.history.append(Transition(state=JobState.PENDING, at=now, attempt=0))
                self._jobs[job_id] = job
            elif job.state in (JobState.FAILED, JobState.DEAD):
                self._move(job, JobState.PENDING, now, None)
                if message is not None:
                    job.message = message
            else:
                raise IllegalTransitionError(exists_message(job_id, job.state))
            return job.record()

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._live(job_id)
            if job is None:
                raise not_found(job_id)
            return job.record()

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: Collection[JobState] | None = None,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
    ) -> JobRecord:
        to = JobState(to)
        wanted = states(expect)
        raw = None if result is None else encode_result(result)
        with self._lock:
            job = self._live(job_id)
            if job is None:
                raise not_found(job_id)
            check(job_id, job.state, to, wanted)
            self._move(job, to, self.clock.time(), note)
            if raw is not None:
                job.result = raw
            if error is not None:
                job.error = error
            return job.record()

    def list(self, state: JobState | None = None, *, limit: int = 100) -> list[JobRecord]:
        wanted = None if state is None else JobState(state)
        with self._lock:
            jobs = [self._live(i) for i in list(self._jobs)]
            live = [j for j in jobs if j is not None and wanted in (None, j.state)]
            # newest first; ties by id descending, as Redis's ZREVRANGE orders them
            live.sort(key=lambda j: (j.updated_at, j.job_id), reverse=True)
            return [j.record() for j in live[: max(limit, 0)]]

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._live(job_id) is not None and self._jobs.pop(job_id) is not None


# -- locks -----------------------------------------------------------------------------
@dataclass
class _Held:
    token: str
    expires_at: float | None  # clock.monotonic()


class MemoryLock(Lock):
    """One handle on a name in a :class:`MemoryLocks`; not re-entrant, like Redis's.

    The handle may be released from another thread than the one that acquired it."""

    def __init__(
        self, owner: MemoryLocks, name: str, ttl: float | None, timeout: float | None = None
    ) -> None:
        self._owner = owner
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self._token: str | None = None

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        timeout = self.timeout if timeout is None else timeout
        o = self._owner
        token = uuid.uuid4().hex
        # the blocking timeout is real (thread) time, as for threading.Lock and Redis;
        # only the TTL runs on the clock
        deadline = None if timeout is None else time.monotonic() + timeout
        with o.cond:
            while True:
                fence = o.try_take(self.name, token, self.ttl)
                if fence is not None:
                    self._token, self.fence = token, fence
                    return True
                if not blocking:
                    return False
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                if o.held[self.name].expires_at is not None:
                    wait = _EXPIRY_RECHECK if wait is None else min(wait, _EXPIRY_RECHECK)
                o.cond.wait(wait)

    def _mine(self) -> _Held:
        """The live hold of this handle, else LockLostError (expired, taken or never held)."""
        if self._token is None:
            raise LockLostError(f"lock {self.name!r} is not held by this handle")
        held = self._owner.live(self.name)
        if held is None or held.token != self._token:
            self._token = None
            raise LockLostError(
                f"lock {self.name!r} expired before it was released or extended and may "
                "have been taken by another holder; use a longer ttl or extend() in time"
            )
        return held

    def release(self) -> None:
        with self._owner.cond:
            self._mine()
            self._token = None
            del self._owner.held[self.name]
            self._owner.cond.notify_all()

    def extend(self, additional: float) -> None:
        at_least("additional", additional, 0, unit="seconds")
        with self._owner.cond:
            held = self._mine()
            if held.expires_at is None:
                raise ValueError(f"lock {self.name!r} has no ttl; there is nothing to extend")
            held.expires_at += additional

    def owned(self) -> bool:
        with self._owner.cond:
            held = self._owner.live(self.name)
            return self._token is not None and held is not None and held.token == self._token

    def __repr__(self) -> str:
        return f"MemoryLock({self.name!r}, ttl={self.ttl!r}, fence={self.fence!r})"


@register_plugin("memory")
class MemoryLocks(LockInterface):
    """Locks within one process; TTLs run on the injected clock."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.cond = threading.Condition()
        self.held: dict[str, _Held] = {}
        self._fences: dict[str, int] = {}

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        return cls(clock=env.clock, **options)

    def lock(
        self, name: str, *, ttl: float | None = 30.0, timeout: float | None = None
    ) -> MemoryLock:
        """A handle on ``name``. ``timeout`` is how long ``with lock:`` (and ``acquire()``
        without one) waits before giving up with LockNotAcquired; None waits for ever."""
        _positive("ttl", ttl)
        return MemoryLock(self, name, ttl, timeout)

    def live(self, name: str) -> _Held | None:
        """The current hold of ``name`` unless its TTL ran out. Call with ``cond`` held."""
        held = self.held.get(name)
        if held is None or held.expires_at is None or self.clock.monotonic() < held.expires_at:
            return held
        del self.held[name]
        return None

    def try_take(self, name: str, token: str, ttl: float | None) -> int | None:
        """Take ``name`` if free and return its new fence. Call with ``cond`` held."""
        if self.live(name) is not None:
            return None
        expires = None if ttl is None else self.clock.monotonic() + ttl
        self.held[name] = _Held(token, expires)
        self._fences[name] = fence = self._fences.get(name, 0) + 1
        return fence
