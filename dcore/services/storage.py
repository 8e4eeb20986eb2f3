"""Object storage: bytes under string keys, with streaming for large objects, and fenced
writes that refuse a lock holder whose lock was taken over (see :meth:`put_fenced`)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import BinaryIO, ClassVar

from pydantic import BaseModel

from dcore._plugins.registry import define_interface
from dcore.services.base import ServiceInterface
from dcore.services.fencing import Fence

__all__ = ["ObjectInfo", "StorageInterface"]


class ObjectInfo(BaseModel):
    """What a backend knows about a stored object. ``sha256`` is hex, when known."""

    key: str
    size: int
    sha256: str | None = None


@define_interface
class StorageInterface(ServiceInterface):
    """Keys are ``/``-separated relative paths (``uploads/a.txt``). A key that is empty,
    absolute, or contains NUL or other control characters, backslashes, ``..``, ``.`` or
    empty segments, or is over 1024 bytes (a segment over 255) raises ``InvalidKeyError``
    before any I/O. A missing key raises ``ObjectNotFoundError``."""

    service_name: ClassVar[str] = "storage"

    @abstractmethod
    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` atomically (readers see old or new, never part)."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed. Deleting a missing key is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def info(self, key: str) -> ObjectInfo:
        """Size and sha256 of one object; ``ObjectNotFoundError`` if it is missing."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order (all pages)."""

    @abstractmethod
    def put_stream(self, key: str, chunks: Iterable[bytes] | BinaryIO) -> ObjectInfo:
        """Store a stream without holding it in memory; atomic like :meth:`put`."""

    @abstractmethod
    def get_stream(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Read an object in chunks of at most ``chunk_size`` bytes."""

    def put_fenced(self, key: str, data: bytes, fence: Fence | None) -> ObjectInfo:
        """Store ``data`` under ``key`` as the holder of ``fence`` (a lock's name and
        number: :func:`dcore.current_fence` after a ``lock`` stage, or ``Fence.of(lock)``);
        atomic like :meth:`put`. ``None`` (no lock held) is a TypeError naming the fix,
        never an unfenced write, so ``put_fenced(key, data, current_fence())`` is safe.

        Refused with ``StaleFenceError``, writing nothing, when a newer fence of the same
        lock has written the key (or when the key was fenced under another lock, whose
        numbers cannot be compared). An equal fence is the same holder writing again and
        is allowed. The guarantee, across processes on the backends that say so: fenced
        writes land in fence order, so a write that starts after a newer fence's write
        returned is refused, and one in flight while a newer fence writes either lands
        before it or is refused.

        The key's fence is recorded beside it and outlives the object: :meth:`put` (an
        unfenced write, not checked) and :meth:`delete` leave it, so a late holder cannot
        recreate a key the newer holder deleted. A backend without fenced writes raises
        NotImplementedError."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement fenced writes (put_fenced); use the "
            "memory, local or s3/minio storage, or implement put_fenced and fence_of"
        )

    def fence_of(self, key: str) -> Fence | None:
        """The newest fence recorded for ``key`` by :meth:`put_fenced`; None if no fenced
        write ever reached it. A recorded fence may be newer than the object when its
        writer stopped between recording it and writing (the object is then older)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement fenced writes (fence_of); use the "
            "memory, local or s3/minio storage, or implement put_fenced and fence_of"
        )
