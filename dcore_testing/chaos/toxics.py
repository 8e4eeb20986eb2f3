"""Toxic types: their attributes, validation and per-chunk behaviour.

Each type is a :class:`ToxicKind`: an ordered attribute schema (Go field order,
so JSON matches the real server), a validator, and ``run(io, attrs)``, a coroutine
that consumes one link's chunks through the :class:`StageIO` seam. ``run`` knows
nothing about sockets or rewiring; :mod:`.link` interrupts it by cancellation and
flushes whatever it was holding.

Differences from Toxiproxy v2.12.0 (see DIFFERENCES.md):

* attribute values that crash or wedge the real server are rejected with 400:
  slicer ``average_size <= 0`` or ``size_variation`` outside ``[0, average_size]``,
  bandwidth ``rate <= 0``, negative times/sizes, ``toxicity`` outside ``[0, 1]``;
* ``reset_peer`` sets ``SO_LINGER 0`` when it fires, so it resets the connection
  even when added to an open connection, and an inactive (toxicity-0) reset_peer
  no longer turns every close on the proxy into an RST; its wait is interruptible;
* an extra ``blackhole`` type swallows one direction while the connection stays
  open (a one-way partition); removing it lets data flow again;
* with a seed, every random draw comes from a per-toxic, per-link ``Random`` and
  is recorded in :attr:`ToxicSpec.decisions`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .gojson import GoType

MAX_DECISIONS = 10_000


@dataclass
class Chunk:
    """The bytes one ``read()`` returned, with the loop time they were read at."""

    data: bytes
    ts: float


class StageIO(Protocol):
    """What a toxic's ``run`` may do with its link (implemented by ``link.Stage``)."""

    rng: random.Random
    state: dict[str, Any]

    async def recv(self) -> Chunk | None:
        """Next chunk, or ``None`` at end of stream. It is held until sent or dropped."""

    async def send(self, chunk: Chunk, rest: Chunk | None = None) -> None:
        """Forward ``chunk``; ``rest`` is what is still held afterwards (if split)."""

    async def send_eof(self) -> None:
        """Propagate end of stream; the connection closes once it reaches the writer."""

    def drop(self) -> None:
        """Discard the held chunk."""

    def reset(self) -> None:
        """Tear the connection down with an RST on both sockets."""

    def log(self, kind: str, value: float) -> None:
        """Record a random draw for reproducibility checks."""


Attrs = Mapping[str, int]
RunFn = Callable[[StageIO, Attrs], Awaitable[None]]
ValidateFn = Callable[[Attrs], str | None]


@dataclass(frozen=True)
class ToxicKind:
    """One toxic type: schema, validation and behaviour."""

    name: str
    struct: str
    fields: Mapping[str, GoType]
    run: RunFn
    validate: ValidateFn
    buffer: int = 16
    closes_on_remove: bool = False


class Decision(NamedTuple):
    """One random draw made by a toxic on one link."""

    connection: int
    stream: str
    kind: str
    value: float


@dataclass
class ToxicSpec:
    """A toxic as the API sees it, plus its reproducible randomness."""

    name: str
    kind: ToxicKind
    stream: str
    toxicity: float
    attributes: dict[str, int]
    seed: int
    decisions: list[Decision] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return self.stream.lower()

    def link_rng(self, connection: int) -> random.Random:
        """A ``Random`` for this toxic on one connection, independent of other traffic."""
        return random.Random(derive_seed(self.seed, connection, self.direction))

    def record(self, connection: int, kind: str, value: float) -> None:
        if len(self.decisions) < MAX_DECISIONS:
            self.decisions.append(Decision(connection, self.direction, kind, value))

    def to_json(self) -> dict[str, Any]:
        from .gojson import float32

        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.kind.name,
            "stream": self.stream,
            "toxicity": float32(self.toxicity),
        }


def derive_seed(*parts: object) -> int:
    """A stable 64-bit seed from ``parts`` (unlike ``hash()``, the same in every process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def validate_toxicity(value: float) -> str | None:
    if not 0.0 <= value <= 1.0:
        return f"toxicity must be between 0 and 1 (got {value}); it is a probability"
    return None


def _non_negative(*names: str) -> ValidateFn:
    def check(attrs: Attrs) -> str | None:
        for name in names:
            if attrs[name] < 0:
                return f"{name} must not be negative (got {attrs[name]})"
        return None

    return check


def _validate_bandwidth(attrs: Attrs) -> str | None:
    if attrs["rate"] <= 0:
        return (
            f"bandwidth rate must be a positive KB/s value (got {attrs['rate']}); "
            "the real server never delivers data at rate 0 or below: remove the toxic instead"
        )
    return None


def _validate_slicer(attrs: Attrs) -> str | None:
    average, variation = attrs["average_size"], attrs["size_variation"]
    if average <= 0:
        return f"slicer average_size must be positive (got {average}); 0 crashes the real server"
    if not 0 <= variation <= average:
        return (
            f"slicer size_variation must be between 0 and average_size={average} "
            f"(got {variation}); a larger one makes the real server cut outside the chunk"
        )
    if attrs["delay"] < 0:
        return f"slicer delay must not be negative (got {attrs['delay']} microseconds)"
    return None


def _validate_latency(attrs: Attrs) -> str | None:
    for name in ("latency", "jitter"):
        if attrs[name] < 0:
            return f"latency {name} must not be negative (got {attrs[name]} ms)"
    return None


def _none(attrs: Attrs) -> str | None:
    return None


def _now() -> float:
    return asyncio.get_running_loop().time()


async def run_noop(io: StageIO, attrs: Attrs) -> None:
    while (chunk := await io.recv()) is not None:
        await io.send(chunk)
    await io.send_eof()


async def _latency(io: StageIO, attrs: Attrs) -> None:
    latency, jitter = attrs["latency"], attrs["jitter"]
    while (chunk := await io.recv()) is not None:
        delay = latency
        if jitter > 0:
            offset = io.rng.randrange(2 * jitter) - jitter
            io.log("jitter", offset)
            delay += offset
        sleep = delay / 1000 - (_now() - chunk.ts)
        if sleep > 0:
            await asyncio.sleep(sleep)
            chunk.ts += sleep
        await io.send(chunk)
    await io.send_eof()


async def _bandwidth(io: StageIO, attrs: Attrs) -> None:
    rate = attrs["rate"]
    piece = rate * 100
    debt = 0.0
    while (chunk := await io.recv()) is not None:
        debt += len(chunk.data) / (rate * 1000)
        while len(chunk.data) > piece:
            await asyncio.sleep(0.1)
            rest = Chunk(chunk.data[piece:], chunk.ts)
            await io.send(Chunk(chunk.data[:piece], chunk.ts), rest)
            chunk = rest
            debt -= 0.1
        start = _now()
        if debt > 0:
            await asyncio.sleep(debt)
        debt -= _now() - start
        await io.send(chunk)
    await io.send_eof()


async def _slow_close(io: StageIO, attrs: Attrs) -> None:
    while (chunk := await io.recv()) is not None:
        await io.send(chunk)
    await asyncio.sleep(attrs["delay"] / 1000)
    await io.send_eof()


async def _swallow(io: StageIO, until: float | None) -> bool:
    """Drop data until EOF (returns True) or until loop time ``until`` (returns False)."""
    while True:
        remaining = None if until is None else until - _now()
        if remaining is not None and remaining <= 0:
            return False
        try:
            chunk = await asyncio.wait_for(io.recv(), remaining)
        except TimeoutError:
            return False
        if chunk is None:
            return True
        io.drop()


async def _timeout(io: StageIO, attrs: Attrs) -> None:
    timeout = attrs["timeout"]
    await _swallow(io, _now() + timeout / 1000 if timeout > 0 else None)
    await io.send_eof()


async def _blackhole(io: StageIO, attrs: Attrs) -> None:
    await _swallow(io, None)
    await io.send_eof()


async def _reset_peer(io: StageIO, attrs: Attrs) -> None:
    if await io.recv() is not None:
        io.drop()
    await asyncio.sleep(attrs["timeout"] / 1000)
    io.reset()


def _slice(io: StageIO, start: int, end: int, average: int, variation: int) -> list[int]:
    """Bisect ``[start, end)`` as the real slicer does; returns cut points."""
    if (end - start) - average <= variation:
        return [end]
    mid = start + (end - start) // 2
    if variation > 0:
        offset = io.rng.randrange(2 * variation) - variation
        io.log("slice", offset)
        mid += offset
    return _slice(io, start, mid, average, variation) + _slice(io, mid, end, average, variation)


async def _slicer(io: StageIO, attrs: Attrs) -> None:
    average, variation = attrs["average_size"], attrs["size_variation"]
    while (chunk := await io.recv()) is not None:
        start = 0
        for end in _slice(io, 0, len(chunk.data), average, variation):
            rest = Chunk(chunk.data[end:], chunk.ts) if end < len(chunk.data) else None
            await io.send(Chunk(chunk.data[start:end], chunk.ts), rest)
            start = end
            if rest is not None and attrs["delay"] > 0:
                await asyncio.sleep(attrs["delay"] / 1_000_000)
    await io.send_eof()


async def _limit_data(io: StageIO, attrs: Attrs) -> None:
    limit = attrs["bytes"]
    while (chunk := await io.recv()) is not None:
        sent = int(io.state.get("bytes_transmitted", 0))
        data = chunk.data[: max(limit - sent, 0)]
        if data:
            await io.send(Chunk(data, chunk.ts))
            io.state["bytes_transmitted"] = sent + len(data)
        else:
            io.drop()
        if limit - io.state.get("bytes_transmitted", 0) <= 0:
            break
    await io.send_eof()


def _kind(name: str, struct: str, fields: dict[str, GoType], run: RunFn, **kw: Any) -> ToxicKind:
    return ToxicKind(name, struct, fields, run, kw.pop("validate", _none), **kw)


KINDS: dict[str, ToxicKind] = {
    kind.name: kind
    for kind in (
        _kind("noop", "NoopToxic", {}, run_noop),
        _kind(
            "latency",
            "LatencyToxic",
            {"latency": "int64", "jitter": "int64"},
            _latency,
            validate=_validate_latency,
            buffer=1024,
        ),
        _kind(
            "bandwidth",
            "BandwidthToxic",
            {"rate": "int64"},
            _bandwidth,
            validate=_validate_bandwidth,
        ),
        _kind(
            "slow_close",
            "SlowCloseToxic",
            {"delay": "int64"},
            _slow_close,
            validate=_non_negative("delay"),
        ),
        _kind(
            "timeout",
            "TimeoutToxic",
            {"timeout": "int64"},
            _timeout,
            validate=_non_negative("timeout"),
            closes_on_remove=True,
        ),
        _kind(
            "reset_peer",
            "ResetToxic",
            {"timeout": "int64"},
            _reset_peer,
            validate=_non_negative("timeout"),
        ),
        _kind(
            "slicer",
            "SlicerToxic",
            {"average_size": "int", "size_variation": "int", "delay": "int"},
            _slicer,
            validate=_validate_slicer,
        ),
        _kind(
            "limit_data",
            "LimitDataToxic",
            {"bytes": "int64"},
            _limit_data,
            validate=_non_negative("bytes"),
        ),
        _kind("blackhole", "BlackholeToxic", {}, _blackhole),
    )
}
