"""The base class of ``PipelineContext``, in a module of its own.

A context creates pipelines, so the context module imports the pipeline module; the
pipeline checks what it runs over against this base without importing it back.
"""

from pydantic import BaseModel

__all__ = ["ContextBase"]


class ContextBase(BaseModel):
    """What a pipeline runs over; ``PipelineContext`` is its one subclass."""
