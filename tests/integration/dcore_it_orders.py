"""The outside world of the orders example, rigged for the Celery compensation tests.

The worker imports this module next to the example (``DCORE_IMPORTS=
examples.orders.pipeline,dcore_it_orders``) and uses its event bus
(``DCORE_EVENT_BUS=it_orders_bus``): the Redis bus, whose ``orders.ledger`` topic stands
for the services the order's steps call. The example's pipeline is left as shipped; a
test plans, per order, what one of those services does when asked for something:

- ``hang-after:<what>``: the call lands (its ledger entry is written), then the service
  hangs, once per order, until the worker is killed; the pool child's pid is published
  first, so the test kills exactly the process that is in the middle of compensating;
- ``fail:<what>``: the call fails every time (a service that refuses it for good).

Every call asked is counted per order, whether it landed or not, so a test can tell a
call asked twice (and written once, thanks to its idempotency key) from one asked once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import redis

from dcore import Environment, register_plugin
from dcore._plugins.registry import default_registry
from dcore.backends.redis_events import RedisEventBus
from examples.orders.pipeline import LEDGER

#: how long a hanging call waits to be killed before it gives up and returns (a bound,
#: so a test that failed to kill it does not leave a worker stuck for good)
HANG_LIMIT = 30


def _key(prefix: str, *parts: str) -> str:
    return ":".join((prefix, "it-orders", *parts))


@register_plugin("it_orders_bus", registry=default_registry(), replace=True)
class RiggedWorld(RedisEventBus):
    """The Redis event bus, with the services behind ``orders.ledger`` doing what the
    order's plan says."""

    def append(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        maxlen: int | None = None,
        key: str | None = None,
    ) -> str:
        if topic != LEDGER:
            return super().append(topic, payload, maxlen=maxlen, key=key)
        order, what = str(payload["order"]), str(payload["what"])
        self.client.hincrby(_key(self.prefix, "asked", order), what, 1)
        raw = self.client.get(_key(self.prefix, "plan", order))
        plan = raw.decode() if raw else ""
        if plan == f"fail:{what}":
            raise ConnectionError(f"the service refused {what} for order {order}")
        entry = super().append(topic, payload, maxlen=maxlen, key=key)
        hung = _key(self.prefix, "hung", order)
        if plan == f"hang-after:{what}" and self.client.set(hung, os.getpid(), nx=True):
            threading.Event().wait(HANG_LIMIT)  # the hang itself: ended by a SIGKILL
        return entry


# -- the test's side ----------------------------------------------------------------------
def _client(env: Environment) -> redis.Redis[Any]:
    return redis.Redis.from_url(env.settings.redis_url)


def plan(env: Environment, order: str, what: str) -> None:
    """Plan what the services do for ``order``: ``"hang-after:refund"``, ``"fail:refund"``."""
    client = _client(env)
    try:
        client.set(_key(env.settings.key_prefix, "plan", order), what)
    finally:
        client.close()


def hanging_pid(env: Environment, order: str) -> int | None:
    """The pid of the process whose call for ``order`` hangs (None: none hung yet)."""
    client = _client(env)
    try:
        raw = client.get(_key(env.settings.key_prefix, "hung", order))
    finally:
        client.close()
    return int(raw) if raw else None


def asked(env: Environment, order: str) -> dict[str, int]:
    """How often each call was asked for ``order`` (landed or not)."""
    client = _client(env)
    try:
        counts = client.hgetall(_key(env.settings.key_prefix, "asked", order))
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in counts.items()}


def ledger(env: Environment, order: str) -> list[str]:
    """What the services did for ``order``, in order, as the ledger stream holds it."""
    return [
        str(e.payload["what"])
        for e in env.events.entries(LEDGER)
        if e.payload.get("order") == order
    ]
