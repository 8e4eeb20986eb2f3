"""The trace file: an end line that makes truncation visible, parse errors that name the
file and the line, clear errors for binary files, and old (version 1) traces still
loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcore_testing.sim.explore import run_scenario
from dcore_testing.sim.trace import END_KEY, TRACE_VERSION, Trace
from examples.sim import payments

SAVED = run_scenario(payments.crash_after_charge, seed=3).trace.to_jsonl()


def _write(tmp_path: Path, text: str | bytes, name: str = "run.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _v1(text: str) -> str:
    """The same trace as a version-1 file: old header, no end line."""
    lines = text.splitlines()
    header = json.loads(lines[0])
    header["dcore_trace"] = 1
    return "\n".join([json.dumps(header), *lines[1:-1]]) + "\n"


def test_a_saved_trace_ends_with_its_event_count_and_loads_back(tmp_path: Path) -> None:
    lines = SAVED.splitlines()
    assert json.loads(lines[0])["dcore_trace"] == TRACE_VERSION == 2
    assert json.loads(lines[-1]) == {END_KEY: len(lines) - 2}
    loaded = Trace.load(_write(tmp_path, SAVED))
    assert loaded.to_jsonl() == SAVED
    assert len(loaded) == len(lines) - 2


def test_a_version_1_trace_without_end_line_still_loads(tmp_path: Path) -> None:
    old = Trace.load(_write(tmp_path, _v1(SAVED)))
    assert old.events == Trace.parse(SAVED).events
    assert old.header["dcore_trace"] == 1
    assert old.to_jsonl() == SAVED  # saved again in the current format


def test_a_bad_line_is_reported_with_the_file_and_its_line_number(tmp_path: Path) -> None:
    lines = SAVED.splitlines()
    lines[4] = '{"t": 0.0, "ev": '
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"^\S*run\.jsonl:5: not JSON \(Expecting value at "
        r"column 18\)",
    ):
        Trace.load(path)


def test_blank_lines_count_in_the_line_numbers(tmp_path: Path) -> None:
    lines = SAVED.splitlines()
    text = "\n".join([lines[0], "", "", lines[1], "[1, 2]", *lines[2:]]) + "\n"
    with pytest.raises(
        ValueError,
        match=r"run\.jsonl:5: an event is a JSON object with an "
        r"\"ev\" string .*, got \[1, 2\]",
    ):
        Trace.load(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ('{"t": 0.0}', 'an event is a JSON object with an "ev" string'),
        ('{"ev": 3}', 'an event is a JSON object with an "ev" string'),
        ('{"ev": "x", "t": "soon"}', "\"t\" must be a number of virtual seconds, got 'soon'"),
        ('{"ev": "x", "lane": 1}', '"lane" must be a string, got 1'),
        ('{"dcore_trace_end": 0}', "an end line (dcore_trace_end) before the last line"),
    ],
)
def test_an_event_that_is_not_one_names_its_line(tmp_path: Path, event: str, message: str) -> None:
    lines = SAVED.splitlines()
    lines.insert(2, event)
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: {message}")):
        Trace.load(path)


def test_a_binary_file_is_named_as_not_utf8_text(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00", name="picture.jsonl")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{path}:1: byte 0x89 is not UTF-8 text; a trace is UTF-8 JSON lines (is this a "
            "binary file?)"
        ),
    ):
        Trace.load(path)


def test_a_bad_byte_further_down_names_its_line(tmp_path: Path) -> None:
    lines = SAVED.encode().split(b"\n")
    lines[6] = lines[6][:5] + b"\xff" + lines[6][5:]
    with pytest.raises(ValueError, match=r"run\.jsonl:7: byte 0xff is not UTF-8 text"):
        Trace.load(_write(tmp_path, b"\n".join(lines)))


def test_a_trace_cut_at_a_line_boundary_is_truncated(tmp_path: Path) -> None:
    lines = SAVED.splitlines()
    path = _write(tmp_path, "\n".join(lines[:10]) + "\n")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{path}: the trace is truncated: it stops after line 10 (9 events) without its "
            'end line {"dcore_trace_end": <events>}'
        ),
    ):
        Trace.load(path)


def test_a_trace_cut_mid_line_names_the_line(tmp_path: Path) -> None:
    cut = SAVED[: SAVED.index("\n", 400) - 7]
    line = cut.count("\n") + 1
    with pytest.raises(
        ValueError,
        match=rf"run\.jsonl:{line}: the trace is cut off in the "
        "middle of this line: the file is truncated",
    ):
        Trace.load(_write(tmp_path, cut))
    with pytest.raises(ValueError, match="cut off in the middle"):  # version 1 too
        Trace.parse(_v1(SAVED)[:-7])


def test_an_event_lost_from_the_middle_is_caught_by_the_count(tmp_path: Path) -> None:
    lines = SAVED.splitlines()
    del lines[3]
    with pytest.raises(
        ValueError,
        match=rf"run\.jsonl:{len(lines)}: the end line says "
        rf"{len(lines) - 1} events but {len(lines) - 2} come "
        "before it: the trace lost events",
    ):
        Trace.load(_write(tmp_path, "\n".join(lines) + "\n"))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_prefix_of_a_saved_trace_is_refused(data: st.DataObject) -> None:
    # the one prefix that loads is the whole trace without its final newline
    size = data.draw(st.integers(0, len(SAVED) - 2), label="bytes kept")
    with pytest.raises(ValueError, match=r"truncated|is empty"):
        Trace.parse(SAVED[:size])
    assert Trace.parse(SAVED[:-1]).events == Trace.parse(SAVED).events


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('{"dcore_trace": 3}', "trace format 3 is newer than this dcore reads (1, 2)"),
        ('{"dcore_trace": true}', "does not start with a dcore trace header"),
        ('{"hello": 1}', "does not start with a dcore trace header"),
    ],
)
def test_an_unknown_header_names_the_format(tmp_path: Path, header: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"run\.jsonl:1: {re.escape(message)}"):
        Trace.load(_write(tmp_path, header + '\n{"dcore_trace_end": 0}\n'))


def test_a_directory_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory, not a trace file"):
        Trace.load(tmp_path)
