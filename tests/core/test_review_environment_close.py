"""``Environment.close()`` closes everything it owns even when one closer fails (a thread
pool whose drain times out must not leave the Redis connections open), then raises the
first failure."""

from __future__ import annotations

import pytest

from dcore import DcoreSettings, Environment, PluginRegistry
from dcore.backends.memory_events import MemoryEventBus
from dcore.errors import DispatcherShutdownTimeout


class Resource:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.fail:
            raise DispatcherShutdownTimeout("1 background job(s) still running after 30.0s")


class ClosingBus(MemoryEventBus):
    closed = False

    def close(self) -> None:
        type(self).closed = True
        super().close()


def test_a_failing_closer_does_not_leave_the_rest_open(dcore_registry: PluginRegistry) -> None:
    dcore_registry.register("review_closing_bus", ClosingBus)
    ClosingBus.closed = False
    env = Environment(DcoreSettings(event_bus="review_closing_bus"), registry=dcore_registry)
    assert isinstance(env.events, ClosingBus)
    stuck = env.resource("review.stuck", lambda: Resource(fail=True))
    other = env.resource("review.other", Resource)

    with pytest.raises(DispatcherShutdownTimeout, match="still running"):
        env.close()

    assert stuck.closed
    assert other.closed
    assert ClosingBus.closed
