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


class TextShipper(Shipper):
    """Ships the continuation's JSON text, as the celery dispatcher does."""

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        type(self).shipped.append(next_fn.to_json(context))
        return JobHandle(job_id=context.job_id)


def test_the_message_text_is_serialized_once_and_per_context(
    dcore_env: Environment, dcore_registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record and the dispatcher get one JSON text; the next context (another run of
    the same pipeline, or a context edited into a new object) gets its own."""
    from dcore._core.message import JobMessage

    dcore_registry.register("text_shipper", TextShipper, replace=True)
    dcore_env.memory_services_shared = True
    TextShipper.shipped.clear()
    dumps: list[str] = []
    original = JobMessage.to_json

    def counting(self: JobMessage) -> str:
        dumps.append(self.job_id)
        return original(self)

    monkeypatch.setattr(JobMessage, "to_json", counting)
    first, second = BigContext(blob=b"a"), BigContext(blob=b"b")
    pipeline = first.create_pipeline(big_core).chain(Dispatch, plugin="text_shipper")

    pipeline.run(first)
    pipeline.run(second)

    assert dumps == [first.job_id, second.job_id]
    for ctx, shipped in zip((first, second), TextShipper.shipped, strict=True):
        assert dcore_env.jobs.get(ctx.job_id).message == shipped
        rebuilt = BigContext.model_validate(JobMessage.parse(shipped).context.data)
        assert (rebuilt.job_id, rebuilt.blob) == (ctx.job_id, ctx.blob)
