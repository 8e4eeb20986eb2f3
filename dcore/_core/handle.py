"""What a built-in dispatcher returns: a Pydantic model FastAPI can return as it is."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["JobHandle"]


class JobHandle(BaseModel):
    """``status`` is ``scheduled`` when the work was handed off; look the job up by id in
    the job store for its progress."""

    job_id: str
    status: str = "scheduled"
