"""The deterministic simulator: a whole distributed run in one thread, from a seed.

See :class:`SimEnvironment`. Everything a run decides goes through a :class:`Chooser`,
everything it does goes into a :class:`Trace`; a trace replays exactly.
"""

from dcore_testing.sim.chooser import (
    Chooser,
    HypothesisChooser,
    RandomChooser,
    ReplayChooser,
    ScheduleChooser,
)
from dcore_testing.sim.clock import VirtualClock
from dcore_testing.sim.environment import SimEnvironment, effect
from dcore_testing.sim.errors import Deadlock, ReplayDivergence, SimulationError, WorkerCrash
from dcore_testing.sim.faults import (
    Crash,
    Delay,
    Drop,
    Duplicate,
    FaultPlan,
    ServiceError,
    Skew,
)
from dcore_testing.sim.scheduler import Scheduler, Task
from dcore_testing.sim.timepatch import virtual_time_session
from dcore_testing.sim.trace import Trace, first_difference

__all__ = [
    "Chooser",
    "Crash",
    "Deadlock",
    "Delay",
    "Drop",
    "Duplicate",
    "FaultPlan",
    "HypothesisChooser",
    "RandomChooser",
    "ReplayChooser",
    "ReplayDivergence",
    "ScheduleChooser",
    "Scheduler",
    "ServiceError",
    "SimEnvironment",
    "SimulationError",
    "Skew",
    "Task",
    "Trace",
    "VirtualClock",
    "WorkerCrash",
    "effect",
    "first_difference",
    "virtual_time_session",
]
