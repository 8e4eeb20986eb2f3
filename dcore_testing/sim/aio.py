"""An asyncio event loop on virtual time, for async stages under the simulator.

The loop's ``time()`` is the virtual clock's ``monotonic()``, and where a real loop would
block in its selector until the next timer, this one sleeps on the virtual clock: the
simulated task yields to the scheduler, which runs other tasks or jumps time. So
``await asyncio.sleep(30)`` in a stage takes no wall time and is a yield point like
``clock.sleep(30)``; a run stays a pure function of its choices. A loop with nothing
scheduled and nothing ready would wait for ever: that is a SimulationError naming the
cause (awaiting something no simulated code will finish), not a hang.

The simulator runs each task in a greenlet; asyncio keeps the running loop per thread,
so the scheduler sets it aside when a task switches out (see ``Scheduler``).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any

from dcore import Clock
from dcore_testing.sim.errors import SimulationError

__all__ = ["VirtualEventLoop"]


class _VirtualSelector(selectors.BaseSelector):
    """Registers what the loop asks (its self-pipe) and waits on virtual time instead
    of on file descriptors: nothing in a simulated async stage does real I/O."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self._keys[fd] = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationError(
                "an async stage awaits something that nothing in the simulation will "
                "finish (no timer, nothing ready): await asyncio.sleep(), the services, "
                "or work the stage starts itself"
            )
        if timeout > 0:
            self._clock.sleep(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is ``clock.monotonic()`` and whose waits are
    ``clock.sleep()``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(_VirtualSelector(clock))
        self._virtual_clock = clock

    def time(self) -> float:
        return self._virtual_clock.monotonic()
