"""Input checks every storage backend shares, so they all accept and reject the same things.

Keys are checked before any I/O. A key is accepted only in its canonical spelling: a
non-canonical one (``a//b``, ``./a``, ``a/``) is rejected rather than rewritten, because a
silently rewritten key would make ``list()`` return a key nobody ``put()``. The rules are
the intersection of what S3 and a POSIX filesystem can hold, so an object stored in one
backend can be copied to another under the same key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dcore.errors import InvalidKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "RESERVED_PREFIX",
    "as_bytes",
    "iter_source",
    "validate_key",
    "validate_prefix",
]

#: S3's limit on a key's UTF-8 length.
MAX_KEY_BYTES = 1024
#: A filesystem's limit on one path component (NAME_MAX).
MAX_SEGMENT_BYTES = 255
#: Segments starting with this are the backends' own files (the local backend's temporary
#: files, every backend's fence records); no key may use it.
RESERVED_PREFIX = ".dcore-tmp-"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def _reject(key: object, rule: str) -> InvalidKeyError:
    return InvalidKeyError(f"invalid storage key {key!r}: {rule}")


def _check_text(key: object, what: str) -> str:
    """Rules for keys and prefixes alike: no escaping the root, no unrepresentable text."""
    if not isinstance(key, str):
        raise _reject(key, f"a {what} must be a str, got {type(key).__name__}")
    if "\x00" in key:
        raise _reject(key, "contains NUL, which no filesystem can store")
    if _CONTROL.search(key):
        raise _reject(key, "contains a control character (U+0000-U+001F, U+007F)")
    if "\\" in key:
        raise _reject(key, "contains a backslash; use '/' to separate segments")
    if key.startswith("/") or _DRIVE.match(key):
        raise _reject(key, f"is absolute; a {what} is relative to the storage root")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise _reject(key, "is not valid Unicode text (lone surrogate)") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise _reject(key, f"is {len(encoded)} bytes of UTF-8; the limit is {MAX_KEY_BYTES}")
    return key


def validate_key(key: object) -> str:
    """Return ``key`` if it is a canonical relative key, else raise ``InvalidKeyError``.

    Rejected: non-str, empty, absolute (``/x``, ``C:x``), NUL and other control
    characters, backslashes, ``..`` or ``.`` segments anywhere, empty segments (``a//b``,
    a trailing ``/``), segments over 255 bytes, keys over 1024 bytes, and the reserved
    ``.dcore-tmp-`` segment prefix.
    """
    text = _check_text(key, "key")
    if not text:
        raise _reject(key, "is empty")
    for segment in text.split("/"):
        if segment == "..":
            raise _reject(key, "has a '..' segment, which could escape the storage root")
        if segment == ".":
            raise _reject(key, "has a '.' segment; write the key without it")
        if not segment:
            raise _reject(key, "has an empty segment ('//', or a leading or trailing '/')")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise _reject(key, f"has a segment longer than {MAX_SEGMENT_BYTES} bytes")
        if segment.startswith(RESERVED_PREFIX):
            raise _reject(key, f"uses the reserved segment prefix {RESERVED_PREFIX!r}")
    return text


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` for ``list()``: like a key, but may be empty or end with ``/``.

    A prefix is matched as a plain string (``up`` matches ``uploads/a``), so only the
    rules that stop it naming something outside the root apply.
    """
    text = _check_text(prefix, "prefix")
    segments = text.split("/")
    if ".." in segments:
        raise _reject(prefix, "has a '..' segment, which could escape the storage root")
    return text


def iter_source(source: Iterable[bytes] | BinaryIO | bytes, chunk_size: int) -> Iterator[bytes]:
    """The chunks of a ``put_stream`` source: an iterable of bytes-like chunks or a binary
    file object (read ``chunk_size`` at a time). A ``str`` chunk is a ``TypeError``, not
    silently encoded, since its encoding is the caller's to choose."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if callable(read):
        while chunk := read(chunk_size):
            yield as_bytes(chunk)
        return
    for chunk in source:
        yield as_bytes(chunk)


def as_bytes(data: object, what: str = "stream chunks") -> bytes:
    """``data`` as ``bytes``; anything but a bytes-like object is a ``TypeError``."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
