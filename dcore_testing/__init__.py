"""dcore_testing: the simulator, a manual clock, strategies, invariants, golden messages,
fixtures and chaos tools.

Names are loaded on first use (PEP 562), so ``import dcore_testing`` — which pytest does
for the plugin at start-up — imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcore_testing.clock import ManualClock
    from dcore_testing.golden import GoldenMessageError, GoldenMessages
    from dcore_testing.invariants import InvariantViolation
    from dcore_testing.sim import (
        Chooser,
        Crash,
        Deadlock,
        Delay,
        Drop,
        Duplicate,
        FaultPlan,
        HypothesisChooser,
        RandomChooser,
        ReplayChooser,
        ReplayDivergence,
        ServiceError,
        SimEnvironment,
        SimulationError,
        Skew,
        Trace,
        VirtualClock,
        WorkerCrash,
        effect,
        virtual_time_session,
    )

__all__ = [
    "Chooser",
    "Crash",
    "Deadlock",
    "Delay",
    "Drop",
    "Duplicate",
    "FaultPlan",
    "GoldenMessageError",
    "GoldenMessages",
    "HypothesisChooser",
    "InvariantViolation",
    "ManualClock",
    "RandomChooser",
    "ReplayChooser",
    "ReplayDivergence",
    "ServiceError",
    "SimEnvironment",
    "SimulationError",
    "Skew",
    "Trace",
    "VirtualClock",
    "WorkerCrash",
    "effect",
    "virtual_time_session",
]

_HOME = dict.fromkeys(__all__, "dcore_testing.sim")
_HOME["InvariantViolation"] = "dcore_testing.invariants"
_HOME["ManualClock"] = "dcore_testing.clock"
_HOME["GoldenMessages"] = _HOME["GoldenMessageError"] = "dcore_testing.golden"


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'dcore_testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
