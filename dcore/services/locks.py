"""Distributed locks with a TTL: a holder that dies cannot block others forever.

A lock whose TTL ran out may be taken by someone else; the late holder's ``release()``
or ``extend()`` then raises ``LockLostError`` (token-checked), and ``fence`` — a number
that grows with every acquisition of the name — lets a storage write reject a late
holder's write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from dcore._plugins.registry import define_interface
from dcore.errors import LockNotAcquired
from dcore.services.base import ServiceInterface

__all__ = ["Lock", "LockInterface"]


class Lock(ABC):
    """One lock name, held by at most one owner at a time."""

    name: str
    #: Grows with every acquisition of this name; set by a successful acquire().
    fence: int | None = None

    @abstractmethod
    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; False when not blocking (or the timeout passed) and it is held.
        Without ``timeout`` the handle's own (from ``lock(timeout=...)``) applies."""

    @abstractmethod
    def release(self) -> None:
        """Give it back; LockLostError if it expired and someone else may hold it."""

    @abstractmethod
    def extend(self, additional: float) -> None:
        """Add ``additional`` seconds to the TTL; LockLostError if no longer owned."""

    @abstractmethod
    def owned(self) -> bool:
        """True while this handle holds the lock (and its TTL has not run out)."""

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(f"could not acquire lock {self.name!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@define_interface
class LockInterface(ServiceInterface):
    service_name: ClassVar[str] = "locks"

    @abstractmethod
    def lock(self, name: str, *, ttl: float | None = 30.0, timeout: float | None = None) -> Lock:
        """A handle for lock ``name`` with a time-to-live in seconds (None: no expiry);
        ``timeout`` bounds how long ``with lock:`` waits before LockNotAcquired."""
