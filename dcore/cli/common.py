"""Helpers shared by subcommands: loading ``module:object``, argument types, and turning
failures into one ``dcore: ...`` line instead of a traceback."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "call_signature_error",
    "describe_failure",
    "fail",
    "finite_float",
    "import_file",
    "load_object",
    "note_process_local",
    "positive_int",
    "print_help",
]

Handler = Callable[[argparse.Namespace], int]


def load_object(spec: str) -> Any:
    """Import ``pkg.mod:attr.path`` or ``path/to/file.py:attr.path`` (the current
    directory is importable, as with python -m).

    Every way this can go wrong exits with one line naming ``spec``: the module cannot be
    found, raises while it is imported, or lacks the attribute."""
    module_name, sep, attr = spec.rpartition(":")  # a Windows path has a colon too
    if not sep or not module_name or not attr:
        raise SystemExit(f"dcore: expected MODULE:OBJECT or FILE.py:OBJECT, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    by_path = _is_path(module_name)
    if not by_path and not all(part.isidentifier() for part in module_name.split(".")):
        raise SystemExit(
            f"dcore: {module_name!r} in {spec!r} is not a module name; "
            "expected a dotted name such as 'app.pipelines' or a .py file"
        )
    try:
        target: Any = import_file(module_name) if by_path else importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as exc:
        raise SystemExit(f"dcore: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise SystemExit(
            f"dcore: importing {module_name!r} raised {describe_failure(exc, hint=False)}"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(f"dcore: {module_name!r} has no attribute {attr!r}") from None
    return target


def _is_path(module_name: str) -> bool:
    return module_name.endswith(".py") or "/" in module_name or os.sep in module_name


def import_file(path_text: str) -> ModuleType:
    """Import a ``.py`` file as pytest's importlib mode does: under a module name made of
    its path relative to the current directory (``tests/test_orders.py`` becomes
    ``tests.test_orders``; a file elsewhere is named by its stem), registered in
    ``sys.modules`` so dataclasses and pickling find it. A file imported already under
    that name is reused."""
    path = Path(path_text).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path_text!r} (from {os.getcwd()})")
    try:
        relative = path.relative_to(Path.cwd().resolve())
    except ValueError:
        relative = Path(path.name)
    name = ".".join(relative.with_suffix("").parts)
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path_text!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


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
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")
    ]  # not importlib's <frozen ...> frames
    if frames and not isinstance(exc, SyntaxError):  # its text names the file and line
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    if hint:
        text += "; `dcore --traceback ...` shows the full traceback"
    return text


def _invalid(exc: Any) -> str:
    """A pydantic ValidationError on one line (settings raise ConfigurationError, which
    names the variable, before it gets here)."""
    parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
             for err in exc.errors()[:5]]  # fmt: skip
    return f"invalid {exc.title}: {'; '.join(parts)}"


#: service attribute → (what it is, the variable that picks its backend)
_SERVICES = {"events": ("event bus", "DCORE_EVENT_BUS"), "jobs": ("job store", "DCORE_JOB_STORE")}


def note_process_local(env: Any, *services: str) -> None:
    """Say on stderr when a command reads a store that lives in its own process.

    The embedded defaults (``memory`` event bus and job store) are created empty by this
    very command, so "the dead-letter queue is empty" or "no jobs" would say nothing about
    the workers; the note names the variables that point the command at their store."""
    local = [name for name in services if getattr(getattr(env, name), "process_local", False)]
    if not local:
        return
    what = " and the ".join(_SERVICES[name][0] for name in local)
    are = "are" if len(local) > 1 else "is"
    variables = " ".join(f"{_SERVICES[name][1]}=redis" for name in local)
    print(
        f"dcore: note: the {what} {are} in memory, local to this process: it starts empty "
        "in every process, so it cannot show what your workers recorded. Point the command "
        f"at their store: {variables} DCORE_REDIS_URL=redis://HOST:6379/0",
        file=sys.stderr,
    )


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
