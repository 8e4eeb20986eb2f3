"""The order pipeline under the simulator: two orders, one the notification service
rejects (so its completed steps must be undone) and one that goes through. Each
scenario ends by checking that every job is all or nothing and none is lost.

    run_scenario(orders, seed, faults=plan)          # the example as shipped
    run_scenario(unkeyed_refunds, seed, faults=plan) # compensations without a key
"""

from __future__ import annotations

from dcore_testing.invariants import all_or_nothing, no_job_lost
from dcore_testing.sim import SimEnvironment
from examples.orders.pipeline import COMPENSATIONS, EFFECTS, Order, order_pipeline


def place_two_orders(sim: SimEnvironment, *, keyed_undo: bool) -> None:
    rejected = Order(order_id="o-1", amount_cents=500, reject_at="notify")
    accepted = Order(order_id="o-2", amount_cents=700)
    for order in (rejected, accepted):
        order_pipeline(order, keyed_undo=keyed_undo).run()
    sim.run_until_idle()
    no_job_lost(sim)
    all_or_nothing(sim, effects=EFFECTS, compensations=COMPENSATIONS)


def orders(sim: SimEnvironment) -> None:
    place_two_orders(sim, keyed_undo=True)


def unkeyed_refunds(sim: SimEnvironment) -> None:
    place_two_orders(sim, keyed_undo=False)
