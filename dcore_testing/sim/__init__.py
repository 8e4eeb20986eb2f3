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
from dcore_testing.sim.environment import (
    Request,
    ServiceFactory,
    SimEnvironment,
    effect,
    memory_backends,
)
from dcore_testing.sim.errors import Deadlock, ReplayDivergence, SimulationError, WorkerCrash
from dcore_testing.sim.explore import Outcome, explore, replay, run_scenario, scenario
from dcore_testing.sim.faults import (
    Crash,
    Delay,
    Drop,
    Duplicate,
    FaultPlan,
    Partition,
    Scope,
    ServiceError,
    Skew,
    WebCrash,
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
    "Outcome",
    "Partition",
    "RandomChooser",
    "ReplayChooser",
    "ReplayDivergence",
    "Request",
    "ScheduleChooser",
    "Scheduler",
    "Scope",
    "ServiceError",
    "ServiceFactory",
    "SimEnvironment",
    "SimulationError",
    "Skew",
    "Task",
    "Trace",
    "VirtualClock",
    "WebCrash",
    "WorkerCrash",
    "effect",
    "explore",
    "first_difference",
    "memory_backends",
    "replay",
    "run_scenario",
    "scenario",
    "virtual_time_session",
]
