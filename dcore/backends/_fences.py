"""What every backend's fenced write shares: the rule, and where and how a key's fence is
recorded.

The record of key ``k`` is the object ``.dcore-tmp-fences/<sha256 of k>``: under the
reserved prefix, so no user key can collide with it and ``list()`` never shows it; named
by a hash, so every key (up to 1024 bytes, ``a`` beside ``a/b``) has a flat, short name.
Its body is JSON naming the key, the lock and the number, for whoever looks at it.
"""

from __future__ import annotations

import hashlib
import json

from dcore.backends._keys import RESERVED_PREFIX
from dcore.errors import StaleFenceError, StorageError
from dcore.services.fencing import Fence

__all__ = ["RECORD_DIR", "decode_record", "encode_record", "must_record", "record_key"]

RECORD_DIR = RESERVED_PREFIX + "fences"


def record_key(key: str) -> str:
    """Where the fence of ``key`` (a validated key) is recorded."""
    return f"{RECORD_DIR}/{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def encode_record(key: str, fence: Fence) -> bytes:
    return json.dumps({"key": key, "lock": fence.lock, "fence": fence.number}).encode()


def decode_record(key: str, blob: bytes, where: str) -> Fence:
    """The fence in a record's body; a StorageError naming the record if it is damaged."""
    try:
        data = json.loads(blob)
        fence = Fence(data["lock"], data["fence"])
        if not isinstance(fence.lock, str) or type(fence.number) is not int:
            raise TypeError(fence)
    except (ValueError, KeyError, TypeError):
        raise StorageError(
            f"the fence record of key {key!r} ({where}) is damaged: {blob[:80]!r}. Fenced "
            "writes to the key are refused until it is repaired; if nothing holds the "
            "key's lock, delete the record to start its fences afresh"
        ) from None
    return fence


def must_record(key: str, fence: Fence, latest: Fence | None) -> bool:
    """Whether ``fence`` may write ``key`` given the ``latest`` recorded fence: True if it
    is newer (record it first), False if equal (the same holder writing again);
    StaleFenceError if older, or of another lock."""
    if latest is None:
        return True
    if latest.lock != fence.lock or latest.number > fence.number:
        raise StaleFenceError(key, fence, latest)
    return latest.number < fence.number
