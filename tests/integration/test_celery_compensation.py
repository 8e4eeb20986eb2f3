"""Compensation on a real Celery worker with real Redis: the orders example
(reserve_stock → charge_order → store_receipt → notify_customer) as shipped.

- An order the notification service rejects is undone in reverse order, once each, and
  dead-lettered as compensated; its state events say so.
- A worker SIGKILLed in the middle of undoing (its pool child alone, or the whole worker
  then restarted): the next delivery (the message returned by ``reject_on_worker_lost``,
  or the recovery sweep of the restarted worker) takes the compensation over and undoes
  only what is left; the call the dead worker had made is asked again under its
  idempotency key and happens once.
- A compensation that fails for good dead-letters the job with both errors, and the
  stages before it are left alone.
- An order that goes through undoes nothing.
- A step taken in the request, before the hand-off, is undone by the worker too.

The services the steps call are the ``orders.ledger`` stream in Redis; the worker's
event bus (``dcore_it_orders``) rigs them per order: a call that hangs until the worker
is killed, or one that fails for good. The kill lands deterministically: the test waits
until the job record is COMPENSATING with the receipt undone and the hanging process has
published its pid, then kills that process.

Both sides run with a 2 s lease and a 1 s recovery sweep, so a resumed compensation
takes seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dcore_it_orders as world
import pytest
from celery_support import HERE, wait_terminal

from dcore import (
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobState,
    RetryPolicy,
    use_environment,
)
from dcore._core import events
from dcore.services.events import Event
from dcore.services.jobs import JobRecord
from examples.orders.pipeline import Order, order_pipeline, placed

pytestmark = pytest.mark.integration

LEASE = 2.0
TIMEOUT = 45.0
UNDONE = ["delete_receipt", "refund", "release"]
#: pipeline indexes: the Dispatch is 0
RESERVE, CHARGE, RECEIPT = 1, 2, 3
TOPICS = (
    events.JOB_COMPENSATING,
    events.STAGE_COMPENSATED,
    events.JOB_COMPENSATED,
    events.JOB_DEAD,
    events.JOB_SUCCEEDED,
)


class Seen:
    """The state events published on the bus, as they arrive."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._guard = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._guard:
            self.events.append(event)
            self._guard.notify_all()

    def of(self, topic: str) -> list[dict[str, Any]]:
        with self._guard:
            return [e.payload for e in self.events if e.topic == topic]

    def wait_for(self, topic: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._guard:
            self._guard.wait_for(lambda: any(e.topic == topic for e in self.events), timeout)
        return self.of(topic)


@pytest.fixture
def shop(dcore_celery_worker: Any) -> Iterator[tuple[Any, Environment, Seen]]:
    """A worker running the orders example against the rigged services, the sending
    side's environment on the same Redis, and the state events it sees."""
    worker = dcore_celery_worker(["examples.orders.pipeline", "dcore_it_orders"],
                           pythonpath=[str(HERE)], event_bus="it_orders_bus",
                           lease_ttl=LEASE, recovery_interval=1.0)  # fmt: skip
    sender = DcoreSettings(**{**worker.settings.model_dump(), "event_bus": "redis"})
    seen = Seen()
    with Environment(sender) as env, use_environment(env):
        subscriptions = [env.events.subscribe(topic, seen) for topic in TOPICS]
        try:
            yield worker, env, seen
        finally:
            for subscription in subscriptions:
                subscription.close()


def _place(order: Order) -> str:
    return str(order_pipeline(order).run().job_id)


def _finished(env: Environment, job_id: str, worker: Any) -> JobRecord:
    record = wait_terminal(env, [job_id], TIMEOUT).get(job_id)
    assert record is not None, f"job {job_id} was never recorded\n{worker.log_tail()}"
    assert record.state in (JobState.DEAD, JobState.SUCCEEDED), (
        f"job {job_id} did not finish: {record}\n{worker.log_tail()}"
    )
    return record


def _wait(done: Callable[[], bool], what: str, worker: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; worker log:\n{worker.log_tail()}")
        time.sleep(0.05)  # polling another process's progress: nothing to wait on here


def _letters(env: Environment, job_id: str) -> list[dict[str, Any]]:
    return [
        e.payload
        for e in env.events.entries(env.settings.dlq_topic)
        if e.payload.get("job_id") == job_id
    ]


def _states(record: JobRecord) -> list[str]:
    return [str(t.state) for t in record.history]


def test_a_rejected_order_is_undone_in_reverse_order_once_each(shop: Any) -> None:
    worker, env, seen = shop
    job_id = _place(Order(order_id="o-1", amount_cents=500, reject_at="notify"))
    record = _finished(env, job_id, worker)

    assert record.state is JobState.DEAD
    assert record.attempt == 2  # the order pipeline tries twice
    assert world.ledger(env, "o-1") == ["reserve", "charge", "receipt", *UNDONE]
    # both attempts asked for the steps (their keys made them happen once); the undo
    # was asked once each
    assert world.asked(env, "o-1") == {
        "reserve": 2,
        "charge": 2,
        "receipt": 2,
        "delete_receipt": 1,
        "refund": 1,
        "release": 1,
    }
    assert (record.completed, record.compensated) == ([RESERVE, CHARGE, RECEIPT],) * 2
    assert _states(record)[-3:] == ["FAILED", "COMPENSATING", "DEAD"]
    [letter] = _letters(env, job_id)
    assert letter["compensated"] is True
    assert letter["compensation_error"] is None
    assert "the notification service rejected order o-1" in letter["error"]

    seen.wait_for(events.JOB_COMPENSATED)
    seen.wait_for(events.JOB_DEAD)
    assert [e["stage"] for e in seen.of(events.STAGE_COMPENSATED)] == [
        "store_receipt#3",
        "charge_order#2",
        "reserve_stock#1",
    ]
    assert [e["job_id"] for e in seen.of(events.JOB_COMPENSATING)] == [job_id]
    [compensated] = seen.of(events.JOB_COMPENSATED)
    assert compensated == {
        "job_id": job_id,
        "stages": ["reserve_stock#1", "charge_order#2", "store_receipt#3"],
    }
    assert [e["job_id"] for e in seen.of(events.JOB_DEAD)] == [job_id]


@pytest.mark.parametrize("kill", ["pool child", "whole worker"])
def test_a_worker_killed_while_undoing_is_taken_over_and_each_undo_happens_once(
    shop: Any, kill: str
) -> None:
    worker, env, seen = shop
    # the refund lands, then the payment service hangs before the worker can record it
    world.plan(env, "o-2", "hang-after:refund")
    job_id = _place(Order(order_id="o-2", amount_cents=900, reject_at="notify"))

    def hanging_in_the_refund() -> bool:
        record = env.jobs.get(job_id) if world.hanging_pid(env, "o-2") else None
        return (
            record is not None
            and record.state is JobState.COMPENSATING
            and (record.compensated == [RECEIPT])
        )

    _wait(hanging_in_the_refund, "the compensation to hang in the refund", worker)
    pid = world.hanging_pid(env, "o-2")
    assert pid is not None
    if kill == "pool child":  # its message comes back at once (reject_on_worker_lost)
        os.kill(pid, signal.SIGKILL)
    else:  # its message stays unacknowledged: the restarted worker's sweep re-sends it
        worker.restart()
    record = _finished(env, job_id, worker)

    assert record.state is JobState.DEAD
    assert world.ledger(env, "o-2") == ["reserve", "charge", "receipt", *UNDONE]
    # the receipt was not deleted again; the refund the dead worker made but never
    # recorded was asked again, and its idempotency key made it happen once
    undo_asked = {k: v for k, v in world.asked(env, "o-2").items() if k in UNDONE}
    assert undo_asked == {"delete_receipt": 1, "refund": 2, "release": 1}
    assert record.compensated == [RESERVE, CHARGE, RECEIPT]
    assert record.lost >= 1
    states = _states(record)
    assert states[states.index("COMPENSATING") :] == ["COMPENSATING", "COMPENSATING", "DEAD"]
    assert "compensation taken over" in [t.note for t in record.history]
    [letter] = _letters(env, job_id)
    assert letter["compensated"] is True
    # the delivery that took over knows why the job failed
    assert letter["error"] == "RuntimeError: the notification service rejected order o-2"

    seen.wait_for(events.JOB_COMPENSATED)
    assert [e["stage"] for e in seen.of(events.STAGE_COMPENSATED)] == [
        "store_receipt#3",
        "charge_order#2",
        "reserve_stock#1",
    ]
    # the compensation started once; the take-over resumed it
    assert [e["job_id"] for e in seen.of(events.JOB_COMPENSATING)] == [job_id]
    assert len(seen.of(events.JOB_COMPENSATED)) == 1


def test_an_undo_that_fails_for_good_dead_letters_with_both_errors(shop: Any) -> None:
    worker, env, seen = shop
    world.plan(env, "o-3", "fail:refund")
    job_id = _place(Order(order_id="o-3", amount_cents=300, reject_at="notify"))
    record = _finished(env, job_id, worker)

    assert record.state is JobState.DEAD
    # the receipt was deleted; the refund was tried under its retry policy (3 times)
    # and failed; the reservation, which may depend on it, was left alone
    assert world.ledger(env, "o-3") == ["reserve", "charge", "receipt", "delete_receipt"]
    asked = world.asked(env, "o-3")
    assert (asked["refund"], "release" in asked) == (3, False)
    assert (record.completed, record.compensated) == ([RESERVE, CHARGE, RECEIPT], [RECEIPT])
    [letter] = _letters(env, job_id)
    assert letter["compensated"] is False
    assert "RuntimeError: the notification service rejected order o-3" in letter["error"]
    assert (
        "compensation of stage charge_order#2 failed: ConnectionError: the service "
        "refused refund for order o-3"
    ) in letter["error"]
    assert letter["compensation_error"].startswith("compensation of stage charge_order#2")

    seen.wait_for(events.JOB_DEAD)
    assert [e["stage"] for e in seen.of(events.STAGE_COMPENSATED)] == ["store_receipt#3"]
    assert seen.of(events.JOB_COMPENSATED) == []


def test_an_order_that_goes_through_undoes_nothing(shop: Any) -> None:
    worker, env, seen = shop
    job_id = _place(Order(order_id="o-4", amount_cents=700))
    record = _finished(env, job_id, worker)

    assert record.state is JobState.SUCCEEDED
    assert world.ledger(env, "o-4") == ["reserve", "charge", "receipt", "notify"]
    assert world.asked(env, "o-4") == dict.fromkeys(["reserve", "charge", "receipt", "notify"], 1)
    assert (record.completed, record.compensated) == ([RESERVE, CHARGE, RECEIPT], [])
    assert "COMPENSATING" not in _states(record)
    assert _letters(env, job_id) == []
    seen.wait_for(events.JOB_SUCCEEDED)
    assert seen.of(events.JOB_COMPENSATING) == seen.of(events.STAGE_COMPENSATED) == []


def test_a_step_taken_before_the_hand_off_is_undone_by_the_worker(shop: Any) -> None:
    """The stock is reserved in the request (before the Dispatch); the worker that
    undoes the rest of the order releases it too."""
    worker, env, seen = shop
    order = Order(order_id="o-5", amount_cents=100, reject_at="notify")
    pipeline = order.create_pipeline(core_fn=placed)
    pipeline.chain(Execute, plugin="reserve_stock")
    pipeline.chain(Dispatch, plugin="celery", retry=RetryPolicy(attempts=1))
    for step in ("charge_order", "store_receipt", "notify_customer"):
        pipeline.chain(Execute, plugin=step)
    job_id = str(pipeline.run().job_id)
    record = _finished(env, job_id, worker)

    assert record.state is JobState.DEAD
    assert world.ledger(env, "o-5") == ["reserve", "charge", "receipt", *UNDONE]
    # pipeline indexes: reserve_stock 0, the Dispatch 1, charge 2, receipt 3
    assert (record.completed, record.compensated) == ([0, 2, 3], [0, 2, 3])
    [letter] = _letters(env, job_id)
    assert letter["compensated"] is True
    seen.wait_for(events.JOB_COMPENSATED)
    assert [e["stage"] for e in seen.of(events.STAGE_COMPENSATED)] == [
        "store_receipt#3",
        "charge_order#2",
        "reserve_stock#0",
    ]
