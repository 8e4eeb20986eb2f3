"""``dcore doctor [--celery] [--json] [--timeout S]``: check a deployment before it loses jobs.

Runs every check of :mod:`dcore._doctor` against the current ``DCORE_*`` variables (run
it with the workers' environment) and prints one line per finding: its level (``ok``,
``warning``, ``error``), the check, and what it found with the fix. Exit code 1 when any
finding is an error, else 0 (warnings included). ``--json`` prints one JSON object:
``{"findings": [{"check", "level", "message"}, ...], "errors": N, "warnings": N}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dcore.cli.common import finite_float

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check settings and servers for what loses or duplicates jobs"
    )
    parser.add_argument(
        "--celery",
        action="store_true",
        help="run the Celery checks even if DCORE_DISPATCHER is not celery",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="how long each server may take to answer (default 2)",
    )
    parser.set_defaults(handler=run)


def positive_float(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (0 would never wait for a reply)."""
    value = finite_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from dcore._doctor import DEFAULT_TIMEOUT, Level, run_checks

    findings = run_checks(celery=True if args.celery else None,
                          timeout=args.timeout or DEFAULT_TIMEOUT)  # fmt: skip
    errors = sum(f.level is Level.ERROR for f in findings)
    warnings = sum(f.level is Level.WARNING for f in findings)
    if args.json:
        print(json.dumps({"findings": [f.as_dict() for f in findings],
                          "errors": errors, "warnings": warnings}, indent=2))  # fmt: skip
    else:
        width = max(len(f.check) for f in findings)
        for f in findings:
            print(f"{f.level:<7}  {f.check:<{width}}  {f.message}")
        print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
