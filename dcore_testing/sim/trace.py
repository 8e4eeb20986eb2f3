"""The trace: every choice and event of a run, as JSON lines with virtual timestamps.

The first line is a header (seed, workers, fault plan, chooser); each further line is
one event ``{"t": <virtual seconds>, "ev": <kind>, "lane": <worker or task>, ...}``; the
last line is the end line ``{"dcore_trace_end": <number of events>}``, so a file cut
short (a full disk, a killed writer, a partial copy) is reported instead of replayed as
if it were the whole run. Job ids appear as stable aliases (``j1``, ``j2`` in order of
first sight), so the same seed gives a byte-identical file even though contexts draw
random ids.

Format versions: 2 has the end line; 1 (older files) has none and still loads, but a
version-1 file cut at a line boundary cannot be told from a complete one. A parse error
names the file and the line (``run.jsonl:5: ...``).

A trace opened for replay holds the recorded events; each new event is compared with
the recorded one at the same position, and the first difference raises
:class:`~dcore_testing.sim.errors.ReplayDivergence` naming both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcore_testing.sim.errors import ReplayDivergence

__all__ = ["END_KEY", "READABLE_VERSIONS", "TRACE_VERSION", "Trace", "first_difference"]

TRACE_VERSION = 2
#: format versions :meth:`Trace.parse` reads (1: written before the end line existed)
READABLE_VERSIONS = (1, 2)
#: the key of the end line, ``{"dcore_trace_end": <number of events>}``
END_KEY = "dcore_trace_end"
Event = dict[str, Any]


def _line(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False, default=str)


class Trace:
    """Events of one run (and, when replaying, the events it must reproduce)."""

    def __init__(
        self, header: dict[str, Any] | None = None, expected: list[Event] | None = None
    ) -> None:
        self.header: dict[str, Any] = {"dcore_trace": TRACE_VERSION, **(header or {})}
        self.events: list[Event] = []
        #: recorded events this run must reproduce (replay), else None
        self.expected = expected
        #: the first divergence from ``expected``; raised again on every later record, so
        #: code that catches it (a job lifecycle recording a failure) cannot bury it
        self.diverged: ReplayDivergence | None = None

    # -- recording --------------------------------------------------------------------
    def record(self, event: Event) -> None:
        expected = self.expected
        if expected is not None:
            if self.diverged is not None:
                raise self.diverged
            i = len(self.events)
            want = expected[i] if i < len(expected) else None
            if want != event:
                self.diverged = ReplayDivergence(i, want, event)
                raise self.diverged
        self.events.append(event)

    def peek_expected(self) -> Event | None:
        """The recorded event the next ``record`` must match (replay only)."""
        if self.expected is None:
            return None
        i = len(self.events)
        return self.expected[i] if i < len(self.expected) else None

    def finish(self) -> None:
        """In replay, fail if the run diverged or stopped before reproducing every
        recorded event."""
        if self.diverged is not None:
            raise self.diverged
        if self.expected is not None and len(self.events) < len(self.expected):
            i = len(self.events)
            raise ReplayDivergence(
                i, self.expected[i], None, hint="the run ended before the recorded trace did"
            )

    # -- reading ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def of(self, *kinds: str) -> list[Event]:
        """Events whose ``ev`` is one of ``kinds``."""
        wanted = set(kinds)
        return [e for e in self.events if e["ev"] in wanted]

    def for_job(self, job: str) -> list[Event]:
        return [e for e in self.events if e.get("job") == job]

    @property
    def jobs(self) -> list[str]:
        """Job aliases in order of dispatch."""
        return [e["job"] for e in self.events if e["ev"] == "dispatch"]

    @property
    def choices(self) -> list[Event]:
        return [e for e in self.events if e["ev"] == "choice"]

    @property
    def preemptions(self) -> int:
        """Scheduling choices that switched away from the task that yielded."""
        return sum(
            1 for e in self.events if e["ev"] == "choice" and e["what"] == "run" and e["pick"] != 0
        )

    # -- files ------------------------------------------------------------------------
    def to_jsonl(self) -> str:
        """The file text: header (always the current format version), events, end line."""
        header = {**self.header, "dcore_trace": TRACE_VERSION}
        lines = [
            _line(header),
            *(_line(e) for e in self.events),
            _line({END_KEY: len(self.events)}),
        ]
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_jsonl(), encoding="utf-8")
        return target

    @classmethod
    def parse(cls, text: str, *, source: str = "trace") -> Trace:
        """A trace from its file text; ValueError ``source:line: what is wrong`` for a
        line that is not JSON, not an event or cut off, and for a truncated trace."""
        header, events = _parse(text, source)
        trace = cls(header)
        trace.events = events
        return trace

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"no trace file at {str(p)!r}") from None
        except IsADirectoryError:
            raise ValueError(f"{p} is a directory, not a trace file") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ValueError(
                f"{p}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; a trace is "
                "UTF-8 JSON lines (is this a binary file?)"
            ) from None
        return cls.parse(text, source=str(p))

    def __repr__(self) -> str:
        return f"Trace({len(self.events)} events, seed={self.header.get('seed')!r})"


def _parse(text: str, source: str) -> tuple[dict[str, Any], list[Event]]:
    lines = text.split("\n")
    cut = not text.endswith("\n")  # the writer ends every line, the last one too
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            if cut and number == len(lines):
                raise ValueError(
                    f"{source}:{number}: the trace is cut off in the middle of "
                    "this line: the file is truncated"
                ) from None
            raise ValueError(
                f"{source}:{number}: not JSON ({exc.msg} at column "
                f"{exc.colno}); a trace is one JSON object per line"
            ) from None
    if not rows:
        raise ValueError(f"{source} is empty; a trace starts with a header line")
    number, header = rows[0]
    version = header.get("dcore_trace") if isinstance(header, dict) else None
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        if isinstance(version, int) and not isinstance(version, bool) and version > TRACE_VERSION:
            raise ValueError(
                f"{source}:{number}: trace format {version} is newer than this "
                f"dcore reads ({', '.join(map(str, READABLE_VERSIONS))}); "
                "upgrade distributed-core"
            )
        raise ValueError(
            f"{source}:{number}: does not start with a dcore trace header "
            f'({{"dcore_trace": {TRACE_VERSION}, ...}}); got {lines[number - 1][:80]!r}'
        )
    body = rows[1:]
    end = body.pop() if body and _is_end(body[-1][1]) else None
    events = [_event(n, row, source) for n, row in body]
    if end is not None:
        count = end[1][END_KEY]
        if count != len(events):
            raise ValueError(
                f"{source}:{end[0]}: the end line says {count} events but "
                f"{len(events)} come before it: the trace lost events"
            )
    elif version >= 2:
        last = body[-1][0] if body else number
        raise ValueError(
            f"{source}: the trace is truncated: it stops after line {last} "
            f"({len(events)} events) without its end line "
            f'{{"{END_KEY}": <events>}}'
        )
    return header, events


def _is_end(row: Any) -> bool:
    return isinstance(row, dict) and END_KEY in row


def _event(number: int, row: Any, source: str) -> Event:
    if _is_end(row):
        raise ValueError(f"{source}:{number}: an end line ({END_KEY}) before the last line")
    if not isinstance(row, dict) or not isinstance(row.get("ev"), str):
        raise ValueError(
            f'{source}:{number}: an event is a JSON object with an "ev" '
            f'string (and "t", "lane"), got {json.dumps(row)[:80]}'
        )
    t = row.get("t", 0.0)
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise ValueError(f'{source}:{number}: "t" must be a number of virtual seconds, got {t!r}')
    if not isinstance(row.get("lane", ""), str):
        raise ValueError(f'{source}:{number}: "lane" must be a string, got {row["lane"]!r}')
    return row


def first_difference(a: Trace, b: Trace) -> int | None:
    """Index of the first event that differs between two traces, or None."""
    for i, (x, y) in enumerate(zip(a.events, b.events, strict=False)):
        if x != y:
            return i
    if len(a.events) != len(b.events):
        return min(len(a.events), len(b.events))
    return None
