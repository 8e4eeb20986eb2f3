"""In-memory object storage: the fake for unit tests and the simulator.

It passes the same contract suite as the local and S3 backends (same key rules, same
errors, key-ordered listing), so a test that passes here means the same against S3.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dcore._plugins.registry import default_registry, register_plugin
from dcore.backends._fences import must_record
from dcore.backends._keys import as_bytes, iter_source, validate_key, validate_prefix
from dcore.errors import ObjectNotFoundError
from dcore.services.fencing import Fence, check_fence
from dcore.services.storage import ObjectInfo, StorageInterface

__all__ = ["MemoryStorage"]


@register_plugin("memory", registry=default_registry())
class MemoryStorage(StorageInterface):
    """Objects in a dict behind a lock; every operation is atomic, a fenced write too
    (its check, its fence record and its object in one step), within the process."""

    process_local = True

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._fences: dict[str, Fence] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> ObjectInfo:
        key = validate_key(key)
        blob = as_bytes(data, "put() data")
        digest = hashlib.sha256(blob).hexdigest()
        with self._lock:
            self._objects[key] = (blob, digest)
        return ObjectInfo(key=key, size=len(blob), sha256=digest)

    def put_fenced(self, key: str, data: bytes, fence: Fence | None) -> ObjectInfo:
        key = validate_key(key)
        fence = check_fence(fence, f"put_fenced({key!r})")
        blob = as_bytes(data, "put_fenced() data")
        digest = hashlib.sha256(blob).hexdigest()
        with self._lock:
            if must_record(key, fence, self._fences.get(key)):
                self._fences[key] = fence
            self._objects[key] = (blob, digest)
        return ObjectInfo(key=key, size=len(blob), sha256=digest)

    def fence_of(self, key: str) -> Fence | None:
        key = validate_key(key)
        with self._lock:
            return self._fences.get(key)

    def put_stream(self, key: str, chunks: Iterable[bytes] | BinaryIO) -> ObjectInfo:
        key = validate_key(key)
        # Consumed fully before storing: a failing stream leaves the old value in place.
        return self.put(key, b"".join(iter_source(chunks, 1024 * 1024)))

    def get(self, key: str) -> bytes:
        return self._entry(validate_key(key))[0]

    def get_stream(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        blob = self._entry(validate_key(key))[0]  # eager: a missing key raises here
        return (blob[i : i + chunk_size] for i in range(0, len(blob), chunk_size))

    def info(self, key: str) -> ObjectInfo:
        """Size and checksum of one object (not in the interface yet; every backend has it)."""
        key = validate_key(key)
        blob, digest = self._entry(key)
        return ObjectInfo(key=key, size=len(blob), sha256=digest)

    def delete(self, key: str) -> bool:
        key = validate_key(key)
        with self._lock:
            return self._objects.pop(key, None) is not None

    def exists(self, key: str) -> bool:
        key = validate_key(key)
        with self._lock:
            return key in self._objects

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = validate_prefix(prefix)
        with self._lock:  # a snapshot, so callers may delete while iterating
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        return (ObjectInfo(key=k, size=len(blob), sha256=d) for k, (blob, d) in items)

    def _entry(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFoundError(f"no object under key {key!r} in memory storage")
        return entry

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self._objects)} objects)"
