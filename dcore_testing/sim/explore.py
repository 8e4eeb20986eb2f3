"""Running scenarios: one seed, many seeds, or a saved trace.

A *scenario* is a function taking a :class:`SimEnvironment`: it dispatches work, runs
the simulation and asserts (invariants raise ``AssertionError``). Options for the
simulation (workers, faults, settings) go in a ``sim_options`` dict attribute or the
:func:`scenario` decorator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcore_testing.sim.environment import SimEnvironment
from dcore_testing.sim.errors import ReplayDivergence
from dcore_testing.sim.timepatch import virtual_time_session
from dcore_testing.sim.trace import Trace

__all__ = ["Outcome", "explore", "replay", "run_scenario", "scenario", "scenario_name"]

Scenario = Callable[[SimEnvironment], Any]


@dataclass
class Outcome:
    """One run: its seed, trace and the error it ended with (None: it passed)."""

    seed: int
    trace: Trace
    error: BaseException | None = None
    path: Path | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def scenario(**options: Any) -> Callable[[Scenario], Scenario]:
    """Attach simulation options: ``@scenario(workers=3, faults=FaultPlan(...))``."""

    def mark(fn: Scenario) -> Scenario:
        fn.sim_options = options  # type: ignore[attr-defined]
        return fn

    return mark


def scenario_name(fn: Scenario) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def run_scenario(fn: Scenario, seed: int, **overrides: Any) -> Outcome:
    """Run ``fn`` once under ``SimEnvironment(seed=seed, **options)``."""
    options = {**getattr(fn, "sim_options", {}), **overrides}
    options.setdefault("name", scenario_name(fn))
    sim = SimEnvironment(seed=seed, **options)
    error: BaseException | None = None
    with sim:
        try:
            fn(sim)
        except Exception as exc:
            error = exc
    if error is not None:
        sim.trace.header["error"] = sim.scrub(f"{type(error).__name__}: {error}")[:4000]
    return Outcome(seed, sim.trace, error)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "scenario"


def explore(
    fn: Scenario,
    seeds: Iterable[int],
    *,
    trace_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_failures: int | None = None,
    **overrides: Any,
) -> list[Outcome]:
    """Run ``fn`` for each seed; return the failures, each trace saved in ``trace_dir``.
    ``progress(done, failures)`` is called after every seed; ``max_failures`` stops
    early."""
    failures: list[Outcome] = []
    with virtual_time_session():
        for done, seed in enumerate(seeds, 1):
            outcome = run_scenario(fn, seed, **overrides)
            if outcome.failed:
                if trace_dir is not None:
                    name = _slug(scenario_name(fn).replace(":", "."))
                    outcome.path = outcome.trace.save(Path(trace_dir) / f"{name}-seed{seed}.jsonl")
                failures.append(outcome)
            if progress is not None:
                progress(done, len(failures))
            if max_failures is not None and len(failures) >= max_failures:
                break
    return failures


def replay(fn: Scenario, trace: Trace | str | Path) -> Outcome:
    """Re-run ``fn`` feeding the recorded choices; ReplayDivergence at the first event
    that differs. The outcome carries the error the replayed run ended with, if any."""
    recorded = trace if isinstance(trace, Trace) else Trace.load(trace)
    sim = SimEnvironment.from_trace(recorded)
    error: BaseException | None = None
    with sim:
        try:
            fn(sim)
        except ReplayDivergence:
            raise
        except Exception as exc:
            error = exc
        sim.finish_replay()  # the first divergence, even if the scenario swallowed it
    return Outcome(int(recorded.header.get("seed", 0)), sim.trace, error)
