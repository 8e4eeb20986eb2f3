"""``lock``: run the rest of the pipeline while holding a distributed lock.

The lock name comes from a template over the context's fields, e.g.
``Execute("lock", key="file:{file_path}", ttl=60, timeout=5)``: two jobs on the same file
never run the rest of the pipeline at the same time, on any worker (with
``DCORE_LOCKS=redis``). The lock is released even when the rest fails.

- Not acquired within ``timeout`` seconds (or at once, with ``blocking=False``):
  ``LockNotAcquired`` naming the key — a ``TimeoutError``, so a job policy can retry it.
- The stages after it read the lock's fencing token with ``dcore.current_fence()`` (a
  ``Fence(lock, number)``; see :mod:`dcore.services.fencing`) and pass it to
  ``storage.put_fenced``, which refuses the write if the lock was taken over meanwhile
  (``storage_write`` does so with ``fenced=True``). The fence is visible only while this
  stage runs the rest of this delivery; nested lock stages stack.
- The TTL ran out before the release (the work took longer than ``ttl``; another holder
  may have run concurrently): ``LockLostError`` is raised after a successful run, so
  the job is not silently counted as exclusive. If the run itself failed, its own error
  is raised with the lost lock added as a note.
"""

from __future__ import annotations

import logging
import string
from typing import Any

from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import LockLostError, LockNotAcquired, PluginOptionsError
from dcore.services.fencing import Fence, holding_fence
from dcore.services.locks import LockInterface

__all__ = ["LockStage"]

_log = logging.getLogger("dcore.lock")


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PluginOptionsError(f"lock: key template {template!r} is malformed: {exc}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            # no positional fields, and no attribute or index access: a template comes in
            # the job message, and '{field.__class__...}' would walk the worker's objects
            raise PluginOptionsError(
                f"lock: key template {template!r} must name context fields, like "
                "'file:{file_path}', not positional '{}' or '{0}', attributes, indexes or formats"
            )
        names.append(name)
    return names


@register_plugin("lock", registry=default_registry())
class LockStage(Execute[Any]):
    shareable = True  # holds its options and the lock service; each run takes its own lock

    def __init__(
        self,
        locks: LockInterface,
        key: str,
        ttl: float | None = 60.0,
        timeout: float | None = 10.0,
        blocking: bool = True,
    ) -> None:
        if not key.strip():
            raise PluginOptionsError(
                "lock: key must be a non-empty template, e.g. 'file:{file_path}'"
            )
        if ttl is not None and ttl <= 0:
            raise PluginOptionsError(f"lock: ttl must be > 0 seconds or None, got {ttl!r}")
        if timeout is not None and timeout < 0:
            raise PluginOptionsError(f"lock: timeout must be >= 0 seconds or None, got {timeout!r}")
        self.locks = locks
        self.key = key
        self.fields = _template_fields(key)
        self.ttl = ttl
        self.timeout = timeout
        self.blocking = blocking

    def name_for(self, context: Any) -> str:
        """The lock name for ``context`` (the template filled from its fields)."""
        known = type(context).model_fields
        values = {}
        for name in self.fields:
            if name not in known:
                raise PluginOptionsError(
                    f"lock: key template {self.key!r} names {name!r}, which "
                    f"{type(context).__name__} does not have; fields: {', '.join(known)}"
                )
            values[name] = getattr(context, name)
        return self.key.format_map(values)

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        name = self.name_for(context)
        lock = self.locks.lock(name, ttl=self.ttl)
        if not lock.acquire(blocking=self.blocking, timeout=self.timeout):
            wait = f"within {self.timeout}s" if self.blocking else "without waiting"
            raise LockNotAcquired(
                f"lock: could not acquire {name!r} {wait} for job {context.job_id}: "
                "another holder has it (raise the stage's timeout, or retry the job)"
            )
        try:
            if lock.fence is None:  # a lock backend that issues no fences
                result = next_fn(context)
            else:
                with holding_fence(Fence(name, lock.fence)):
                    result = next_fn(context)
        except BaseException as exc:
            try:
                lock.release()
            except LockLostError as lost:
                _log.warning("job %s: %s", context.job_id, lost)
                exc.add_note(f"and the lock {name!r} was lost before release: {lost}")
            except Exception as release_error:  # the run's own error is the one that counts
                _log.warning("job %s: releasing %r failed: %s", context.job_id, name, release_error)
                exc.add_note(f"and releasing the lock {name!r} failed: {release_error!r}")
            raise
        try:
            lock.release()
        except LockLostError as lost:  # surfaced: the run was not exclusive throughout
            raise LockLostError(
                f"lock: {name!r} (ttl {self.ttl}s) expired while job {context.job_id} held "
                f"it; another holder may have run concurrently. Raise the stage's ttl. "
                f"({lost})"
            ) from lost
        return result
