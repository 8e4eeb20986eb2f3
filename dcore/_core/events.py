"""Names of the state events every job goes through, published on the event bus."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = [
    "ERRORS_TOPIC",
    "JOB_COMPENSATED",
    "JOB_COMPENSATING",
    "JOB_DEAD",
    "JOB_RETRYING",
    "JOB_SCHEDULED",
    "JOB_STARTED",
    "JOB_SUCCEEDED",
    "STAGE_COMPENSATED",
    "STAGE_FAILED",
    "emit",
]

JOB_SCHEDULED = "job.scheduled"
JOB_STARTED = "job.started"
JOB_SUCCEEDED = "job.succeeded"
JOB_RETRYING = "job.retrying"
JOB_DEAD = "job.dead"
JOB_COMPENSATING = "job.compensating"
JOB_COMPENSATED = "job.compensated"
STAGE_FAILED = "stage.failed"
STAGE_COMPENSATED = "stage.compensated"
ERRORS_TOPIC = "errors"

_log = logging.getLogger("dcore.events")


def emit(env: Environment, topic: str, **payload: Any) -> None:
    """Publish a state event. A bus that is down must not fail the job it describes."""
    try:
        env.events.publish(topic, payload)
    except Exception:
        _log.warning("could not publish %s for %s", topic, payload.get("job_id"), exc_info=True)
