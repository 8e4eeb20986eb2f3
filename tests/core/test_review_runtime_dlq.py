# mypy: disable-error-code="abstract,call-arg"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""A worker's dead letter carries the message it was delivered, not one rebuilt from the
context as the failed run left it (else a replay starts from half-done work)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dcore import Dispatch, Environment, Execute, JobMessage, NextFn, run_message
from tests.core.dcore_roundtrip_support import rt


class Boom(Execute[Any]):
    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        raise RuntimeError("the store is full")


@pytest.fixture
def failing_message(dcore_env: Environment) -> str:
    """``rt_capture ┆ rt_mark(after) → boom → summarize``: the worker changes the context
    (``steps``) before failing."""
    dcore_env.registry.register("review_boom", Boom, replace=True)
    dcore_env.memory_services_shared = True  # its worker is this process
    rt.Capture.captured.clear()
    ctx = rt.RoundTripContext(name="m")
    pipeline = ctx.create_pipeline(rt.summarize)
    pipeline.chain(Dispatch("rt_capture")).chain(Execute("rt_mark", tag="after"))
    pipeline.chain(Execute("review_boom"))
    pipeline.run()
    [(continuation, shipped)] = rt.Capture.captured
    return continuation.to_message(shipped, attempt=2).to_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("form", ["str", "JobMessage"])
def test_dead_letter_holds_the_delivered_message(
    dcore_env: Environment, failing_message: str, form: str
) -> None:
    raw: Any = failing_message if form == "str" else JobMessage.parse(failing_message)

    with pytest.raises(RuntimeError, match="the store is full"):
        run_message(raw, final=True)

    [entry] = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    dead = json.loads(entry.payload["message"])
    sent = json.loads(failing_message)
    assert dead["context"]["data"]["steps"] == []  # not ["after"]: the run's leftovers
    assert dead == sent
