"""What the simulator raises.

::

    SimulationError (DcoreError)
    ├── ReplayDivergence (AssertionError)   the run no longer matches a recorded trace
    └── Deadlock (AssertionError)           tasks wait for something that never comes
    WorkerCrash (BaseException)             a simulated process death inside a task

``WorkerCrash`` is a ``BaseException`` on purpose: the job lifecycle records only
``Exception`` as a failure, so a crashed job stays RUNNING, exactly as it does when a
real worker process dies, and comes back by redelivery.
"""

from __future__ import annotations

from typing import Any

from dcore.errors import DcoreError

__all__ = ["Deadlock", "ReplayDivergence", "SimulationError", "WorkerCrash"]


class SimulationError(DcoreError):
    """The simulator was used in a way it cannot honour."""


class ReplayDivergence(SimulationError, AssertionError):
    """The run differs from the recorded trace; names the first event that differs."""

    def __init__(self, index: int, expected: Any, actual: Any, *, hint: str = "") -> None:
        self.index = index
        self.expected = expected
        self.actual = actual
        message = (
            f"replay diverged at event {index}:\n  recorded: {_show(expected)}\n"
            f"  this run: {_show(actual)}"
        )
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class Deadlock(SimulationError, AssertionError):
    """Nothing can run and no timer is pending, yet tasks are still waiting."""


class WorkerCrash(BaseException):
    """Raised inside a simulated task to kill its worker mid-job."""

    def __init__(self, where: str) -> None:
        super().__init__(f"simulated worker crash at {where}")
        self.where = where


def _show(event: Any) -> str:
    if event is None:
        return "(nothing: the trace ends here)"
    import json

    return json.dumps(event, sort_keys=False, default=repr)
