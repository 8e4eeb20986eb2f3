"""Fenced writes: a storage write that carries the writer's lock fence and is refused
when a newer fence has already written the key.

A TTL lock alone cannot stop a holder that was paused or partitioned past its TTL from
writing after someone else took the lock: it does not know it lost it. The lock's
``fence`` (a number that grows with every acquisition) fixes that if the *storage side*
checks it: each write records its fence, and a write with an older fence than the one
recorded is rejected.

The check and the write must be one atomic step where writes are applied. Here that is
a process-local lock around "read the recorded fence, write, record the fence", which
is exact for the writers of one process (the chaos scenario runs both workers' writes
through one :class:`FencedStorage`, standing for the storage service). Across processes
it needs the storage's own conditional write (S3 ``If-Match`` on the fence object's
ETag, a SQL ``UPDATE ... WHERE fence <= ?``); that is a proposal for dcore, not done here.
"""

from __future__ import annotations

import threading

from dcore.errors import ObjectNotFoundError
from dcore.services.storage import ObjectInfo, StorageInterface

__all__ = ["FencedStorage", "StaleFenceError"]

FENCE_SUFFIX = ".fence"


class StaleFenceError(Exception):
    """A write whose fence is older than the one that last wrote the key."""

    def __init__(self, key: str, fence: int, latest: int) -> None:
        super().__init__(
            f"write to {key!r} with fence {fence} rejected: fence {latest} already wrote it "
            "(the writer's lock expired and was taken by another holder)"
        )
        self.key = key
        self.fence = fence
        self.latest = latest


class FencedStorage:
    """Writes to ``storage`` that only land when their fence is the newest seen for the
    key; the fence is kept beside the object, under ``<key>.fence``."""

    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage
        self._lock = threading.Lock()

    def latest_fence(self, key: str) -> int | None:
        try:
            return int(self.storage.get(key + FENCE_SUFFIX))
        except ObjectNotFoundError:
            return None

    def put(self, key: str, data: bytes, fence: int | None) -> ObjectInfo:
        """Store ``data`` under ``key`` as the holder of ``fence``; StaleFenceError if a
        newer fence wrote it already (equal fences: the same holder writing again)."""
        if fence is None:
            raise TypeError(f"a fenced write to {key!r} needs the lock's fence; got None")
        with self._lock:
            latest = self.latest_fence(key)
            if latest is not None and fence < latest:
                raise StaleFenceError(key, fence, latest)
            info = self.storage.put(key, data)
            self.storage.put(key + FENCE_SUFFIX, str(fence).encode())
            return info
