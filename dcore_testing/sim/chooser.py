"""Who decides: every scheduling choice and every drawn fault goes through a Chooser.

A run is a pure function of its choices, so the same choices give the same run. Three
sources: a seeded ``random.Random`` (registered with Hypothesis when Hypothesis is in
use), Hypothesis data (``st.data()``: failing interleavings and faults shrink towards
"no preemption, no fault"), or a recorded trace (replay).

``choose(n)`` picks one of ``n`` ready tasks; index 0 is the task that just yielded,
so 0 means "carry on without a context switch" and every non-zero pick is a
preemption. ``chance(p)`` draws a fault with probability ``p``; a shrink moves it to
False.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dcore_testing.sim.errors import ReplayDivergence

if TYPE_CHECKING:
    from dcore_testing.sim.trace import Trace

__all__ = [
    "Chooser",
    "HypothesisChooser",
    "RandomChooser",
    "ReplayChooser",
    "ScheduleChooser",
    "preemption_points",
]

_CHANCE_SCALE = 1 << 16


@runtime_checkable
class Chooser(Protocol):
    #: recorded in the trace header ("random", "hypothesis", "replay")
    kind: str

    def choose(self, n: int, what: str) -> int:
        """An index in ``range(n)`` (``n >= 2``); ``what`` names the decision."""
        ...

    def chance(self, p: float, what: str) -> bool:
        """True with probability ``p`` (``0 < p <= 1``)."""
        ...


class RandomChooser:
    """Choices from ``random.Random(seed)``: the same seed gives the same run.

    ``register=True`` hands the Random to ``hypothesis.register_random``, so a chooser
    that lives across the examples of a Hypothesis test is reseeded per example and a
    failing example replays. A chooser made inside an example is already reproducible
    (its seed decides everything), and registering costs a full GC pass (~40 ms), so it
    is not the default."""

    kind = "random"

    def __init__(self, seed: int | str = 0, *, register: bool = False) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        if register:
            from hypothesis import register_random

            register_random(self.random)

    def choose(self, n: int, what: str) -> int:
        return int(self.random.random() * n)

    def chance(self, p: float, what: str) -> bool:
        return self.random.random() < p


class ScheduleChooser:
    """Choices from a fixed schedule of preemption points ``{decision number: offset}``
    (offset 1 = the next task in line); every other decision carries on with the task
    that yielded. Faults and other picks come from ``random`` (a seeded Random)."""

    kind = "schedule"

    def __init__(
        self, schedule: dict[int, int], random_source: random.Random | None = None
    ) -> None:
        bad = {k: v for k, v in schedule.items() if k < 0 or v < 1}
        if bad:
            raise ValueError(f"a schedule maps decision numbers >= 0 to offsets >= 1, got {bad}")
        self.schedule = dict(schedule)
        self.random = random_source or random.Random(0)
        self.decisions = 0

    def choose(self, n: int, what: str) -> int:
        if what != "run":
            return self._other(n)
        step = self.decisions
        self.decisions += 1
        offset = self.schedule.get(step)
        if offset is None:
            return 0
        return 1 + (offset - 1) % (n - 1)

    def _other(self, n: int) -> int:
        return int(self.random.random() * n)

    def chance(self, p: float, what: str) -> bool:
        return self.random.random() < p

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"


class HypothesisChooser(ScheduleChooser):
    """Choices drawn from Hypothesis ``data`` (``st.data()``), so failing runs shrink.

    The interleaving is drawn up front as a schedule: a short list of preemption points
    ``(decision number, which other task)``. Hypothesis shrinks lists by deleting
    elements and numbers towards zero, so a failing run shrinks to the fewest, earliest
    preemptions that still fail — for a lost update, one. ``horizon`` bounds the decision
    numbers drawn (later decisions never preempt); faults are drawn at each opportunity
    and shrink towards "no fault"."""

    kind = "hypothesis"

    def __init__(self, data: Any, *, horizon: int = 64, max_preemptions: int = 8) -> None:
        from hypothesis import strategies as st

        if horizon < 1 or max_preemptions < 0:
            raise ValueError(
                f"HypothesisChooser needs horizon >= 1 and max_preemptions >= 0, got "
                f"horizon={horizon!r}, max_preemptions={max_preemptions!r}"
            )
        self.data = data
        self._st = st
        points = data.draw(preemption_points(horizon, max_preemptions), label="preemptions")
        super().__init__(dict(points))
        self._coin = st.integers(0, _CHANCE_SCALE - 1)

    def _other(self, n: int) -> int:
        return int(self.data.draw(self._st.integers(0, n - 1)))

    def chance(self, p: float, what: str) -> bool:
        # 0 (the shrink target) is "no fault"; the top p of the range is "fault"
        return bool(self.data.draw(self._coin) >= (1.0 - p) * _CHANCE_SCALE)


def preemption_points(horizon: int = 64, max_preemptions: int = 8) -> Any:
    """Hypothesis strategy: a list of ``(decision number, offset)`` preemption points."""
    from hypothesis import strategies as st

    return st.lists(
        st.tuples(st.integers(0, horizon - 1), st.integers(1, 8)),
        max_size=max_preemptions,
        unique_by=lambda p: p[0],
    )


class ReplayChooser:
    """Feeds back the choices of a recorded trace, read at the position the replaying
    trace has reached; a decision that does not match raises :class:`ReplayDivergence`
    naming the recorded event."""

    kind = "replay"

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def _recorded(self, what: str, n: int) -> Any:
        want = self.trace.peek_expected()
        asked = {"ev": "choice", "what": what, "n": n}
        if (
            want is None
            or want.get("ev") != "choice"
            or want.get("what") != what
            or (want.get("n") != n)
        ):
            raise ReplayDivergence(
                len(self.trace.events),
                want,
                asked,
                hint="the run asks for a decision the recording did not make",
            )
        return want["pick"]

    def choose(self, n: int, what: str) -> int:
        return int(self._recorded(what, n))

    def chance(self, p: float, what: str) -> bool:
        return bool(self._recorded(what, 2))
