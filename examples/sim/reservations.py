"""An ambiguous failure: the write happened, the reply was lost, the retry writes again.

``reserve_seat`` appends a reservation to a durable topic and retries a
``ServiceUnavailableError`` (a timeout). When the append reached the server and only its
reply was lost, the retry reserves the seat twice. The fixed twin appends with an
idempotency key (``append(..., key=...)``): the second append adds nothing.

    FaultPlan(ServiceError(op="events.append", applied=True))
"""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    PipelineContext,
    RetryPolicy,
    core_function,
    default_registry,
    register_plugin,
)
from dcore.errors import ServiceUnavailableError
from dcore.services.events import EventBusInterface
from dcore_testing.invariants import InvariantViolation
from dcore_testing.sim import SimEnvironment

TOPIC = "reservations"


class Booking(PipelineContext):
    seat: str


@register_plugin("reserve_seat", registry=default_registry(), replace=True)
class ReserveSeat(Execute[Booking]):
    retry_policy = RetryPolicy(attempts=3, initial=0.5, retry_on=(ServiceUnavailableError,))

    def __init__(self, events: EventBusInterface, keyed: bool = False) -> None:
        self.events = events
        self.keyed = keyed

    def execute(self, next_fn: NextFn[Booking], context: Booking) -> Any:
        key = f"{context.job_id}:{context.seat}" if self.keyed else None
        self.events.append(TOPIC, {"seat": context.seat}, key=key)
        return next_fn(context)


@core_function
def booked(context: Booking) -> str:
    return context.seat


def book(sim: SimEnvironment, *, keyed: bool) -> None:
    ctx = Booking(seat="12A")
    pipeline = ctx.create_pipeline(core_fn=booked)
    pipeline.chain(Dispatch, plugin="celery").chain(Execute, plugin="reserve_seat", keyed=keyed)
    pipeline.run()
    sim.run_until_idle()
    seats = [e.payload["seat"] for e in sim.events.inner.entries(TOPIC)]  # type: ignore[attr-defined]
    if seats != ["12A"]:
        raise InvariantViolation(f"seat reservations: {seats}, expected 12A once")


def buggy(sim: SimEnvironment) -> None:
    book(sim, keyed=False)


def fixed(sim: SimEnvironment) -> None:
    book(sim, keyed=True)
