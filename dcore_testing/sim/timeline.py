"""A trace as a readable timeline: one column (lane) per worker or task, the step and
the virtual time on the left, faults marked. Used by ``dcore replay`` and the HTML view.

The step is the event's index in the trace (the ``N`` of "replay diverged at event N"):
in a race every row may sit at t=0.000, and the step still says what came first.

Markers are drawn from :data:`GLYPHS` only: characters of WGL4 (ASCII, Latin-1, a few
arrows, punctuation and box-drawing lines) that DejaVu, Liberation, Noto and Arial all
have, so a stock terminal or headless browser never shows an empty box.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from dcore_testing.sim.trace import Trace

__all__ = ["GLYPHS", "Row", "describe_event", "lanes", "render_text", "rows", "severity", "summary"]

#: every non-ASCII character the timeline itself writes (all in WGL4)
GLYPHS = frozenset("←→«»…‼†√♦│─┼")

Event = dict[str, Any]


def _job(e: Event) -> str:
    return f" {e['job']}" if e.get("job") else ""


def describe_event(e: Event) -> str | None:
    """A short text for one event, or None for events a timeline leaves out."""
    ev = e["ev"]
    j = _job(e)
    if ev == "choice":
        if e.get("what") == "run":
            return None if e.get("pick") == 0 else f"» preempted to run{j}"
        return f"? {e['what']} → {e['pick']}"
    if ev == "spawn":
        return None
    if ev == "dispatch":
        how = "remote" if e.get("remote") else "in-process"
        return f"dispatch{j} ({how}, {e.get('delivery')})"
    if ev == "deliver":
        return f"deliver{j} attempt {e['attempt']} ({e['cause']})"
    if ev == "stage.enter":
        return f"→ {e['stage']}{j}"
    if ev == "stage.exit":
        err = e.get("error")
        return f"← {e['stage']}{j}" + (f" !{err}" if err else "")
    if ev == "call":
        key = e.get("key")
        return f"{e['op']}({key})" if key is not None else str(e["op"])
    if ev == "fault":
        details = {k: v for k, v in e.items() if k not in ("t", "ev", "lane", "job", "fault")}
        text = " ".join(f"{k}={v}" for k, v in details.items())
        return f"‼ FAULT {e['fault']}{j}" + (f" {text}" if text else "")
    if ev == "crash":
        return f"‼ CRASH{j} worker died ({e['where']})"
    if ev == "redeliver":
        return f"« redeliver{j} in {e['after']}s"
    if ev == "retry":
        return f"« retry{j} attempt {e['attempt']} in {e['delay']:g}s"
    if ev == "failed":
        final = " (final)" if e.get("dead") or e.get("final") else ""  # "final": older traces
        return f"! failed{j}: {e.get('error')}{final}"
    if ev == "lost":
        return f"‼ LOST{j}: {e.get('reason')}"
    if ev == "dlq":
        return f"† dead letter{j}"
    if ev == "ack":
        return f"√ ack{j}"
    if ev == "skip":
        why = e.get("reason") or f"already {e.get('state')}"  # "state": older traces
        return f"skip{j} ({why})"
    if ev in ("defer", "requeue"):
        return f"« {ev}{j} attempt {e['attempt']} in {e['delay']:g}s"
    if ev == "dead":
        return f"† dead{j}: {e.get('reason')}"
    if ev == "effect":
        data = {k: v for k, v in e.items() if k not in ("t", "ev", "lane", "job", "name")}
        return f"♦ {e['name']}{j} {json.dumps(data)}" if data else f"♦ {e['name']}{j}"
    if ev.startswith("lock."):
        extra = f" fence={e['fence']}" if e.get("fence") is not None else ""
        return f"lock {ev[5:]} {e.get('name')}{extra}"
    if ev.startswith("job.") or ev == "stage.failed":
        attempt = f" #{e['attempt']}" if "attempt" in e else ""
        return f"{ev}{j}{attempt}"
    if ev == "sleep":
        return f"sleep {e.get('seconds')}s"
    return f"{ev}{j}"


def severity(e: Event) -> str:
    """A class for colouring: fault, retry, dead, effect, stage, lock, call, info."""
    ev = e["ev"]
    if ev in ("fault", "crash", "lost") or (ev == "stage.exit" and e.get("error")):
        return "fault"
    if ev in ("retry", "redeliver", "failed", "job.retrying"):
        return "retry"
    if ev in ("dlq", "job.dead"):
        return "dead"
    if ev == "effect":
        return "effect"
    if ev.startswith("stage."):
        return "stage"
    if ev.startswith("lock."):
        return "lock"
    if ev == "call":
        return "call"
    return "info"


def lanes(trace: Trace) -> list[str]:
    """Lanes in order: main first, then workers (w1, w2 …), then other tasks."""
    seen: dict[str, None] = {}
    for e in trace.events:
        seen.setdefault(e.get("lane", "main"), None)

    def order(name: str) -> tuple[int, int, str]:
        if name == "main":
            return (0, 0, name)
        if name[:1] == "w" and name[1:].isdigit():
            return (1, int(name[1:]), name)
        return (2, 0, name)

    return sorted(seen, key=order)


class Row(NamedTuple):
    """One line of the timeline."""

    step: int  # the event's index in the trace
    t: float
    lane: str
    text: str
    event: Event


def rows(trace: Trace, *, calls: bool = True) -> list[Row]:
    """A :class:`Row` for every event the timeline shows, in trace order."""
    out = []
    for step, e in enumerate(trace.events):
        if not calls and e["ev"] == "call":
            continue
        text = describe_event(e)
        if text is not None:
            out.append(Row(step, float(e.get("t", 0.0)), e.get("lane", "main"), text, e))
    return out


def summary(trace: Trace) -> list[str]:
    h = trace.header
    lines = [
        f"trace: seed={h.get('seed')} workers={h.get('workers')} "
        f"chooser={h.get('chooser')} events={len(trace)}"
    ]
    if h.get("name"):
        lines.append(f"scenario: {h['name']}")
    faults = h.get("faults") or {}
    if faults.get("faults") or len(faults) > 1:
        lines.append(f"faults: {json.dumps(faults)}")
    if h.get("error"):
        lines.append(f"error: {str(h['error']).splitlines()[0]}")
    return lines


def render_text(trace: Trace, *, width: int = 34, calls: bool = True) -> str:
    """The timeline as fixed-width text columns: step, time, one column per lane."""
    names = lanes(trace)
    col = {name: i for i, name in enumerate(names)}
    shown = rows(trace, calls=calls)
    digits = max(len(str(shown[-1].step)) if shown else 1, 4)

    def cell(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    out = summary(trace)
    out.append("")
    out.append(
        (
            f"{'step':>{digits}} │ {'time (s)':>10} │ " + " │ ".join(n.ljust(width) for n in names)
        ).rstrip()
    )
    out.append(
        "─" * (digits + 1) + "┼" + "─" * 12 + "┼" + "┼".join("─" * (width + 2) for _ in names)
    )
    for row in shown:
        cells = [" " * width] * len(names)
        cells[col[row.lane]] = cell(row.text).ljust(width)
        out.append(f"{row.step:>{digits}} │ {row.t:>10.3f} │ " + " │ ".join(cells).rstrip())
    return "\n".join(out) + "\n"
