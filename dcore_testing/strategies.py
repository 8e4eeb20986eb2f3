"""Hypothesis strategies for pipelines, contexts, fault plans and schedules.

::

    @given(contexts(UploadContext), fault_plans(stages=["charge"]), schedules())
    def test_no_job_lost(ctx, plan, schedule): ...

Hypothesis is imported here (not in ``dcore_testing``), so only tests that use the
strategies pay for it.
"""

from __future__ import annotations

import random
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from dcore import Dispatch, Execute, Pipeline, PipelineContext, StageRef
from dcore_testing.sim.chooser import ScheduleChooser, preemption_points
from dcore_testing.sim.faults import (
    Crash,
    Delay,
    Drop,
    Duplicate,
    FaultPlan,
    Partition,
    ServiceError,
    WebCrash,
)

__all__ = ["contexts", "fault_plans", "pipelines", "schedules", "seeds"]

_FAULT_KINDS = (
    "crash",
    "crash_op",
    "duplicate",
    "delay",
    "drop",
    "service_error",
    "ambiguous",
    "partition",
    "web_crash",
)
_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=16)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``SimEnvironment(seed=...)``."""
    return st.integers(0, 2**32 - 1)


def schedules(horizon: int = 64, max_preemptions: int = 8) -> st.SearchStrategy[ScheduleChooser]:
    """Interleavings as choosers (pass as ``SimEnvironment(chooser=...)``): a few
    preemption points that shrink to fewer and earlier; drawn faults follow a drawn seed."""
    if horizon < 1 or max_preemptions < 0:
        raise ValueError(
            f"schedules() needs horizon >= 1 and max_preemptions >= 0, got "
            f"horizon={horizon!r}, max_preemptions={max_preemptions!r}"
        )
    return st.builds(
        lambda points, seed: ScheduleChooser(dict(points), random.Random(seed)),
        preemption_points(horizon, max_preemptions),
        st.integers(0, 2**32 - 1),
    )


# -- contexts -----------------------------------------------------------------------------
def _for_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is str:
        return _TEXT
    if annotation is bytes:
        return st.binary(max_size=64)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-(2**31), 2**31)
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    if origin in (list, Sequence):
        return st.lists(_for_annotation(args[0] if args else str), max_size=4)
    if origin is dict:
        key, value = args or (str, str)
        return st.dictionaries(_for_annotation(key), _for_annotation(value), max_size=4)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_for_annotation(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if annotation is type(None):
        return st.none()
    return st.from_type(annotation)


def contexts(
    context_type: type[PipelineContext], **fields: Any
) -> st.SearchStrategy[PipelineContext]:
    """Contexts of ``context_type`` with every data field drawn from its annotation.

    ``fields`` pin a field to a value or to a strategy of your own. ``job_id``,
    ``errors`` and runtime-only fields keep their defaults."""
    if not (isinstance(context_type, type) and issubclass(context_type, PipelineContext)):
        raise TypeError(f"contexts() takes a PipelineContext subclass, got {context_type!r}")
    known = context_type.model_fields
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise TypeError(
            f"contexts({context_type.__name__}): no field(s) {', '.join(unknown)}; "
            f"fields: {', '.join(known)}"
        )
    skip = {"job_id", "errors", *context_type.runtime_fields()}
    drawn: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in known.items():
        if name in fields:
            value = fields[name]
            drawn[name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
        elif name not in skip and info.is_required():
            drawn[name] = _for_annotation(info.annotation)
        elif name not in skip:
            drawn[name] = st.one_of(
                st.just(info.get_default(call_default_factory=True)),
                _for_annotation(info.annotation),
            )
    return st.fixed_dictionaries(drawn).map(lambda data: context_type(**data))


# -- pipelines ----------------------------------------------------------------------------
def _ref(stage: str | StageRef) -> StageRef:
    if isinstance(stage, StageRef):
        return stage
    if isinstance(stage, str) and stage:
        return StageRef(Execute, stage, {})
    raise TypeError(
        f"a stage vocabulary holds plugin names or stage references like "
        f"Execute('logging'), got {stage!r}"
    )


def pipelines(
    context: PipelineContext | st.SearchStrategy[PipelineContext],
    core_fn: Callable[[Any], Any],
    vocabulary: Sequence[str | StageRef],
    *,
    dispatch: str | StageRef | None = "schedule_job",
    min_stages: int = 1,
    max_stages: int = 5,
) -> st.SearchStrategy[Pipeline[Any]]:
    """Pipelines of ``min_stages..max_stages`` Execute stages drawn (with repeats) from
    ``vocabulary``, with the ``dispatch`` stage at a drawn position (None: no Dispatch).
    Not yet run, so not frozen."""
    refs = [_ref(s) for s in vocabulary]
    if not refs:
        raise ValueError("pipelines() needs a non-empty stage vocabulary")
    if not 0 <= min_stages <= max_stages:
        raise ValueError(
            f"pipelines() needs 0 <= min_stages <= max_stages, got {min_stages}..{max_stages}"
        )
    dispatch_ref = None
    if dispatch is not None:
        dispatch_ref = (
            dispatch if isinstance(dispatch, StageRef) else StageRef(Dispatch, dispatch, {})
        )
    contexts_ = context if isinstance(context, st.SearchStrategy) else st.just(context)

    @st.composite
    def build(draw: st.DrawFn) -> Pipeline[Any]:
        ctx = draw(contexts_)
        chosen = draw(st.lists(st.sampled_from(refs), min_size=min_stages, max_size=max_stages))
        if dispatch_ref is not None:
            chosen.insert(draw(st.integers(0, len(chosen))), dispatch_ref)
        pipeline: Pipeline[Any] = Pipeline(ctx, core_fn)
        for ref in chosen:
            pipeline.chain(ref)
        return pipeline

    return build()


# -- faults -------------------------------------------------------------------------------
def fault_plans(
    kinds: Sequence[str] = ("crash", "duplicate", "delay"),
    *,
    stages: Sequence[str] = (),
    ops: Sequence[str] = ("storage.put", "storage.get"),
    jobs: int = 1,
    workers: int = 2,
    max_faults: int = 3,
    probabilities: bool = False,
) -> st.SearchStrategy[FaultPlan]:
    """Fault plans of up to ``max_faults`` explicit faults of the given ``kinds`` against
    jobs ``1..jobs``: ``crash`` at one of ``stages``; ``crash_op`` at one of ``ops``,
    before or after the call, at its 1st to 3rd time; ``service_error`` and
    ``ambiguous`` (applied, then the reply lost) at one of ``ops``; ``partition`` of a
    worker from a service for a stretch of virtual time; ``web_crash`` of the web
    process after a response or after recording a job; and the dispatch faults
    ``duplicate``, ``delay``, ``drop``. With ``probabilities``, drawn per-opportunity
    probabilities as well. Shrinks towards the empty plan (and towards the first job,
    the first call, a crash before the call)."""
    unknown = sorted(set(kinds) - set(_FAULT_KINDS))
    if unknown:
        raise ValueError(
            f"fault_plans(kinds=...): unknown kind(s) {', '.join(unknown)}; "
            f"known: {', '.join(_FAULT_KINDS)}"
        )
    if jobs < 1 or max_faults < 0 or workers < 1:
        raise ValueError(
            f"fault_plans() needs jobs >= 1, workers >= 1 and max_faults >= 0, "
            f"got jobs={jobs!r}, workers={workers!r}, max_faults={max_faults!r}"
        )
    job = st.one_of(st.none(), st.integers(1, jobs))
    op = st.sampled_from(list(ops))
    nth = st.integers(1, 3)
    options: list[st.SearchStrategy[Any]] = []
    if "crash" in kinds:
        where = st.sampled_from(list(stages)) if stages else st.none()
        options.append(
            st.builds(Crash, job=job, stage=where, when=st.sampled_from(["enter", "exit"]))
        )
    if "crash_op" in kinds:
        options.append(
            st.builds(Crash, job=job, op=op, nth=nth, when=st.sampled_from(["before", "after"]))
        )
    if "duplicate" in kinds:
        options.append(st.builds(Duplicate, job=job))
    if "delay" in kinds:
        options.append(st.builds(Delay, job=job, seconds=st.sampled_from([0.5, 5.0, 60.0])))
    if "drop" in kinds:
        options.append(st.builds(Drop, job=job))
    if "service_error" in kinds:
        options.append(st.builds(ServiceError, job=job, op=op, nth=nth))
    if "ambiguous" in kinds:
        options.append(st.builds(ServiceError, job=job, op=op, nth=nth, applied=st.just(True)))
    if "partition" in kinds:
        options.append(
            st.builds(
                Partition,
                service=st.sampled_from(["jobs", "storage", "*"]),
                workers=st.lists(st.integers(1, workers), max_size=1, unique=True).map(tuple),
                start=st.sampled_from([0.0, 1.0, 10.0]),
                seconds=st.sampled_from([5.0, 30.0, 60.0]),
            )
        )
    if "web_crash" in kinds:
        options.append(
            st.builds(WebCrash, when=st.sampled_from(["after_response", "after_record"]))
        )
    explicit = st.lists(st.one_of(options), max_size=max_faults) if options else st.just([])
    chance = st.sampled_from([0.0, 0.05, 0.2])
    if not probabilities:
        return explicit.map(lambda faults: FaultPlan(*faults))
    drawn = {
        kind: chance if kind in kinds else st.just(0.0)
        for kind in ("crash", "duplicate", "delay", "drop", "service_error", "ambiguous")
    }
    drawn["crash_op"] = chance if "crash_op" in kinds else st.just(0.0)
    return st.builds(lambda faults, **p: FaultPlan(*faults, **p), explicit, **drawn)
