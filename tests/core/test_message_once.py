"""A remote hand-off serializes its context once: the job record, the dispatcher and a
dead letter all use the same message."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import Dispatch, Environment, JobHandle, PipelineContext, core_function
from dcore._core.continuation import Continuation


class BigContext(PipelineContext):
    blob: bytes = b"x" * 16384


@core_function
def big_core(ctx: BigContext) -> int:
    return len(ctx.blob)


class Shipper(Dispatch[Any]):
    remote = True
    shipped: list[str] = []

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        type(self).shipped.append(next_fn.to_message(context).to_json())
        return JobHandle(job_id=context.job_id)


def test_the_context_is_serialized_once_per_hand_off(
    dcore_env: Environment, dcore_registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dcore_registry.register("shipper", Shipper, replace=True)
    dcore_env.memory_services_shared = True  # its worker is this process
    Shipper.shipped.clear()
    calls: list[str] = []
    original = BigContext.to_envelope

    def counting(self: BigContext) -> dict[str, Any]:
        calls.append(self.job_id)
        return original(self)

    monkeypatch.setattr(BigContext, "to_envelope", counting)
    ctx = BigContext()
    pipeline = ctx.create_pipeline(big_core).chain(Dispatch, plugin="shipper")

    pipeline.run()

    # check_remote validates it (1), then one message for the record and the dispatcher
    assert len(calls) == 2
    assert dcore_env.jobs.get(ctx.job_id).message == Shipper.shipped[0]
