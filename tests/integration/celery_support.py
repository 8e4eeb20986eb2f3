"""Helpers shared by the Celery integration tests (not a test module)."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from dcore import Environment, JobState
from dcore.errors import JobNotFoundError
from dcore.services.jobs import TERMINAL, JobRecord

HERE = Path(__file__).parent


def jobs_module() -> ModuleType:
    """``dcore_it_jobs``, imported by that name (as the worker imports it)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module("dcore_it_jobs")


def wait_terminal(env: Environment, job_ids: Iterable[str], timeout: float) -> dict[str, JobRecord]:
    """Poll the job store until every job is SUCCEEDED or DEAD (bounded by ``timeout``);
    returns the records as last seen, finished or not."""
    pending = list(job_ids)
    seen: dict[str, JobRecord] = {}
    deadline = time.monotonic() + timeout
    while pending:
        still = []
        for job_id in pending:
            try:
                record = env.jobs.get(job_id)
            except JobNotFoundError:  # sent straight to the queue: no record until run
                still.append(job_id)
                continue
            seen[job_id] = record
            if record.state not in TERMINAL:
                still.append(job_id)
        pending = still
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling another process's progress: nothing to wait on here
    return seen


def unfinished(records: dict[str, JobRecord]) -> list[str]:
    return [f"{r.job_id}={r.state}" for r in records.values() if r.state not in TERMINAL]


__all__ = ["HERE", "JobState", "jobs_module", "unfinished", "wait_terminal"]
