"""At-least-once made visible: a worker crash redelivers a job, and a non-idempotent
stage charges the card twice.

The pipeline ships its work to Celery (``remote``), so in the simulator every delivery
is a ``JobMessage`` that went through JSON. ``charge_card`` calls a payment gateway;
``send_receipt`` runs after it. Crash the worker as it enters ``send_receipt`` and the
broker redelivers the whole background part: the gateway sees a second charge.
``idempotent=True`` makes the stage check a charge marker in storage first.

    dcore explore examples.sim.payments:crash_after_charge --seeds 20
"""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    Pipeline,
    PipelineContext,
    core_function,
    default_registry,
    register_plugin,
)
from dcore.services.storage import StorageInterface
from dcore_testing import invariants
from dcore_testing.sim import Crash, FaultPlan, SimEnvironment, effect


class PaymentContext(PipelineContext):
    order_id: str
    amount_cents: int


@register_plugin("charge_card", registry=default_registry(), replace=True)
class ChargeCard(Execute[PaymentContext]):
    """Charges the order through the (fake) gateway. ``idempotent`` makes a retry or a
    redelivery skip orders it already charged."""

    def __init__(
        self, storage: StorageInterface, idempotent: bool = False, gateway_outages: int = 0
    ) -> None:
        self.storage = storage
        self.idempotent = idempotent
        self.gateway_outages = gateway_outages

    def execute(self, next_fn: NextFn[PaymentContext], context: PaymentContext) -> Any:
        tries_key = f"tries/{context.order_id}"
        tries = int(self.storage.get(tries_key)) if self.storage.exists(tries_key) else 0
        self.storage.put(tries_key, str(tries + 1).encode())
        if tries < self.gateway_outages:
            raise ConnectionError(f"payment gateway unavailable (try {tries + 1})")
        marker = f"charges/{context.order_id}"
        if not (self.idempotent and self.storage.exists(marker)):
            effect("charge", order=context.order_id, amount=context.amount_cents)
            self.storage.put(marker, str(context.amount_cents).encode())
        return next_fn(context)


@register_plugin("send_receipt", registry=default_registry(), replace=True)
class SendReceipt(Execute[PaymentContext]):
    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    def execute(self, next_fn: NextFn[PaymentContext], context: PaymentContext) -> Any:
        self.storage.put(f"receipts/{context.order_id}", b"sent")
        return next_fn(context)


@core_function
def done(context: PaymentContext) -> str:
    return context.order_id


def payment_pipeline(
    context: PaymentContext, *, idempotent: bool = False
) -> Pipeline[PaymentContext]:
    pipeline = context.create_pipeline(core_fn=done)
    pipeline.chain(Dispatch, plugin="celery")
    pipeline.chain(Execute, plugin="charge_card", idempotent=idempotent)
    pipeline.chain(Execute, plugin="send_receipt")
    return pipeline


STAGES = ["celery", "charge_card", "send_receipt"]


def pay(sim: SimEnvironment, orders: int = 1, *, idempotent: bool = False) -> None:
    for i in range(orders):
        context = PaymentContext(order_id=f"order-{i}", amount_cents=100 * (i + 1))
        payment_pipeline(context, idempotent=idempotent).run()
    sim.run_until_idle()


def crash_after_charge(sim: SimEnvironment) -> None:
    """One order; the worker dies entering send_receipt (after the charge)."""
    pay(sim, 1)
    invariants.no_job_lost(sim)
    invariants.exactly_once(sim, "charge")


crash_after_charge.sim_options = {  # type: ignore[attr-defined]
    "faults": FaultPlan(Crash(stage="send_receipt", job=1)),
}
