"""Cutting a stream into multipart parts, and sending a bounded number of them at a time.

S3 throughput comes from several parts on the wire at once; memory stays bounded because
the source is read only when a sender is free. With ``concurrency`` senders, at most
``concurrency`` parts are being sent while one more is being assembled, whatever the
size of the object.

The first error, from the source or from any send, is raised only after every send
already started has ended, so the caller can abort the multipart upload knowing that no
part of it is still arriving at the server.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from dcore.backends._keys import as_bytes

__all__ = ["read_exactly", "read_parts", "scan_parts", "send_parts", "split_parts"]

#: The scan reads through one buffer this size, small enough to stay in cache for both hashes.
SCAN_BLOCK = 1024 * 1024

T = TypeVar("T")


def split_parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` regrouped into parts of exactly ``size`` bytes; only the last may be
    shorter, and none is empty. A chunk that is exactly one part passes through uncopied;
    any other part costs one copy (a join of slices)."""
    pending: list[memoryview] = []
    held = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while held + len(view) >= size:
            take = size - held
            pending.append(view[:take])
            view = view[take:]
            yield _joined(pending)
            pending = []
            held = 0
        if view:
            pending.append(view)
            held += len(view)
        del chunk, view  # hold no sent part while the next chunk is read
    if pending:
        yield _joined(pending)


def read_parts(source: Any, size: int) -> Iterator[bytes]:
    """A binary file object as blocks of exactly ``size`` bytes (the last may be shorter),
    each read straight into its own ``bytes``, so it is sent without another copy."""
    while True:
        block = read_exactly(source, size)
        if not block:
            return
        yield block
        del block  # not held while the next one is read


def _joined(views: list[memoryview]) -> bytes:
    if len(views) == 1:
        whole = views[0].obj
        if isinstance(whole, bytes) and len(whole) == len(views[0]):
            return whole
    return b"".join(views)


def read_exactly(source: Any, size: int) -> bytes:
    """Up to ``size`` bytes from a binary file object: fewer only at the end of the file.
    ``read`` may return short (raw files, pipes), so this reads until it has them all."""
    first = as_bytes(source.read(size) or b"")
    if len(first) == size or not first:
        return first
    buffer = io.BytesIO()
    buffer.write(first)
    while buffer.tell() < size:
        more = as_bytes(source.read(size - buffer.tell()) or b"")
        if not more:
            break
        buffer.write(more)
    return buffer.getvalue()


def scan_parts(source: Any, part_size: int) -> tuple[str, int, list[int]]:
    """sha256 and size of a binary file object from where it stands to its end, and the
    CRC32 of each ``part_size`` part, read through one reused buffer."""
    digest = hashlib.sha256()
    checks: list[int] = []
    buffer = memoryview(bytearray(min(SCAN_BLOCK, part_size)))
    size = crc = in_part = 0
    while True:
        want = min(len(buffer), part_size - in_part)
        got = _read_into(source, buffer[:want])
        if got:
            data = buffer[:got]
            digest.update(data)
            crc = zlib.crc32(data, crc)
            size += got
            in_part += got
        if in_part and (in_part == part_size or got < want):
            checks.append(crc)
            crc = in_part = 0
        if got < want:
            return digest.hexdigest(), size, checks


def _read_into(source: Any, view: memoryview) -> int:
    """Fill ``view`` from ``source`` (``readinto`` if it has one); short only at the end."""
    readinto = getattr(source, "readinto", None)
    got = 0
    while got < len(view):
        if callable(readinto):
            count = readinto(view[got:]) or 0
        else:
            data = as_bytes(source.read(len(view) - got) or b"")
            count = len(data)
            view[got : got + count] = data
        if not count:
            break
        got += count
    return got


def send_parts(
    parts: Iterable[bytes], send: Callable[[int, bytes], T], concurrency: int
) -> list[T]:
    """``send(number, body)`` for every part, numbered from 1, with at most
    ``concurrency`` calls running at once; their results in part order. The next part is
    taken from ``parts`` only when a sender is free. With ``concurrency`` 1 every send
    runs in the calling thread, one after the other."""
    results: dict[int, T] = {}
    if concurrency == 1:
        for number, body in enumerate(parts, 1):
            results[number] = send(number, body)
            del body  # not held while the next part is read
        return list(results.values())
    with ThreadPoolExecutor(concurrency, thread_name_prefix="dcore-s3-part") as pool:
        running: set[Future[tuple[int, T]]] = set()
        # Leaving the with-block waits for every running send, also on an error.
        for number, body in enumerate(parts, 1):
            running = _collect(running, results, block=len(running) >= concurrency)
            running.add(pool.submit(_numbered, send, number, body))
            del body  # the sender holds the only reference while the next part is read
        while running:
            running = _collect(running, results, block=True)
    return [results[number] for number in sorted(results)]


def _numbered(send: Callable[[int, bytes], T], number: int, body: bytes) -> tuple[int, T]:
    return number, send(number, body)


def _collect(
    running: set[Future[tuple[int, T]]], results: dict[int, T], *, block: bool
) -> set[Future[tuple[int, T]]]:
    """Record the sends that have ended (raising the first failure); when ``block``, wait
    until at least one has."""
    done, still_running = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
    for future in done:
        number, result = future.result()
        results[number] = result
    return still_running
