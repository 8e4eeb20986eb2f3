"""The ``dcore`` command: ``graph``, ``dlq``, ``jobs``, ``replay``, ``explore``.

Each subcommand lives in its own module exposing ``register(subparsers)``; a module
whose optional dependencies are missing simply does not appear.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

SUBCOMMAND_MODULES = [
    "dcore.cli.graph",
    "dcore.cli.dlq",
    "dcore.cli.jobs",
    "dcore.cli.replay",
    "dcore.cli.explore",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcore", description="distributed-core tools")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
