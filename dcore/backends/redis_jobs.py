"""The Redis job store: every transition is one Lua script, so it is atomic.

Keys (``<p>`` is the key prefix)::

    <p>:job:<id>              hash: job_id, state, attempts, created_at, updated_at,
                              result (JSON), error, message, and for leases: attempt,
                              owner, lease_until, lost, plan, retry_at
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

Leases (``claim``, ``renew``, ``end_attempt``) and dead-lettering (``bury``: the FAILED
move, the keyed append to the bus's DLQ stream, the DEAD move and the ``job.dead`` event
in one script) are scripts of their own; times and lease ends are computed in Python from
the injected clock and stored as given, so memory and Redis records agree to the digit.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self, cast

from pydantic import TypeAdapter

from dcore._core.clock import Clock, SystemClock
from dcore._plugins.registry import register_plugin
from dcore.backends._redis import (
    RedisBackend,
    same_server,
    settings_url,
    text,
    translate_errors,
)
from dcore.backends._shared import (
    DEFAULT_JOB_TTL,
    check_end,
    encode_payload,
    encode_result,
    exists_message,
    lease_lost_message,
    not_found,
    states,
)
from dcore.backends.redis_events import KEYED_APPEND_LUA, RedisEventBus
from dcore.errors import IllegalTransitionError, LeaseLostError
from dcore.services.jobs import (
    ALLOWED,
    LEASED,
    TERMINAL,
    Announcement,
    AnnouncingJobStore,
    Claim,
    ClaimStatus,
    DeadLetter,
    JobRecord,
    JobState,
    JobStorageInterface,
    Transition,
    check,
)

if TYPE_CHECKING:
    from dcore._core.environment import Environment
    from dcore.backends._redis import RedisClient
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

# Adds numbers to a JSON list field of KEYS[1], sorted, each once.
_MERGE_LUA = """
local function merge(field, numbers)
  local raw = redis.call('HGET', KEYS[1], field)
  local seen, list = {}, {}
  for _, n in ipairs(raw and cjson.decode(raw) or {}) do
    if not seen[n] then seen[n] = true; list[#list + 1] = n end
  end
  for _, n in ipairs(numbers) do
    if not seen[n] then seen[n] = true; list[#list + 1] = n end
  end
  table.sort(list)
  if #list > 0 then redis.call('HSET', KEYS[1], field, cjson.encode(list)) end
end
"""

# Shared by the scripts: the state machine tables and a move of an existing record.
_MOVE_LUA = f"""
local ALLOWED = {{{_ALLOWED_LUA}}}
local INDEX = {{{_INDEX_LUA}}}
local TERMINAL = {_lua_set(TERMINAL)}
local LEASED = {_lua_set(LEASED)}
-- move the record from current to `to` (checked by the caller): history, indexes, TTL;
-- leaving a leased state drops the lease, leaving FAILED its plan
local function move(id, current, to, attempts, now, ttl, note_json, fields)
  fields[#fields + 1] = 'state'
  fields[#fields + 1] = to
  fields[#fields + 1] = 'attempts'
  fields[#fields + 1] = attempts
  fields[#fields + 1] = 'updated_at'
  fields[#fields + 1] = now
  if current and LEASED[current] and not LEASED[to] then
    redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
  end
  if current == 'FAILED' and to ~= 'FAILED' then redis.call('HDEL', KEYS[1], 'plan', 'retry_at') end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('RPUSH', KEYS[2], '{{"state":"' .. to .. '","at":' .. now .. ',"attempt":' ..
             attempts .. ',"note":' .. note_json .. '}}')
  if current then redis.call('ZREM', KEYS[INDEX[current]], id) end
  redis.call('ZADD', KEYS[INDEX[to]], now, id)
  redis.call('ZADD', KEYS[3], now, id)
  if TERMINAL[to] then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  elseif current and TERMINAL[current] then  -- leaving a final state (a DLQ replay)
    redis.call('PERSIST', KEYS[1])
    redis.call('PERSIST', KEYS[2])
  end
end
"""

# KEYS: 1 record, 2 history, 3 all-index, 4.. one index per state (in JobState order)
# ARGV: 1 op (create|move), 2 to, 3 expect (',A,B,' or '-' for none), 4 now, 5 ttl ms,
#       6 job id, 7 note JSON, 8 has result, 9 result JSON, 10 has error, 11 error,
#       12 has message, 13 message, 14 read back ('1' returns the record),
#       15 channel to publish the state event on ('' for none), 16 the event's JSON,
#       17 owner whose lease the move needs ('' for none), 18 retry_at ('' for none),
#       19 completed stages to add, a JSON list ('' for none)
TRANSITION_LUA = (
    _MOVE_LUA
    + _MERGE_LUA
    + f"""
local op, to, expect, now, ttl, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local found = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'owner')
local current, attempts, fields = found[1], 0, {{}}
if not current then
  if op ~= 'create' then return {{'missing'}} end
  for i = 4, #KEYS do redis.call('ZREM', KEYS[i], id) end  -- stale ids of an expired record
  redis.call('DEL', KEYS[2], KEYS[1])
  fields = {{'job_id', id, 'created_at', now}}
  to = 'PENDING'
else
  if ARGV[17] ~= '' and (current ~= 'RUNNING' or found[3] ~= ARGV[17]) then
    return {{'fenced', current, found[3] or ''}}
  end
  if op == 'create' then
    if current ~= 'FAILED' and current ~= 'DEAD' then return {{'exists', current}} end
    to = 'PENDING'
  elseif expect ~= '-' and not string.find(expect, ',' .. current .. ',', 1, true) then
    return {{'illegal', current}}
  end
  if not ALLOWED[current][to] then return {{'illegal', current}} end
  attempts = tonumber(found[2])
  if to == 'RUNNING' then attempts = attempts + 1 end
end
for i, name in ipairs({{'result', 'error', 'message'}}) do
  if ARGV[6 + 2 * i] == '1' then
    fields[#fields + 1] = name
    fields[#fields + 1] = ARGV[7 + 2 * i]
  end
end
move(id, current, to, attempts, now, ttl, ARGV[7], fields)
if to == 'FAILED' and ARGV[17] ~= '' then
  if ARGV[19] ~= '' then merge('completed', cjson.decode(ARGV[19])) end
  if ARGV[18] ~= '' then
    redis.call('HSET', KEYS[1], 'plan', 'retry', 'retry_at', ARGV[18])
  else  -- "compensate" while a completed stage is not compensated (plan_after_failure)
    local c = redis.call('HMGET', KEYS[1], 'completed', 'compensated')
    local undone, plan = {{}}, 'dead'
    for _, i in ipairs(c[2] and cjson.decode(c[2]) or {{}}) do undone[i] = true end
    for _, i in ipairs(c[1] and cjson.decode(c[1]) or {{}}) do
      if not undone[i] then plan = 'compensate' end
    end
    redis.call('HSET', KEYS[1], 'plan', plan)
  end
end
if ARGV[15] ~= '' then redis.call('PUBLISH', ARGV[15], ARGV[16]) end
if ARGV[14] ~= '1' then return {{'ok'}} end
{_HASH_TABLE}
return {{'ok', {READ_RECORD}}}
"""
)

# KEYS as for TRANSITION_LUA. ARGV: 1 attempt, 2 owner, 3 now, 4 lease end, 5 note JSON,
# 6 ttl ms, 7 job id, 8 channel ('' for none), 9 the event's JSON.
CLAIM_LUA = (
    _MOVE_LUA
    + """
local n, now = tonumber(ARGV[1]), tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'attempt', 'lease_until', 'lost',
                     'plan')
local state = f[1]
if not state then return {'missing'} end
local attempt = tonumber(f[3] or '0')
if TERMINAL[state] then return {'finished', state, attempt} end
if attempt > n or (state == 'FAILED' and attempt >= n) then
  return {'ended', state, attempt, f[6] or ''}
end
local lost = 0
if LEASED[state] then
  if f[4] and tonumber(f[4]) > now then return {'busy', state, attempt, f[4]} end
  if attempt == n then lost = tonumber(f[5] or '0') + 1 end
end
if state == 'COMPENSATING' then  -- resume the interrupted compensation
  move(ARGV[7], state, state, tonumber(f[2]), ARGV[3], ARGV[6], '"compensation taken over"',
       {'owner', ARGV[2], 'lease_until', ARGV[4], 'lost', lost})
  return {'compensating', state, attempt, lost}
end
move(ARGV[7], state, 'RUNNING', tonumber(f[2]) + 1, ARGV[3], ARGV[6], ARGV[5],
     {'attempt', ARGV[1], 'owner', ARGV[2], 'lease_until', ARGV[4], 'lost', lost})
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return {'started', 'RUNNING', ARGV[1], lost}
"""
)

# KEYS as for TRANSITION_LUA. ARGV: 1 owner, 2 now, 3 lease end, 4 ttl ms, 5 job id,
# 6 channel ('' for none), 7 the event's JSON.
COMPENSATE_LUA = (
    _MOVE_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'attempt', 'lease_until', 'lost',
                     'plan')
local state = f[1]
if not state then return {'missing'} end
local attempt = tonumber(f[3] or '0')
if TERMINAL[state] then return {'finished', state, attempt} end
local lost = 0
if state == 'COMPENSATING' then
  if f[4] and tonumber(f[4]) > tonumber(ARGV[2]) then return {'busy', state, attempt, f[4]} end
  lost = tonumber(f[5] or '0') + 1
elseif state ~= 'FAILED' or f[6] ~= 'compensate' then
  return {'ended', state, attempt, f[6] or ''}
end
move(ARGV[5], state, 'COMPENSATING', tonumber(f[2]), ARGV[2], ARGV[4], 'null',
     {'owner', ARGV[1], 'lease_until', ARGV[3], 'lost', lost})
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return {'started', 'COMPENSATING', attempt, lost}
"""
)

# KEYS: 1 record. ARGV: 1 owner, 2 the stage index, 3 the state the owner must hold the
# job in, 4 the field to add the index to. 'ok', 'missing', or 'fenced' with the state and
# the holder.
MARK_LUA = (
    _MERGE_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'owner')
if not f[1] then return {'missing'} end
if f[1] ~= ARGV[3] or f[2] ~= ARGV[1] then return {'fenced', f[1], f[2] or ''} end
merge(ARGV[4], {tonumber(ARGV[2])})
return {'ok'}
"""
)

# KEYS: 1 record. ARGV: 1 owner, 2 lease end. 1 if renewed.
RENEW_LUA = """
local f = redis.call('HMGET', KEYS[1], 'state', 'owner')
if (f[1] ~= 'RUNNING' and f[1] ~= 'COMPENSATING') or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
return 1
"""

# KEYS as for TRANSITION_LUA, then the DLQ stream and its keys hash (the bus's).
# ARGV: 1 owner ('' none), 2 now, 3 ttl ms, 4 job id, 5 error, 6 letter JSON, 7 letter
# key, 8 channel, 9 the job.dead event's JSON (the entry id is added as dlq_id), 10 message
# for a record without one.
BURY_LUA = (
    _MOVE_LUA
    + KEYED_APPEND_LUA
    + """
local owner, now, ttl, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'owner', 'lease_until',
                     'message')
local state, attempts = f[1], tonumber(f[2] or '0')
if not state then
  for i = 4, #KEYS - 2 do redis.call('ZREM', KEYS[i], id) end
  redis.call('DEL', KEYS[2])
  move(id, nil, 'PENDING', 0, now, ttl, 'null', {'job_id', id, 'created_at', now})
  state = 'PENDING'
elseif TERMINAL[state] then
  return {'none'}
end
if LEASED[state] then
  local held = (owner ~= '' and f[3] ~= owner)
    or (owner == '' and f[4] and tonumber(f[4]) > tonumber(now))
  if held then return {'fenced', state, f[3] or ''} end
  if state == 'RUNNING' then
    move(id, state, 'FAILED', attempts, now, ttl, 'null', {})
    state = 'FAILED'
  end
end
local entry = keyed_append(KEYS[#KEYS - 1], KEYS[#KEYS], ARGV[6], '', ARGV[7])
local fields = {'error', ARGV[5]}
if not f[5] and ARGV[10] ~= '' then
  fields[#fields + 1] = 'message'
  fields[#fields + 1] = ARGV[10]
end
move(id, state, 'DEAD', attempts, now, ttl, '"dead-lettered"', fields)
redis.call('PUBLISH', ARGV[8], string.sub(ARGV[9], 1, -2) .. ',"dlq_id":"' .. entry .. '"}')
return {'ok', entry}
"""
)

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


def _held(owner: bytes | str) -> str | None:
    return text(owner) or None


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
        attempt=int(h.get("attempt", 0)),
        owner=h.get("owner"),
        lease_until=float(h["lease_until"]) if "lease_until" in h else None,
        lost=int(h.get("lost", 0)),
        plan=h.get("plan"),
        retry_at=float(h["retry_at"]) if "retry_at" in h else None,
        completed=json.loads(h["completed"]) if "completed" in h else [],
        compensated=json.loads(h["compensated"]) if "compensated" in h else [],
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
        self._claim = self.client.register_script(CLAIM_LUA)
        self._compensate = self.client.register_script(COMPENSATE_LUA)
        self._mark = self.client.register_script(MARK_LUA)
        self._renew = self.client.register_script(RENEW_LUA)
        self._bury = self.client.register_script(BURY_LUA)
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
        owner: str | None = None,
        retry_at: float | None = None,
        completed: Collection[int] = (),
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
            owner or "",
            "" if retry_at is None else repr(float(retry_at)),
            json.dumps(sorted({int(i) for i in completed})) if completed else "",
        ]
        reply: list[Any] = self._transition(keys=self._keys(job_id), args=args)
        status = text(reply[0])
        if status == "ok":
            return reply
        if status == "missing":
            raise not_found(job_id)
        current = JobState(text(reply[1]))
        if status == "fenced":
            raise LeaseLostError(lease_lost_message(job_id, owner, current, _held(reply[2])))
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

    # -- leases -----------------------------------------------------------------------
    @translate_errors
    def claim(
        self,
        job_id: str,
        *,
        attempt: int,
        owner: str,
        lease: float,
        note: str | None = None,
        announce: Announcement | None = None,
    ) -> Claim:
        channel, data = ("", "") if announce is None else self._event(*announce)
        now = float(self.clock.time())
        args = [attempt, owner, repr(now), repr(now + lease), json.dumps(note),
                max(1, round(self.ttl * 1000)), job_id, channel, data]  # fmt: skip
        reply = self._claim(keys=self._keys(job_id), args=args)
        status = ClaimStatus(text(reply[0]))
        if status is ClaimStatus.MISSING:
            return Claim(status)
        state, found = JobState(text(reply[1])), int(reply[2])
        if status in (ClaimStatus.STARTED, ClaimStatus.COMPENSATING):
            return Claim(status, state, found, lost=int(reply[3]))
        if status is ClaimStatus.BUSY:
            return Claim(status, state, found, retry_in=float(text(reply[3])) - now)
        if status is ClaimStatus.ENDED:
            return Claim(status, state, found, plan=text(reply[3]) or None)
        return Claim(status, state, found)

    @translate_errors
    def renew(self, job_id: str, *, owner: str, lease: float) -> bool:
        until = repr(float(self.clock.time()) + lease)
        return bool(self._renew(keys=[self.key("job", job_id)], args=[owner, until]))

    @translate_errors
    def end_attempt(
        self,
        job_id: str,
        to: JobState,
        *,
        owner: str,
        result: Any = None,
        error: str | None = None,
        note: str | None = None,
        retry_at: float | None = None,
        completed: Collection[int] = (),
        announce: Announcement | None = None,
    ) -> None:
        to = JobState(to)
        check_end(to)
        event = None if announce is None else self._event(*announce)
        self._run("move", job_id, to, result=result, error=error, note=note, event=event or
                  ("", ""), owner=owner, retry_at=retry_at, completed=completed)  # fmt: skip

    @translate_errors
    def compensate(
        self,
        job_id: str,
        *,
        owner: str,
        lease: float,
        announce: Announcement | None = None,
    ) -> Claim:
        channel, data = ("", "") if announce is None else self._event(*announce)
        now = float(self.clock.time())
        args = [owner, repr(now), repr(now + lease), max(1, round(self.ttl * 1000)), job_id,
                channel, data]  # fmt: skip
        reply = self._compensate(keys=self._keys(job_id), args=args)
        status = ClaimStatus(text(reply[0]))
        if status is ClaimStatus.MISSING:
            raise not_found(job_id)
        state, found = JobState(text(reply[1])), int(reply[2])
        if status is ClaimStatus.STARTED:
            return Claim(status, state, found, lost=int(reply[3]))
        if status is ClaimStatus.BUSY:
            return Claim(status, state, found, retry_in=float(text(reply[3])) - now)
        if status is ClaimStatus.ENDED:
            return Claim(status, state, found, plan=text(reply[3]) or None)
        return Claim(status, state, found)

    def mark_completed(self, job_id: str, *, owner: str, index: int) -> None:
        self._mark_stage(job_id, owner, index, JobState.RUNNING, "completed")

    def mark_compensated(self, job_id: str, *, owner: str, index: int) -> None:
        self._mark_stage(job_id, owner, index, JobState.COMPENSATING, "compensated")

    @translate_errors
    def _mark_stage(self, job_id: str, owner: str, index: int, state: JobState,
                    field: str) -> None:  # fmt: skip
        reply = self._mark(
            keys=[self.key("job", job_id)], args=[owner, int(index), state.value, field]
        )
        if text(reply[0]) == "missing":
            raise not_found(job_id)
        if text(reply[0]) == "fenced":
            raise LeaseLostError(
                lease_lost_message(job_id, owner, JobState(text(reply[1])), _held(reply[2]))
            )

    @translate_errors
    def bury(
        self,
        job_id: str,
        *,
        owner: str | None,
        error: str,
        letter: DeadLetter,
        announce: Announcement,
    ) -> str | None:
        channel, data = self._event(*announce)
        bus = cast(RedisEventBus, announce.bus)  # _event checked it
        message = letter.payload.get("message")
        args = [owner or "", repr(float(self.clock.time())), max(1, round(self.ttl * 1000)),
                job_id, error, encode_payload(letter.payload), letter.key, channel, data,
                message if isinstance(message, str) else ""]  # fmt: skip
        reply = self._bury(keys=[*self._keys(job_id), *bus.stream_keys(letter.topic)],
                           args=args)  # fmt: skip
        status = text(reply[0])
        if status == "none":
            return None
        if status == "fenced":
            raise LeaseLostError(
                lease_lost_message(job_id, owner, JobState(text(reply[1])), _held(reply[2]))
            )
        return text(reply[1])

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
