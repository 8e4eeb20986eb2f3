"""Where new job ids come from: random (uuid4) by default, from an injected source when
one is in use.

A job's id decides its shard (``stable_hash(job_id)``), so its queue. The simulator
injects a source of ids that follows its seed, so a run that routes jobs by shard
repeats exactly; everywhere else ids are random, as ids of jobs in flight must be.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["new_job_id", "use_id_source"]

IdSource = Callable[[], str]
_sources: list[IdSource] = []
_guard = threading.Lock()


def new_job_id() -> str:
    """A fresh job id: 32 hex digits, from the innermost source in use, else random."""
    source = _sources[-1] if _sources else None
    return source() if source is not None else uuid.uuid4().hex


@contextmanager
def use_id_source(source: IdSource) -> Iterator[IdSource]:
    """Make ``source`` give the job ids (for every thread) until the block ends."""
    with _guard:
        _sources.append(source)
    try:
        yield source
    finally:
        with _guard:
            _sources.remove(source)
