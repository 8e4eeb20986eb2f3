"""The ``dcore`` command: ``graph``, ``dlq``, ``jobs``, ``replay``, ``explore``.

Each subcommand lives in its own module exposing ``register(subparsers)``; a module
whose optional dependencies are missing simply does not appear.

Exit codes: 0 done, 1 the command failed (a message on stderr says why), 2 usage
error: a bad argument, or no command at all (bare ``dcore`` and ``dcore dlq`` print the
help of what is missing on stderr, like any other usage error), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dcore import __version__
from dcore.cli.common import print_help

__all__ = ["main"]

SUBCOMMAND_MODULES = [
    "dcore.cli.graph",
    "dcore.cli.dlq",
    "dcore.cli.jobs",
    "dcore.cli.replay",
    "dcore.cli.explore",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcore", description="distributed-core tools",
        epilog="`dcore COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"dcore {__version__}")
    parser.set_defaults(handler=print_help(parser))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 command failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
