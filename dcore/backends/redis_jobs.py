"""The Redis job store: every transition is one Lua script, so it is atomic.

Keys (``<p>`` is the key prefix)::

    <p>:job:<id>              hash: job_id, state, attempts, created_at, updated_at,
                              result (JSON), error, message
    <p>:job:<id>:history      list of Transition JSON, oldest first
    <p>:jobs:all              sorted set of ids by updated_at  (list() without a state)
    <p>:jobs:state:<STATE>    sorted set of ids by updated_at, one per state

The script checks the current state against :data:`~dcore.services.jobs.ALLOWED`
(generated from that table, so there is one source of truth) and ``expect``, updates the
hash, appends history, counts an attempt on a move to RUNNING, moves the id between
state indexes and sets the record's TTL when the state is terminal (``PERSIST`` when it
leaves one, e.g. a DLQ replay). The time is an argument, read from the injected clock,
never Redis's ``TIME``, so a virtual clock drives it. On a refused move the script
returns the current state and Python raises with :func:`dcore.services.jobs.check`'s
message, identical to the memory store's.

Index entries of expired records are dropped lazily by :meth:`RedisJobStore.list`.
Keys are all passed in ``KEYS`` (no key is built inside the script).

With a Redis event bus on the same server, the script also publishes the move's state
event (``create_announced`` / ``transition_announced``, see
:class:`~dcore.services.jobs.AnnouncingJobStore`) and skips reading the record back: a
worker's job costs two round trips for its state instead of four.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self, cast

from pydantic import TypeAdapter

from dcore.backends._redis import (
    RedisBackend,
    same_server,
    settings_url,
    text,
    translate_errors,
)
from dcore.backends._shared import (
    DEFAULT_JOB_TTL,
    encode_payload,
    encode_result,
    exists_message,
    not_found,
    states,
)
from dcore.backends.redis_events import RedisEventBus
from dcore.core.clock import Clock, SystemClock
from dcore.core.plugins import register_plugin
from dcore.errors import IllegalTransitionError
from dcore.services.jobs import (
    ALLOWED,
    TERMINAL,
    AnnouncingJobStore,
    JobRecord,
    JobState,
    JobStorageInterface,
    Transition,
    check,
)

if TYPE_CHECKING:
    from dcore.backends._redis import RedisClient
    from dcore.core.environment import Environment
    from dcore.services.events import EventBusInterface

__all__ = ["RedisJobStore"]

_STATES = list(JobState)


def _lua_set(names: Collection[str]) -> str:
    return "{" + ", ".join(f"{n} = true" for n in sorted(names)) + "}"


_ALLOWED_LUA = ", ".join(f"{s} = {_lua_set(ALLOWED[s])}" for s in _STATES)
_INDEX_LUA = ", ".join(f"{s} = {i + 4}" for i, s in enumerate(_STATES))

# The record as two JSON strings (hash as an object, history as an array): three reply
# elements instead of dozens, which halves the client-side parsing time.
READ_RECORD = (
    "cjson.encode(hash), '[' .. table.concat(redis.call('LRANGE', KEYS[2], 0, -1), ',') .. ']'"
)
_HASH_TABLE = """
local flat = redis.call('HGETALL', KEYS[1])
local hash = {}
for i = 1, #flat, 2 do hash[flat[i]] = flat[i + 1] end
"""

# KEYS: 1 record, 2 history, 3 all-index, 4.. one index per state (in JobState order)
# ARGV: 1 op (create|move), 2 to, 3 expect (',A,B,' or '-' for none), 4 now, 5 ttl ms,
#       6 job id, 7 note JSON, 8 has result, 9 result JSON, 10 has error, 11 error,
#       12 has message, 13 message, 14 read back ('1' returns the record),
#       15 channel to publish the state event on ('' for none), 16 the event's JSON
TRANSITION_LUA = f"""
local ALLOWED = {{{_ALLOWED_LUA}}}
local INDEX = {{{_INDEX_LUA}}}
local TERMINAL = {_lua_set(TERMINAL)}
local op, to, expect, now, ttl, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local found = redis.call('HMGET', KEYS[1], 'state', 'attempts')
local current, attempts, fields = found[1], 0, nil
if not current then
  if op ~= 'create' then return {{'missing'}} end
  for i = 4, #KEYS do redis.call('ZREM', KEYS[i], id) end  -- stale ids of an expired record
  redis.call('DEL', KEYS[2])
  fields = {{'job_id', id, 'state', 'PENDING', 'attempts', 0, 'created_at', now,
            'updated_at', now}}
  to = 'PENDING'
else
  if op == 'create' then
    if current ~= 'FAILED' and current ~= 'DEAD' then return {{'exists', current}} end
    to = 'PENDING'
  elseif expect ~= '-' and not string.find(expect, ',' .. current .. ',', 1, true) then
    return {{'illegal', current}}
  end
  if not ALLOWED[current][to] then return {{'illegal', current}} end
  attempts = tonumber(found[2])
  if to == 'RUNNING' then attempts = attempts + 1 end
  fields = {{'state', to, 'attempts', attempts, 'updated_at', now}}
  redis.call('ZREM', KEYS[INDEX[current]], id)
end
for i, name in ipairs({{'result', 'error', 'message'}}) do
  if ARGV[6 + 2 * i] == '1' then
    fields[#fields + 1] = name
    fields[#fields + 1] = ARGV[7 + 2 * i]
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('RPUSH', KEYS[2], '{{"state":"' .. to .. '","at":' .. now .. ',"attempt":' ..
           attempts .. ',"note":' .. ARGV[7] .. '}}')
redis.call('ZADD', KEYS[INDEX[to]], now, id)
redis.call('ZADD', KEYS[3], now, id)
if TERMINAL[to] then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
elseif current and TERMINAL[current] then  -- leaving a final state (a DLQ replay)
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
if ARGV[15] ~= '' then redis.call('PUBLISH', ARGV[15], ARGV[16]) end
if ARGV[14] ~= '1' then return {{'ok'}} end
{_HASH_TABLE}
return {{'ok', {READ_RECORD}}}
"""

# KEYS: 1 record, 2 history. The record, or nothing if there is none.
READ_LUA = f"""
{_HASH_TABLE}
if #flat == 0 then return {{}} end
return {{'ok', {READ_RECORD}}}
"""

# KEYS as above; ARGV: 1 job id. Drops the id from the indexes if its record expired.
PRUNE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS as above; ARGV: 1 job id. Returns 1 if the record existed.
DELETE_LUA = """
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return redis.call('DEL', KEYS[1], KEYS[2]) > 0 and 1 or 0
"""


_HISTORY = TypeAdapter(list[Transition])


def _record(hash_json: bytes | str, history_json: bytes | str) -> JobRecord:
    h = json.loads(hash_json)
    return JobRecord(
        job_id=h["job_id"],
        state=JobState(h["state"]),
        attempts=int(h["attempts"]),
        created_at=float(h["created_at"]),
        updated_at=float(h["updated_at"]),
        result=json.loads(h["result"]) if "result" in h else None,
        error=h.get("error"),
        message=h.get("message"),
        history=_HISTORY.validate_json(history_json),
    )


@register_plugin("redis")
class RedisJobStore(RedisBackend, JobStorageInterface, AnnouncingJobStore):
    """Job records in Redis; timestamps from ``clock``; terminal records live ``ttl`` s."""

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        url: str | None = None,
        prefix: str = "dcore",
        clock: Clock | None = None,
        ttl: float = DEFAULT_JOB_TTL,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        super().__init__(client, url=url, prefix=prefix)
        self.clock = clock or SystemClock()
        self.ttl = ttl
        self._index_keys = [self._all, *(self.key("jobs", "state", s) for s in _STATES)]
        self._transition = self.client.register_script(TRANSITION_LUA)
        self._delete = self.client.register_script(DELETE_LUA)
        self._prune = self.client.register_script(PRUNE_LUA)
        self._read = self.client.register_script(READ_LUA)

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        s = env.settings
        options.setdefault("ttl", s.job_ttl)
        return cls(url=settings_url(s), prefix=s.key_prefix, clock=env.clock, **options)

    def _keys(self, job_id: str) -> list[str]:
        record = self.key("job", job_id)
        return [record, f"{record}:history", *self._index_keys]

    @property
    def _all(self) -> str:
        return self.key("jobs", "all")

    def _run(
        self,
        op: str,
        job_id: str,
        to: JobState,
        *,
        expect: frozenset[JobState] | None = None,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
        message: str | None = None,
        event: tuple[str, str] | None = None,
    ) -> list[Any]:
        """Run the transition script; its ``ok`` reply (with the record unless ``event``,
        a (channel, JSON) pair published in the same step, is given), else raise."""
        if op == "create" and (not isinstance(job_id, str) or not job_id):
            raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
        channel, data = event or ("", "")
        args = [
            op,
            to.value,
            "-" if expect is None else "," + ",".join(sorted(expect)) + ",",
            repr(float(self.clock.time())),
            max(1, round(self.ttl * 1000)),
            job_id,
            json.dumps(note),
            "0" if result is None else "1",
            "" if result is None else encode_result(result),
            "0" if error is None else "1",
            error or "",
            "0" if message is None else "1",
            message or "",
            "0" if event else "1",
            channel,
            data,
        ]
        reply: list[Any] = self._transition(keys=self._keys(job_id), args=args)
        status = text(reply[0])
        if status == "ok":
            return reply
        if status == "missing":
            raise not_found(job_id)
        current = JobState(text(reply[1]))
        if status == "exists":
            raise IllegalTransitionError(exists_message(job_id, current))
        check(job_id, current, to, expect)
        raise AssertionError(f"job script refused {current} -> {to} but check() allowed it")

    @translate_errors
    def create(self, job_id: str, *, message: str | None = None) -> JobRecord:
        reply = self._run("create", job_id, JobState.PENDING, message=message)
        return _record(reply[1], reply[2])

    @translate_errors
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
        reply = self._run(
            "move", job_id, JobState(to), expect=states(expect), result=result, error=error,
            note=note,
        )  # fmt: skip
        return _record(reply[1], reply[2])

    # -- state events published by the script (AnnouncingJobStore) -------------------
    def announces_on(self, bus: EventBusInterface) -> bool:
        return isinstance(bus, RedisEventBus) and same_server(self, bus)

    def _event(
        self, bus: EventBusInterface, topic: str, payload: Mapping[str, Any]
    ) -> tuple[str, str]:
        if not self.announces_on(bus):
            raise ValueError(
                f"the Redis job store at {self.url} cannot publish on {bus!r}: only on a "
                "Redis event bus using the same server (check announces_on first)"
            )
        channel = cast(RedisEventBus, bus).channel(topic)  # announces_on checked its type
        return channel, encode_payload(payload)

    @translate_errors
    def create_announced(
        self,
        job_id: str,
        bus: EventBusInterface,
        topic: str,
        payload: Mapping[str, Any],
        *,
        message: str | None = None,
    ) -> None:
        event = self._event(bus, topic, payload)
        self._run("create", job_id, JobState.PENDING, message=message, event=event)

    @translate_errors
    def transition_announced(
        self,
        job_id: str,
        to: JobState,
        bus: EventBusInterface,
        topic: str,
        payload: Mapping[str, Any],
        *,
        expect: Collection[JobState] | None = None,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        event = self._event(bus, topic, payload)
        self._run(
            "move", job_id, JobState(to), expect=states(expect), result=result, error=error,
            note=note, event=event,
        )  # fmt: skip

    @translate_errors
    def get(self, job_id: str) -> JobRecord:
        record = self._fetch([job_id])[0]
        if record is None:
            raise not_found(job_id)
        return record

    def _fetch(self, ids: Sequence[str]) -> list[JobRecord | None]:
        """Records by id in one round trip; each read is one script, so a consistent one."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            self._read(keys=self._keys(job_id)[:2], client=pipe)
        return [_record(r[1], r[2]) if r else None for r in pipe.execute()]

    @translate_errors
    def list(self, state: JobState | None = None, *, limit: int = 100) -> list[JobRecord]:
        wanted = None if state is None else JobState(state)
        index = self._all if wanted is None else self.key("jobs", "state", wanted)
        found: list[JobRecord] = []
        expired: list[str] = []
        start, batch = 0, max(limit, 1)
        while len(found) < limit:
            ids = [text(i) for i in self.client.zrevrange(index, start, start + batch - 1)]
            if not ids:
                break
            start += len(ids)
            for job_id, record in zip(ids, self._fetch(ids), strict=True):
                if record is None:
                    expired.append(job_id)
                elif wanted in (None, record.state) and len(found) < limit:
                    found.append(record)  # (a record moved since the index was read: skip)
        for job_id in expired:  # after paging, so that offsets did not shift under it
            self._prune(keys=self._keys(job_id), args=[job_id])
        return found

    @translate_errors
    def delete(self, job_id: str) -> bool:
        return bool(self._delete(keys=self._keys(job_id), args=[job_id]))
