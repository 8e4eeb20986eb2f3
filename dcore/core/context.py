"""Contexts: ``PipelineContext`` and context versioning.

A documented alias of ``dcore._core.context``, kept for the first release's import
paths. ``from dcore import ...`` is the shorter way to the same objects.
"""

from dcore._core.context import (
    SHARD_COUNT,
    ErrorRecord,
    PipelineContext,
    Runtime,
    context_type,
    context_type_name,
    migration,
    registered_context_types,
)

__all__ = [
    "SHARD_COUNT",
    "ErrorRecord",
    "PipelineContext",
    "Runtime",
    "context_type",
    "context_type_name",
    "migration",
    "registered_context_types",
]
