"""Registers the built-in plugins in the default registry, then entry-point plugins.

Imported once by ``dcore/__init__``. Only modules whose imports are always available
are listed; backends needing optional packages import them lazily inside.
"""

from __future__ import annotations

import importlib

from dcore._plugins.registry import default_registry

BUILTIN_MODULES = [
    "dcore.dispatchers.inline",
    "dcore.dispatchers.thread",
    "dcore.dispatchers.fastapi",
    "dcore.dispatchers.schedule_job",
    "dcore.dispatchers.celery",
    "dcore.stages.storage_write",
    "dcore.stages.logging",
    "dcore.stages.lock",
    "dcore.stages.retry",
    "dcore.stages.error_handler",
    "dcore.stages.dead_letter",
    "dcore.stages.tracing",
    "dcore.backends.local",
    "dcore.backends.memory_storage",
    "dcore.backends.s3",
    "dcore.backends.memory_events",
    "dcore.backends.memory_jobs",
    "dcore.backends.memory_locks",
    "dcore.backends.redis_events",
    "dcore.backends.redis_jobs",
    "dcore.backends.redis_locks",
]


def load() -> None:
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
    default_registry().load_entry_points()
