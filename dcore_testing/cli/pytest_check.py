"""``dcore replay --check`` for a trace that the pytest plugin saved.

Such a trace names a test (``tests/test_orders.py::test_refund[3]``), not a scenario
function: the test needs its fixtures, conftest files and parameters, which only pytest
can provide. So the check runs that one test under pytest with ``--dcore-replay`` (the
command the failure report prints) and watches it: a ``ReplayDivergence`` from the test,
from the run ending early, or swallowed by the test means the path changed; any other
failure is the test failing again on the recorded path.

Imported only when such a trace is checked: it needs pytest (the ``testing`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from dcore.cli import fail
from dcore_testing.fixtures.sim import simulation_of
from dcore_testing.sim.errors import ReplayDivergence

__all__ = ["check_pytest_trace"]


class _Watcher:
    """A pytest plugin recording what happened to the one replayed test."""

    def __init__(self) -> None:
        self.ran = False
        self.uses_sim = False
        self.setup_error: str | None = None
        self.failure: BaseException | None = None
        self.divergence: ReplayDivergence | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        exc = call.excinfo.value if call.excinfo is not None else None
        if call.when == "setup" and exc is not None:
            self.setup_error = f"{type(exc).__name__}: {exc}"
        elif call.when == "call":
            self.ran = True
            sim = simulation_of(item)
            self.uses_sim = sim is not None
            if isinstance(exc, ReplayDivergence):
                self.divergence = exc
            elif exc is not None:
                self.failure = exc
                if sim is not None:  # a divergence the test caught, or a shorter run
                    try:
                        sim.finish_replay()
                    except ReplayDivergence as divergence:
                        self.divergence = divergence
        elif isinstance(exc, ReplayDivergence) and self.divergence is None:
            self.divergence = exc  # teardown: the run ended before the recorded trace
        return report


def check_pytest_trace(nodeid: str, trace_path: str) -> int:
    """Replay the test ``nodeid`` against ``trace_path``; 0 if it took the recorded path
    (whether it fails again or passes now), 1 if it diverged or could not run."""
    test_file = nodeid.split("::", 1)[0]
    if not Path(test_file).is_file():
        return fail(
            f"the trace was saved by the pytest plugin for the test {nodeid}, and "
            f"there is no {test_file} in {os.getcwd()}; run the check from the "
            "directory pytest ran in (test ids are relative to it)"
        )
    watcher = _Watcher()
    # dcore and dcore_testing are imported already (this command runs in them), so pytest
    # cannot rewrite their asserts; its warning about that says nothing about the test
    code = pytest.main(
        [
            nodeid,
            f"--dcore-replay={trace_path}",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::pytest.PytestAssertRewriteWarning",
        ],
        plugins=[watcher],
    )
    if not watcher.ran:
        if watcher.setup_error is not None:
            return fail(f"{nodeid} did not run: its setup failed ({watcher.setup_error})")
        return fail(
            f"pytest found no test {nodeid} (pytest exit code {int(code)}); "
            "was it renamed or removed?"
        )
    if not watcher.uses_sim:
        return fail(f"{nodeid} no longer uses the dcore_sim fixture, so it cannot replay the trace")
    if watcher.divergence is not None:
        print(f"replay diverged: {watcher.divergence}")
        return 1
    if watcher.failure is not None:
        text = str(watcher.failure)
        first = text.splitlines()[0] if text else ""
        result = f"fails again: {type(watcher.failure).__name__}: {first}"
    else:
        result = "passes now"
    print(f"replay matches the trace event for event; the test {result}")
    return 0
