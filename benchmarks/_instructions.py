"""Instruction counts for pure-Python benchmark variants, through callgrind.

Wall-clock ratios move with whatever else the machine is doing; the number of
instructions a variant executes does not. ``compare(baseline, candidate)`` re-runs each
variant in a fresh interpreter under ``valgrind --tool=callgrind`` (the two at once, on
separate cores) and counts only the measured section, so a benchmark can print a ratio
that a loaded machine cannot skew.

A variant is a *spec*: a module-level function that does the setup and returns the
callable to measure. It is named by the callable itself or by ``"path/to/file.py:name"``::

    def simpy_timers() -> Callable[[], object]:
        plan = delays()                       # setup: not counted
        return lambda: run_simpy(plan)        # counted

    counts = compare(simpy_timers, dcore_timers)   # Comparison(baseline=..., candidate=...)
    counts.speed                                   # baseline / candidate instructions

How only the measured section is counted: the child calls ``os.getppid()`` right before
it and ``os.getpgrp()`` right after, and callgrind is told to zero its counters on
entering libc's ``getppid`` and to dump them on entering ``getpgrp``; the first dump is
the section (neither CPython nor these benchmarks call either function otherwise).
``PYTHONHASHSEED`` is fixed, so repeated counts agree to within 0.01%.

Run as a script it is the child: ``python _instructions.py FILE.py:NAME``.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Comparison", "available", "compare", "count", "spec_name"]

Spec = Callable[[], Callable[[], object]] | str

_CALLGRIND = ("valgrind", "--tool=callgrind", "--zero-before=getppid", "--dump-before=getpgrp")


def available() -> bool:
    """Whether valgrind is installed (``--instructions`` needs it)."""
    return shutil.which("valgrind") is not None


def _require() -> None:
    if not available():
        raise RuntimeError(
            "instruction counts need valgrind on PATH (apt-get install "
            "valgrind); run the benchmark without --instructions"
        )


def spec_name(spec: Spec) -> str:
    """``"file.py:name"`` for a spec given as a module-level function or as that string."""
    if isinstance(spec, str):
        path, sep, name = spec.rpartition(":")
        if not sep or not path.endswith(".py") or not name.isidentifier():
            raise ValueError(
                f"an instruction-count spec is 'path/to/file.py:function', got {spec!r}"
            )
        return f"{Path(path).resolve()}:{name}"
    name = getattr(spec, "__qualname__", "")
    source = inspect.getsourcefile(spec)
    if not name.isidentifier() or source is None:
        raise ValueError(
            f"an instruction-count spec must be a module-level function (the "
            f"child process imports it by name), got {spec!r}"
        )
    return f"{Path(source).resolve()}:{name}"


@dataclass(frozen=True)
class Comparison:
    """Instructions of the measured section of a baseline and a candidate variant."""

    baseline: int
    candidate: int

    @property
    def speed(self) -> float:
        """The candidate's speed as a multiple of the baseline's, for the same work
        (above 1: the candidate executes fewer instructions)."""
        return self.baseline / self.candidate


def _command(spec: Spec, out: Path) -> list[str]:
    return [
        *_CALLGRIND,
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        spec_name(spec),
    ]


def _start(spec: Spec, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        _command(spec, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _collect(spec: Spec, proc: subprocess.Popen[str], out: Path) -> int:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{spec_name(spec)} failed under callgrind (exit {proc.returncode}):\n{err[-2000:]}"
        )
    part = out.with_name(out.name + ".1")  # the dump taken on entering getpgrp
    if not part.exists():
        raise RuntimeError(
            f"{spec_name(spec)}: callgrind wrote no dump for the measured "
            f"section (is libc's getpgrp visible to valgrind?)"
        )
    for line in part.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{spec_name(spec)}: no 'summary:' line in {part}")


def count(spec: Spec) -> int:
    """Instructions executed by the measured section of one variant."""
    _require()
    with tempfile.TemporaryDirectory(prefix="dcore-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        return _collect(spec, _start(spec, out), out)


def compare(baseline: Spec, candidate: Spec) -> Comparison:
    """Instruction counts of both variants, run side by side (check :func:`available`
    first: without valgrind this raises RuntimeError)."""
    _require()
    with tempfile.TemporaryDirectory(prefix="dcore-callgrind-") as tmp:
        outs = (Path(tmp) / "baseline.out", Path(tmp) / "candidate.out")
        procs = [_start(s, o) for s, o in zip((baseline, candidate), outs, strict=True)]
        return Comparison(
            _collect(baseline, procs[0], outs[0]), _collect(candidate, procs[1], outs[1])
        )


def _run_child(spec: str) -> None:
    path, _, name = spec_name(spec).rpartition(":")
    module_spec = importlib.util.spec_from_file_location(f"_measured_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"cannot import {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    measured = getattr(module, name)()
    gc.collect()  # the measured section starts with no garbage left by the setup, so
    # when the collector runs inside it does not depend on how much the setup allocated
    os.getppid()  # callgrind zeroes its counters here ...
    measured()
    os.getpgrp()  # ... and dumps them here


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python _instructions.py path/to/file.py:function")
    _run_child(sys.argv[1])
