"""Service backends: in-memory ones that need no server, and Redis/S3 for production.

Each is registered under a name for its interface (``DCORE_STORAGE=s3``); build one
yourself to pass it to :class:`~dcore.Environment`. Importing this package imports no
backend: each class is loaded on first use, so the Redis and S3 client libraries are
needed only by the backends that use them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcore.backends.local import LocalFileStorage
    from dcore.backends.memory_events import MemoryEventBus
    from dcore.backends.memory_jobs import MemoryJobStore
    from dcore.backends.memory_locks import MemoryLocks
    from dcore.backends.memory_storage import MemoryStorage
    from dcore.backends.redis_events import RedisEventBus
    from dcore.backends.redis_jobs import RedisJobStore
    from dcore.backends.redis_locks import RedisLocks
    from dcore.backends.s3 import S3Storage

_WHERE = {
    "LocalFileStorage": "local",
    "MemoryEventBus": "memory_events",
    "MemoryJobStore": "memory_jobs",
    "MemoryLocks": "memory_locks",
    "MemoryStorage": "memory_storage",
    "RedisEventBus": "redis_events",
    "RedisJobStore": "redis_jobs",
    "RedisLocks": "redis_locks",
    "S3Storage": "s3",
}

__all__ = [
    "LocalFileStorage",
    "MemoryEventBus",
    "MemoryJobStore",
    "MemoryLocks",
    "MemoryStorage",
    "RedisEventBus",
    "RedisJobStore",
    "RedisLocks",
    "S3Storage",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dcore.backends' has no attribute {name!r}")
    return getattr(import_module(f"dcore.backends.{_WHERE[name]}"), name)
