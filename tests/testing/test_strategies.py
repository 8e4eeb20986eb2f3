"""Strategies draw valid pipelines, contexts, fault plans and schedules, and reject bad
arguments by name."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore import Dispatch, Execute, Pipeline, PipelineContext, StageRef
from dcore_testing.sim import FaultPlan, ScheduleChooser, SimEnvironment
from dcore_testing.strategies import contexts, fault_plans, pipelines, schedules, seeds


class OrderContext(PipelineContext):
    order_id: str
    quantity: int
    tags: list[str] = []
    note: str | None = None


def _core(ctx: OrderContext) -> str:
    return ctx.order_id


FAST = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@FAST
@given(contexts(OrderContext, quantity=st.integers(1, 5)))
def test_contexts_fill_every_field_from_its_type(ctx: OrderContext) -> None:
    assert isinstance(ctx, OrderContext)
    assert isinstance(ctx.order_id, str)
    assert ctx.order_id
    assert 1 <= ctx.quantity <= 5
    assert OrderContext.from_envelope(ctx.to_envelope()) == ctx


def test_contexts_name_an_unknown_field() -> None:
    with pytest.raises(TypeError, match=r"no field\(s\) colour; fields: job_id"):
        contexts(OrderContext, colour="red")
    with pytest.raises(TypeError, match="takes a PipelineContext subclass"):
        contexts(dict)  # type: ignore[arg-type]


@FAST
@given(
    pipelines(
        contexts(OrderContext),
        _core,
        ["logging", StageRef(Execute, "logging", {"level": "DEBUG"})],
        max_stages=3,
    )
)
def test_pipelines_have_one_dispatch_and_stages_from_the_vocabulary(
    pipeline: Pipeline[OrderContext],
) -> None:
    kinds = [ref.interface for ref in pipeline.stages]
    assert kinds.count(Dispatch) == 1
    assert {ref.plugin for ref in pipeline.stages} <= {"logging", "schedule_job"}
    with SimEnvironment(seed=0):
        pipeline.run()


def test_pipelines_reject_an_empty_vocabulary() -> None:
    with pytest.raises(ValueError, match="non-empty stage vocabulary"):
        pipelines(OrderContext(order_id="o", quantity=1), _core, [])


@FAST
@given(fault_plans(("crash", "drop", "service_error"), stages=["a"], jobs=2, probabilities=True))
def test_fault_plans_draw_only_the_kinds_asked_for(plan: FaultPlan) -> None:
    assert {f.kind for f in plan.faults} <= {"crash", "drop", "service_error"}
    assert plan.duplicate == plan.delay == 0.0
    assert all(getattr(f, "job", None) in (None, 1, 2) for f in plan.faults)


def test_fault_plans_name_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown kind\\(s\\) flood; known: crash"):
        fault_plans(("flood",))


@FAST
@given(schedules(horizon=8), seeds())
def test_schedules_make_choosers_a_simulation_accepts(chooser: ScheduleChooser, seed: int) -> None:
    assert all(0 <= k < 8 for k in chooser.schedule)
    with SimEnvironment(seed=seed % 100, chooser=chooser) as sim:
        sim.spawn(lambda: sim.clock.sleep(1))
        sim.run_until_idle()
