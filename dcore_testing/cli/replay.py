"""``dcore replay TRACE [--html OUT] [--no-calls] [--check]``: show a simulator trace.

Prints the timeline (one column per worker, virtual time, faults marked); ``--html``
also writes a self-contained HTML page; ``--check`` re-runs what the trace names and
reports whether it still takes the same path: a scenario function (``dcore explore``:
``pkg.mod:fn`` or ``file.py:fn``) is replayed here; a pytest test id (the pytest plugin)
runs under pytest, see :mod:`dcore_testing.cli.pytest_check`. A trace that cannot be read, or was
cut short, fails with ``file:line: ...``. The simulator lives in ``dcore_testing`` and is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dcore.cli import fail

__all__ = ["register", "run", "testing_missing"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replay", help="print a simulator trace as a timeline")
    parser.add_argument("trace", metavar="TRACE", help="a trace file (JSON lines)")
    parser.add_argument("--html", metavar="OUT", help="also write an HTML timeline to OUT")
    parser.add_argument(
        "--no-calls", action="store_true", help="leave service calls out of the text timeline"
    )
    parser.add_argument("--width", type=int, default=34, help="column width (default 34)")
    parser.add_argument(
        "--check", action="store_true", help="re-run the scenario named in the trace and compare"
    )
    parser.set_defaults(handler=run)


def testing_missing() -> str | None:
    """Why dcore_testing cannot run here (a missing test dependency), or None."""
    try:
        import dcore_testing.sim  # noqa: F401
    except ModuleNotFoundError as exc:
        return (
            f"the simulator needs the testing extra ({exc.name} is not installed); "
            "install it with: pip install 'distributed-core[testing]'"
        )
    return None


def run(args: argparse.Namespace) -> int:
    missing = testing_missing()
    if missing:
        return fail(missing)
    from dcore_testing.sim.html import render_html
    from dcore_testing.sim.timeline import render_text
    from dcore_testing.sim.trace import Trace

    try:
        trace = Trace.load(args.trace)
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    print(render_text(trace, width=max(args.width, 12), calls=not args.no_calls), end="")
    if args.html:
        out = Path(args.html)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            render_html(trace, title=f"dcore trace {Path(args.trace).name}"), encoding="utf-8"
        )
        print(f"HTML timeline written to {out}")
    if args.check:
        return _check(trace, args.trace)
    return 0


def _check(trace: Any, path: str) -> int:
    from dcore.cli import load_object
    from dcore_testing.cli.explore import scenario_problem
    from dcore_testing.sim.errors import ReplayDivergence
    from dcore_testing.sim.explore import replay

    name = trace.header.get("name")
    if not isinstance(name, str) or ":" not in name:
        return fail(
            "the trace names no scenario (MODULE:FUNCTION) or test to re-run; only "
            "traces written by `dcore explore` or the pytest plugin can be checked"
        )
    if "::" in name:  # a pytest node id: the test runs under pytest, with its fixtures
        from dcore_testing.cli.pytest_check import check_pytest_trace

        return check_pytest_trace(name, path)
    scenario = load_object(name)
    why = scenario_problem(name, scenario)
    if why is not None:
        return fail(why)
    try:
        outcome = replay(scenario, trace)
    except ReplayDivergence as exc:
        print(f"replay diverged: {exc}")
        return 1
    if outcome.error is not None:
        first = str(outcome.error).splitlines()[0] if str(outcome.error) else ""
        result = f"fails again: {type(outcome.error).__name__}: {first}"
    else:
        result = "passes now"
    print(f"replay matches the trace event for event; the scenario {result}")
    return 0
