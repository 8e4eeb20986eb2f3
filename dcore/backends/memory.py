"""In-process backends: event bus, job store and locks that need no server.

They are the embedded default and the reference the Redis backends are tested against
(one contract suite runs over both), so they copy Redis's observable semantics. All
timestamps, TTLs and idle times come from the injected ``clock``, so a virtual clock
drives them. Each lives in its own module; this one gathers them.
"""

from dcore.backends.memory_events import MemoryEventBus
from dcore.backends.memory_jobs import MemoryJobStore
from dcore.backends.memory_locks import MemoryLock, MemoryLocks

__all__ = ["MemoryEventBus", "MemoryJobStore", "MemoryLock", "MemoryLocks"]
