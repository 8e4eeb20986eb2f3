"""An order as a distributed transaction: reserve stock → charge the card → store the
receipt → notify the customer, with a compensation for each step that can be undone.

If the job fails for good (here: the notification service rejects the order), the
completed steps are undone in reverse order, once each: the receipt is deleted, the
card refunded, the stock released.

Every call to the outside world carries an idempotency key (``<order>:<what>``, as
payment APIs take one), so a redelivered job never charges twice and a resumed
compensation never refunds twice. The "outside world" here is the ``orders.ledger``
topic, whose keyed appends are idempotent; in the simulator each call is also a trace
effect for the ``all_or_nothing`` invariant. ``keyed_undo=False`` plants the classic bug:
compensations sent without a key.

Workers import this module (``DCORE_IMPORTS=examples.orders.pipeline``).
"""

from __future__ import annotations

from typing import Any

from dcore import (
    Dispatch,
    Execute,
    NextFn,
    Pipeline,
    PipelineContext,
    RetryPolicy,
    core_function,
    current_environment,
    default_registry,
    register_plugin,
)
from dcore_testing.sim import effect

#: the durable topic standing for the services the steps call (a test on a real worker
#: reads what happened from it)
LEDGER = "orders.ledger"


class Order(PipelineContext):
    order_id: str
    amount_cents: int
    #: the step that fails for good (a planted failure: "notify" rejects the order)
    reject_at: str = ""


def call(order: Order, what: str, *, keyed: bool = True) -> None:
    """Ask the outside world to do ``what`` for ``order``; with ``keyed``, under an
    idempotency key, so asking twice does it once."""
    key = f"{order.order_id}:{what}" if keyed else None
    if key is None:
        effect(what, order=order.order_id)
    else:
        effect(what, order=order.order_id, key=key)
    current_environment().events.append(LEDGER, {"order": order.order_id, "what": what}, key=key)


class Step(Execute[Order]):
    """A step that does ``what`` and can undo it with ``undo``."""

    what = ""
    undo = ""

    def __init__(self, keyed_undo: bool = True) -> None:
        self.keyed_undo = keyed_undo

    def execute(self, next_fn: NextFn[Order], context: Order) -> Any:
        if context.reject_at == self.what:
            raise RuntimeError(f"{self.what} rejected order {context.order_id}")
        call(context, self.what)
        return next_fn(context)

    def compensate(self, context: Order, error: BaseException) -> None:
        call(context, self.undo, keyed=self.keyed_undo)


@register_plugin("reserve_stock", registry=default_registry(), replace=True)
class ReserveStock(Step):
    what, undo = "reserve", "release"


@register_plugin("charge_order", registry=default_registry(), replace=True)
class ChargeCard(Step):
    what, undo = "charge", "refund"


@register_plugin("store_receipt", registry=default_registry(), replace=True)
class StoreReceipt(Step):
    what, undo = "receipt", "delete_receipt"


@register_plugin("notify_customer", registry=default_registry(), replace=True)
class NotifyCustomer(Execute[Order]):
    """The last step: a notification cannot be taken back, so it has no compensation."""

    def execute(self, next_fn: NextFn[Order], context: Order) -> Any:
        if context.reject_at == "notify":
            raise RuntimeError(f"the notification service rejected order {context.order_id}")
        call(context, "notify")
        return next_fn(context)


@core_function
def placed(order: Order) -> str:
    return order.order_id


EFFECTS = ("reserve", "charge", "receipt", "notify")
COMPENSATIONS = {"reserve": "release", "charge": "refund", "receipt": "delete_receipt"}


def order_pipeline(
    order: Order, *, dispatcher: str = "celery", attempts: int = 2, keyed_undo: bool = True
) -> Pipeline[Order]:
    """The order's pipeline; a failing step is retried ``attempts`` times in all."""
    pipeline = order.create_pipeline(core_fn=placed)
    pipeline.chain(Dispatch, plugin=dispatcher, retry=RetryPolicy(attempts=attempts, initial=1.0))
    for step in ("reserve_stock", "charge_order", "store_receipt"):
        pipeline.chain(Execute, plugin=step, keyed_undo=keyed_undo)
    pipeline.chain(Execute, plugin="notify_customer")
    return pipeline
