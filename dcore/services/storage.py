"""Object storage: bytes under string keys, with streaming for large objects."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import BinaryIO, ClassVar

from pydantic import BaseModel

from dcore.core.plugins import define_interface
from dcore.services.base import ServiceInterface

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
