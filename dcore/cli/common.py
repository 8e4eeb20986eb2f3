"""Helpers shared by subcommands: loading ``module:object`` and reporting errors."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["fail", "load_object", "print_help"]

Handler = Callable[[argparse.Namespace], int]


def load_object(spec: str) -> Any:
    """Import ``pkg.mod:attr.path`` (the current directory is importable, as with python -m)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"dcore: expected MODULE:OBJECT, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"dcore: cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(f"dcore: {module_name!r} has no attribute {attr!r}") from None
    return target


def fail(message: str) -> int:
    print(f"dcore: {message}", file=sys.stderr)
    return 1


def print_help(parser: argparse.ArgumentParser) -> Handler:
    """The handler of a command given without its subcommand (bare ``dcore``, ``dcore
    dlq``): that command's full help on stderr and exit 2, as for any usage error."""
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2
    return handler
