"""The timeline (text and HTML): a step column that orders rows when virtual time stands
still, and markers drawn only from a safe character set, so a stock headless browser or
terminal shows no empty boxes.

The safe set: printable ASCII, the Latin-1 Supplement (U+00A0-U+00FF), and these WGL4
characters: the arrows U+2190-U+2193, U+2026 (…), U+2020 (†), U+2022 (•), U+203C (‼),
U+221A (√), U+2666 (♦) and the light box-drawing lines U+2500 (─), U+2502 (│), U+253C
(┼). WGL4 is the glyph list DejaVu Sans, Liberation Sans, Noto Sans and Arial all cover;
the lock glyph used before (U+26BF ⚿) is in none of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from dcore_testing.sim import Crash, FaultPlan
from dcore_testing.sim.explore import run_scenario
from dcore_testing.sim.html import render_html
from dcore_testing.sim.timeline import GLYPHS, describe_event, render_text, rows
from dcore_testing.sim.trace import Trace
from examples.sim import payments, race

SAFE = (
    {chr(c) for c in range(0x20, 0x7F)}
    | {"\n", "\t"}
    | {chr(c) for c in range(0xA0, 0x100)}
    | set("←↑→↓…†•‼√♦─│┼")
)

#: one event of every kind the timeline describes (ASCII data: only our markers are tested)
EVERY_KIND = [
    {"t": 0.0, "ev": "choice", "lane": "w1", "what": "run", "pick": 1, "job": "j1"},
    {"t": 0.0, "ev": "choice", "lane": "main", "what": "worker", "pick": 2},
    {
        "t": 0.0,
        "ev": "dispatch",
        "lane": "main",
        "job": "j1",
        "remote": True,
        "delivery": "at_least_once",
    },
    {"t": 0.0, "ev": "deliver", "lane": "w1", "job": "j1", "attempt": 1, "cause": "first"},
    {"t": 0.0, "ev": "stage.enter", "lane": "w1", "job": "j1", "stage": "charge"},
    {
        "t": 0.0,
        "ev": "stage.exit",
        "lane": "w1",
        "job": "j1",
        "stage": "charge",
        "error": "RuntimeError",
    },
    {"t": 0.0, "ev": "call", "lane": "w1", "op": "storage.get", "key": "index.json"},
    {"t": 0.0, "ev": "fault", "lane": "w1", "job": "j1", "fault": "crash", "where": "enter"},
    {"t": 0.0, "ev": "crash", "lane": "w1", "job": "j1", "where": "enter charge"},
    {"t": 0.0, "ev": "redeliver", "lane": "w1", "job": "j1", "after": 5.0},
    {"t": 1.0, "ev": "retry", "lane": "w1", "job": "j1", "attempt": 2, "delay": 1.0},
    {"t": 1.0, "ev": "failed", "lane": "w1", "job": "j1", "error": "boom", "final": True},
    {"t": 1.0, "ev": "lost", "lane": "main", "job": "j2", "reason": "dropped"},
    {"t": 1.0, "ev": "dlq", "lane": "w1", "job": "j1", "error": "boom"},
    {"t": 1.0, "ev": "ack", "lane": "w1", "job": "j1"},
    {"t": 1.0, "ev": "skip", "lane": "w2", "job": "j1", "state": "SUCCEEDED"},
    {"t": 1.0, "ev": "effect", "lane": "w1", "job": "j1", "name": "charge", "order": "o-1"},
    {"t": 1.0, "ev": "lock.acquire", "lane": "w1", "name": "index", "fence": 3},
    {"t": 1.0, "ev": "lock.release", "lane": "w1", "name": "index"},
    {"t": 1.0, "ev": "job.started", "lane": "w1", "job": "j1", "attempt": 1},
    {"t": 1.0, "ev": "sleep", "lane": "w1", "seconds": 2},
    {"t": 1.0, "ev": "something.new", "lane": "w1", "job": "j1"},
]


def _traces() -> list[Trace]:
    every = Trace(
        {
            "seed": 0,
            "workers": 2,
            "name": "every:kind",
            "faults": {"faults": [{"kind": "crash"}]},
            "error": "boom",
        }
    )
    every.events = list(EVERY_KIND)
    crash = run_scenario(
        payments.crash_after_charge, seed=3, faults=FaultPlan(Crash(stage="send_receipt", job=1))
    ).trace
    locked = run_scenario(race.locked_uploads, seed=5).trace
    return [every, crash, locked]


def _unsafe(text: str) -> set[str]:
    return {f"U+{ord(c):04X} {c}" for c in set(text) - SAFE}


def test_the_glyph_set_is_safe() -> None:
    assert GLYPHS <= SAFE
    assert "\u26bf" not in SAFE


@pytest.mark.parametrize("trace", _traces(), ids=["every-kind", "crash", "locked-race"])
def test_html_and_text_use_only_safe_characters(trace: Trace) -> None:
    assert _unsafe(render_html(trace, title="dcore trace run.jsonl")) == set()
    assert _unsafe(render_text(trace)) == set()
    for event in trace.events:
        text = describe_event(event) or ""
        assert {c for c in text if not c.isascii()} <= GLYPHS, text


def test_a_lock_event_reads_as_words() -> None:
    assert describe_event(EVERY_KIND[17]) == "lock acquire index fence=3"
    assert describe_event(EVERY_KIND[18]) == "lock release index"


@pytest.mark.skipif(shutil.which("fc-list") is None, reason="needs fontconfig's fc-list")
def test_dejavu_sans_has_every_glyph() -> None:
    if not subprocess.run(
        ["fc-list", "DejaVu Sans"], capture_output=True, text=True, check=True
    ).stdout.strip():
        pytest.skip("DejaVu Sans is not installed")
    missing = [
        c
        for c in sorted(GLYPHS)
        if not subprocess.run(
            ["fc-list", f"DejaVu Sans:charset={ord(c):x}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    ]
    assert missing == []
    lock = subprocess.run(
        ["fc-list", "DejaVu Sans:charset=26bf"], capture_output=True, text=True, check=True
    ).stdout
    assert lock.strip() == ""  # the old lock glyph: the empty box this replaces


class _Cells(HTMLParser):
    """The text of each table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_a_race_at_one_instant_is_ordered_by_the_step_column() -> None:
    trace = run_scenario(race.unlocked_uploads, seed=2).trace
    assert {e["t"] for e in trace.events} == {0.0}  # time says nothing about order
    shown = rows(trace)
    assert all(trace.events[r.step] is r.event for r in shown)
    assert [r.step for r in shown] == sorted({r.step for r in shown})

    parser = _Cells()
    parser.feed(render_html(trace))
    header, *body = parser.rows
    assert header[:2] == ["step", "time (s)"]
    assert [int(cells[0]) for cells in body] == [r.step for r in shown]
    assert {cells[1] for cells in body} == {"0.000"}

    lines = render_text(trace).splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("step")) + 2
    steps = [
        int(re.match(r"\s*(\d+) │", line).group(1))  # type: ignore[union-attr]
        for line in lines[start:]
    ]
    assert steps == [r.step for r in shown]


def test_the_step_is_the_index_a_divergence_names() -> None:
    trace = run_scenario(race.unlocked_uploads, seed=2).trace
    row = next(
        r
        for r in rows(trace)
        if r.event["ev"] == "stage.enter" and r.event["stage"] == "index_update"
    )
    assert trace.events.index(row.event) == row.step
    assert f'<td class="n">{row.step}</td>' in render_html(trace)
