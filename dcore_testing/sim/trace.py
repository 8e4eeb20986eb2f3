"""The trace: every choice and event of a run, as JSON lines with virtual timestamps.

The first line is a header (seed, workers, fault plan, chooser); each further line is
one event ``{"t": <virtual seconds>, "ev": <kind>, "lane": <worker or task>, ...}``.
Job ids appear as stable aliases (``j1``, ``j2`` in order of first sight), so the same
seed gives a byte-identical file even though contexts draw random ids.

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

__all__ = ["TRACE_VERSION", "Trace", "first_difference"]

TRACE_VERSION = 1
Event = dict[str, Any]


def _line(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False, default=str)


class Trace:
    """Events of one run (and, when replaying, the events it must reproduce)."""

    def __init__(self, header: dict[str, Any] | None = None,
                 expected: list[Event] | None = None) -> None:
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
            raise ReplayDivergence(i, self.expected[i], None,
                                   hint="the run ended before the recorded trace did")

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
        return sum(1 for e in self.events
                   if e["ev"] == "choice" and e["what"] == "run" and e["pick"] != 0)

    # -- files ------------------------------------------------------------------------
    def to_jsonl(self) -> str:
        lines = [_line(self.header), *(_line(e) for e in self.events)]
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_jsonl(), encoding="utf-8")
        return target

    @classmethod
    def parse(cls, text: str, *, source: str = "trace") -> Trace:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"{source} is empty; a trace starts with a header line")
        try:
            rows = [json.loads(ln) for ln in lines]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not JSON lines: line {exc.lineno}: {exc.msg}") from None
        header = rows[0]
        if not isinstance(header, dict) or header.get("dcore_trace") != TRACE_VERSION:
            raise ValueError(
                f"{source} does not start with a dcore trace header "
                f"({{\"dcore_trace\": {TRACE_VERSION}, ...}}); got {lines[0][:80]!r}"
            )
        trace = cls(header)
        trace.events = rows[1:]
        return trace

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"no trace file at {str(p)!r}") from None
        return cls.parse(text, source=str(p))

    def __repr__(self) -> str:
        return f"Trace({len(self.events)} events, seed={self.header.get('seed')!r})"


def first_difference(a: Trace, b: Trace) -> int | None:
    """Index of the first event that differs between two traces, or None."""
    for i, (x, y) in enumerate(zip(a.events, b.events, strict=False)):
        if x != y:
            return i
    if len(a.events) != len(b.events):
        return min(len(a.events), len(b.events))
    return None
