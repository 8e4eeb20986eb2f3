"""A hash that is the same in every process and on every machine.

Python's ``hash()`` of a str is salted per process (PYTHONHASHSEED), so a shard chosen
with it in the web process differs from the one a worker computes. Shards, queues and
partitions use :func:`stable_hash` instead.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["stable_hash"]


def _canonical_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"b:" + value
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8")
    if isinstance(value, bool) or value is None:
        return b"j:" + json.dumps(value).encode()
    if isinstance(value, int):
        return b"i:" + str(value).encode()
    try:
        return b"j:" + json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    except TypeError:
        raise TypeError(
            f"stable_hash() takes str, bytes, int or JSON-like values, not "
            f"{type(value).__name__}; hash a field of it instead"
        ) from None


def stable_hash(value: Any) -> int:
    """A non-negative 64-bit hash of ``value`` (str, bytes, int or JSON-like)."""
    digest = hashlib.blake2b(_canonical_bytes(value), digest_size=8).digest()
    return int.from_bytes(digest, "big")
