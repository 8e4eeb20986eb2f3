"""The ``dcore`` command: ``graph``, ``dlq``, ``jobs``, ``doctor``, and the commands other
packages plug in (``dcore_testing`` adds ``replay`` and ``explore``).

Each subcommand lives in its own module exposing ``register(subparsers)``; a module
whose optional dependencies are missing simply does not appear. Another package adds a
command with an entry point in the ``dcore.commands`` group naming such a module; it
can use :func:`fail`, :func:`load_object`, :func:`call_signature_error` and
:func:`positive_int` from here, so its errors read like the built-in commands'.

Exit codes: 0 done, 1 the command failed (a message on stderr says why), 2 usage
error: a bad argument, or no command at all (bare ``dcore`` and ``dcore dlq`` print the
help of what is missing on stderr, like any other usage error), 130 interrupted.

A failure is one ``dcore: ...`` line, never a traceback (``--traceback`` shows one for an
error the command did not expect). A reader that stops early (``dcore dlq show ID |
head``) ends the command quietly with exit 1, as the Python docs recommend for SIGPIPE.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import io
import os
import sys
from collections.abc import Sequence

from dcore import __version__
from dcore.cli.common import (
    call_signature_error,
    describe_failure,
    fail,
    load_object,
    positive_int,
    print_help,
)

__all__ = [
    "COMMANDS_GROUP",
    "build_parser",
    "call_signature_error",
    "fail",
    "load_object",
    "main",
    "positive_int",
]

SUBCOMMAND_MODULES = [
    "dcore.cli.graph",
    "dcore.cli.dlq",
    "dcore.cli.jobs",
    "dcore.cli.doctor",
]
#: the entry-point group through which other packages add subcommands
COMMANDS_GROUP = "dcore.commands"


def command_modules() -> list[str]:
    """The built-in subcommand modules, then those other packages plug in."""
    plugged = sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)
    return [*SUBCOMMAND_MODULES, *(ep.value for ep in plugged)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcore",
        description="distributed-core tools",
        epilog="`dcore COMMAND --help` describes a command.",
    )
    parser.add_argument("--version", action="version", version=f"dcore {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the Python traceback of an unexpected error"
    )
    parser.set_defaults(handler=print_help(parser))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            gone = (
                isinstance(exc, ModuleNotFoundError)
                and exc.name is not None
                and (name == exc.name or name.startswith(f"{exc.name}."))
            )
            if gone:  # the module itself is not installed (a stale entry point)
                continue
            if name in SUBCOMMAND_MODULES:
                raise
            # another package's command must not take the built-in ones down with it
            print(
                f"dcore: warning: the command module {name} ({COMMANDS_GROUP} entry "
                f"point) failed to load and is left out: {describe_failure(exc)}",
                file=sys.stderr,
            )
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 command failed, 2 usage error)."""
    try:
        try:
            code = _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe fails here, inside the try, not at exit
    except BrokenPipeError:
        _stdout_to_devnull()
        return 1
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:
        if args.traceback:
            raise
        return fail(describe_failure(exc))
    return code


def _stdout_to_devnull() -> None:
    """Python flushes stdout again at exit: point it at devnull so that flush does not
    fail a second time with "Exception ignored ... BrokenPipeError"."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
