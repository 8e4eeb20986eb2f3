"""``dcore explore MODULE:SCENARIO --seeds N``: run a simulator scenario over many seeds.

A scenario is a function taking a ``SimEnvironment`` (named ``pkg.mod:fn`` or
``path/to/file.py:fn``); its ``sim_options`` (workers, faults, settings) configure each
run. A progress bar goes to stderr, each failing seed's trace to ``--trace-dir``, and
the exit code is 1 when any seed failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dcore.cli import call_signature_error, fail, load_object, positive_int

__all__ = ["register", "run", "scenario_problem"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("explore", help="run a simulator scenario over many seeds")
    parser.add_argument(
        "target",
        metavar="MODULE:SCENARIO",
        help="a scenario function: pkg.module:name or path/to/file.py:name",
    )
    parser.add_argument(
        "--seeds", type=positive_int, default=100, help="how many seeds (default 100)"
    )
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--workers", type=positive_int, default=None, help="override worker count")
    parser.add_argument(
        "--trace-dir", default="dcore-traces", help="where failing traces go (default dcore-traces)"
    )
    parser.add_argument(
        "--max-failures", type=positive_int, default=None, help="stop after this many failing seeds"
    )
    parser.set_defaults(handler=run)


def scenario_problem(target: str, scenario: Any) -> str | None:
    """Why ``scenario`` cannot be run as ``scenario(sim)``, or None."""
    if not callable(scenario):
        return f"{target} is a {type(scenario).__name__}, not a scenario function"
    why = call_signature_error(scenario, None)
    if why is not None:
        return (
            f"{target} cannot be called with the simulation ({why}); a scenario is a "
            "function taking one argument, the SimEnvironment"
        )
    return None


def _bar(done: int, total: int, failures: int) -> str:
    # no rate: inside the runs wall time is virtual (freezegun), so it would lie
    width = 30
    filled = width * done // max(total, 1)
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} seeds  {failures} failing"


def run(args: argparse.Namespace) -> int:
    from dcore_testing.cli.replay import testing_missing

    missing = testing_missing()
    if missing:
        return fail(missing)
    from dcore_testing.sim.explore import explore

    scenario = load_object(args.target)
    why = scenario_problem(args.target, scenario)
    if why is not None:
        return fail(why)
    # the trace names the scenario as it was given, so `dcore replay --check` finds it
    overrides: dict[str, Any] = {"name": args.target}
    if args.workers is not None:
        overrides["workers"] = args.workers
    total = args.seeds
    tty = sys.stderr.isatty()

    def progress(done: int, failures: int) -> None:
        if tty or done == total or done % max(total // 20, 1) == 0:
            sys.stderr.write(_bar(done, total, failures) + ("" if tty else "\n"))
            sys.stderr.flush()

    seeds = range(args.start, args.start + total)
    failures = explore(
        scenario,
        seeds,
        trace_dir=args.trace_dir,
        progress=progress,
        max_failures=args.max_failures,
        **overrides,
    )
    if tty:
        sys.stderr.write("\n")
    if not failures:
        print(f"{args.target}: {total} seeds, no failure")
        return 0
    print(f"{args.target}: {len(failures)} failing seed(s)")
    for outcome in failures:
        print(
            f"  seed {outcome.seed}: {type(outcome.error).__name__}: "
            f"{str(outcome.error).splitlines()[0] if outcome.error else ''}"
        )
        if outcome.path is not None:
            print(f"    trace: {outcome.path}   (dcore replay {outcome.path})")
    return 1
