"""Helpers shared by subcommands: loading ``module:object``, argument types, and turning
failures into one ``dcore: ...`` line instead of a traceback."""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = [
    "call_signature_error",
    "describe_failure",
    "fail",
    "finite_float",
    "load_object",
    "positive_int",
    "print_help",
]

Handler = Callable[[argparse.Namespace], int]


def load_object(spec: str) -> Any:
    """Import ``pkg.mod:attr.path`` (the current directory is importable, as with python -m).

    Every way this can go wrong exits with one line naming ``spec``: the module cannot be
    found, raises while it is imported, or lacks the attribute."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"dcore: expected MODULE:OBJECT, got {spec!r}")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise SystemExit(f"dcore: {module_name!r} in {spec!r} is not a module name; "
                         "expected a dotted name such as 'app.pipelines'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"dcore: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise SystemExit(f"dcore: importing {module_name!r} raised "
                         f"{describe_failure(exc, hint=False)}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(f"dcore: {module_name!r} has no attribute {attr!r}") from None
    return target


def call_signature_error(fn: Any, *args: Any) -> str | None:
    """Why ``fn(*args)`` cannot be called (its signature as text), or None if it can."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return None
    try:
        signature.bind(*args)
    except TypeError:
        return f"its signature is {getattr(fn, '__name__', type(fn).__name__)}{signature}"
    return None


def fail(message: str) -> int:
    print(f"dcore: {message}", file=sys.stderr)
    return 1


def describe_failure(exc: BaseException, *, hint: bool = True) -> str:
    """One line for an error a command did not expect: dcore's own errors and OS errors
    are written to be read as they are; anything else also says where it was raised."""
    from pydantic import ValidationError

    from dcore.errors import DcoreError

    if isinstance(exc, DcoreError | OSError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return _invalid(exc)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<")]  # not importlib's <frozen ...> frames
    if frames and not isinstance(exc, SyntaxError):  # its text names the file and line
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    if hint:
        text += "; `dcore --traceback ...` shows the full traceback"
    return text


def _invalid(exc: Any) -> str:
    """A pydantic ValidationError on one line; a settings field is named by its variable."""
    settings = exc.title == "DcoreSettings"
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        if settings:
            shown = "" if "secret" in where else f"={err['input']!r}"  # never echo a secret
            where = f"DCORE_{where.upper()}{shown}" if where else "DCORE_*"
        parts.append(f"{where}: {err['msg']}")
    return f"invalid {'setting' if settings else exc.title}: {'; '.join(parts)}"


def print_help(parser: argparse.ArgumentParser) -> Handler:
    """The handler of a command given without its subcommand (bare ``dcore``, ``dcore
    dlq``): that command's full help on stderr and exit 2, as for any usage error."""
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2
    return handler


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a bad value is a usage error naming it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number >= 0 (``nan``/``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value
