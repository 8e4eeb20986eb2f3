"""Cutting streams into parts and sending a bounded number at once (``_s3_parts``)."""

from __future__ import annotations

import hashlib
import io
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcore.backends._s3_parts import read_exactly, read_parts, scan_parts, send_parts, split_parts

#: a deadline for waits that succeed at once when the code is right
DEADLINE = 10.0

chunk_lists = st.lists(st.binary(max_size=40), max_size=30)


@given(chunks=chunk_lists, size=st.integers(1, 50))
def test_split_parts_regroups_the_bytes_into_full_parts_and_a_shorter_last(
    chunks: list[bytes], size: int
) -> None:
    parts = list(split_parts(chunks, size))
    assert b"".join(parts) == b"".join(chunks)
    assert all(len(part) == size for part in parts[:-1])
    assert all(0 < len(part) <= size for part in parts)
    assert all(type(part) is bytes for part in parts)


def test_a_chunk_that_is_exactly_one_part_is_not_copied() -> None:
    whole = bytes(range(10))
    first, second = list(split_parts([whole, b"xy"], 10))
    assert first is whole
    assert second == b"xy"


class ShortReads(io.RawIOBase):
    """A binary file whose ``read`` returns at most ``step`` bytes, like a pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class ReadOnly:
    """A file-like object with ``read`` only (no ``readinto``), returning short reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self._source = ShortReads(data, step)

    def read(self, size: int) -> bytes:
        return self._source.read(size) or b""


@given(data=st.binary(max_size=300), size=st.integers(1, 64), step=st.integers(1, 70))
def test_read_parts_reads_whole_parts_through_short_reads(
    data: bytes, size: int, step: int
) -> None:
    parts = list(read_parts(ShortReads(data, step), size))
    assert b"".join(parts) == data
    assert all(len(part) == size for part in parts[:-1])
    assert all(0 < len(part) <= size for part in parts)


def test_read_exactly_stops_short_only_at_the_end() -> None:
    source = ReadOnly(b"abcdefgh", step=3)
    assert read_exactly(source, 5) == b"abcde"
    assert read_exactly(source, 5) == b"fgh"
    assert read_exactly(source, 5) == b""


def test_read_exactly_refuses_text() -> None:
    with pytest.raises(TypeError, match="must be bytes, got str"):
        read_exactly(io.StringIO("text"), 4)


@given(
    data=st.binary(max_size=3000),
    part=st.integers(1, 700),
    step=st.integers(1, 900),
    has_readinto=st.booleans(),
    offset=st.integers(0, 20),
)
def test_scan_parts_gives_the_sha256_size_and_crc32_of_each_part_from_the_position(
    data: bytes, part: int, step: int, has_readinto: bool, offset: int
) -> None:
    source: Any = ShortReads(data, step) if has_readinto else ReadOnly(data, step)
    skipped = read_exactly(source, offset)
    rest = data[len(skipped) :]
    sha, size, checks = scan_parts(source, part)
    assert sha == hashlib.sha256(rest).hexdigest()
    assert size == len(rest)
    assert checks == [zlib.crc32(rest[i : i + part]) for i in range(0, len(rest), part)]


def test_scan_parts_reads_parts_larger_than_its_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    import dcore.backends._s3_parts as parts_module

    monkeypatch.setattr(parts_module, "SCAN_BLOCK", 4)
    data = bytes(range(23))
    assert scan_parts(io.BytesIO(data), 10) == (
        hashlib.sha256(data).hexdigest(),
        23,
        [zlib.crc32(data[:10]), zlib.crc32(data[10:20]), zlib.crc32(data[20:])],
    )


# -- send_parts -----------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_send_parts_sends_each_part_once_and_returns_results_in_part_order(
    concurrency: int,
) -> None:
    seen: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def send(number: int, body: bytes) -> str:
        with lock:
            seen.append((number, body))
        return f"etag-{number}"

    parts = [bytes([n]) * 3 for n in range(1, 9)]
    assert send_parts(parts, send, concurrency) == [f"etag-{n}" for n in range(1, 9)]
    assert sorted(seen) == [(n, bytes([n]) * 3) for n in range(1, 9)]


def test_with_one_sender_every_send_runs_in_the_calling_thread() -> None:
    threads: set[int] = set()

    def send(number: int, body: bytes) -> None:
        threads.add(threading.get_ident())

    send_parts([b"a", b"b", b"c"], send, 1)
    assert threads == {threading.get_ident()}


class Senders:
    """Sends that block until released, counting what runs and what the source gave."""

    def __init__(self, parts: int) -> None:
        self.changed = threading.Condition()
        self.release = threading.Event()
        self.running = 0
        self.most_running = 0
        self.taken = 0
        self.parts = parts

    def source(self) -> Iterator[bytes]:
        for number in range(1, self.parts + 1):
            with self.changed:
                self.taken += 1
                self.changed.notify_all()
            yield bytes([number])

    def send(self, number: int, body: bytes) -> int:
        with self.changed:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.changed.notify_all()
        assert self.release.wait(DEADLINE)
        with self.changed:
            self.running -= 1
        return number

    def wait_until(self, predicate: Any) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout=DEADLINE)


def test_no_more_than_concurrency_parts_are_sent_and_one_more_read() -> None:
    """Bounded memory: while every sender is busy, the caller holds one part and does
    not read the next."""
    senders = Senders(parts=10)
    results: list[int] = []
    caller = threading.Thread(
        target=lambda: results.extend(send_parts(senders.source(), senders.send, 3))
    )
    caller.start()
    try:
        senders.wait_until(lambda: senders.running == 3 and senders.taken >= 4)
        assert (senders.running, senders.taken) == (3, 4)
    finally:
        senders.release.set()
        caller.join(DEADLINE)
    assert results == list(range(1, 11))
    assert senders.most_running == 3


def test_a_failing_send_is_raised_after_every_running_send_has_ended() -> None:
    """The caller aborts the upload when this raises, so no part may still be arriving."""
    lock = threading.Lock()
    running: set[int] = set()
    part_two_failing = threading.Event()

    def send(number: int, body: bytes) -> int:
        with lock:
            running.add(number)
        try:
            if number == 2:
                part_two_failing.set()
                raise OSError("part 2 failed")
            if number == 1:  # still running when part 2 fails
                assert part_two_failing.wait(DEADLINE)
            return number
        finally:
            with lock:
                running.discard(number)

    with pytest.raises(OSError, match="part 2 failed"):
        send_parts([b"1", b"2", b"3", b"4"], send, 2)
    assert running == set()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_failing_source_stops_the_sends_and_is_raised(concurrency: int) -> None:
    sent: list[int] = []

    def source() -> Iterator[bytes]:
        yield b"1"
        yield b"2"
        raise RuntimeError("source broke")

    def send(number: int, body: bytes) -> None:
        sent.append(number)

    with pytest.raises(RuntimeError, match="source broke"):
        send_parts(source(), send, concurrency)
    assert sorted(sent) == [1, 2]
