"""Assembling a pipeline and running it.

``chain()`` collects stages and checks each at once (known plugin, valid options, at
most one Dispatch; :mod:`dcore._core.stagecheck`, whose answers are kept per registry
generation). The first ``run()`` freezes the pipeline: its stages are compiled (or the
chain compiled before for the same stages is reused), bound to this pipeline's plugin
instances and core function, and folded into nested calls (:mod:`dcore._core.chain`);
later ``chain()`` calls raise.

Semantics: stage *i* gets ``next_fn`` running stages *i+1..n* and then ``core_fn``; the
value ``core_fn`` returns flows back up to ``run()``. Stages before the Dispatch run in
the caller; the Dispatch gets a :class:`Continuation` for the rest and ``run()`` returns
what the Dispatch returned.

Plugin instances belong to one pipeline: each pipeline builds its own at its first
``run()`` and reuses them for every later run, unless the plugin class declares
``shareable = True`` (then every pipeline compiled the same way uses one instance).
:meth:`Pipeline.copy` gives a pipeline built once per process a fresh twin per request.

``chain()`` checks against the registry current at a pipeline's first ``chain()``;
``run()`` compiles in the registry current then, so a plugin replaced in between is the
one that runs (its options checked again).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Self

from pydantic import ValidationError

from dcore._core import stagecheck
from dcore._core.chain import BoundChain, compiled
from dcore._core.contextbase import ContextBase
from dcore._core.continuation import Continuation
from dcore._core.environment import Environment, current_environment
from dcore._core.loops import CALLER_LOOP
from dcore._core.message import StageSpec, core_function_name
from dcore._core.retry import RetryPolicy
from dcore._core.runner import Call, Stage, origin_of
from dcore._core.saga import (
    compensates,
    tracking,
    undo_failed_run,
)
from dcore._plugins.interfaces import ContextT, StageRef
from dcore._plugins.registry import interface_by_name
from dcore.errors import (
    AsyncStageError,
    ContextSerializationError,
    DispatchError,
    MessageError,
    PipelineDefinitionError,
    PluginError,
)

# Continuation, Stage and origin_of are re-exported: they are part of this module's API
if TYPE_CHECKING:
    from dcore._core.context import PipelineContext

__all__ = ["Continuation", "Pipeline", "Stage", "origin_of"]


class Pipeline(Generic[ContextT]):
    """A chain of named plugin stages ending in ``core_fn``. Build, then ``run()``."""

    __slots__ = (
        "_answers", "_bound", "_cacheable", "_checked", "_compensable", "_dispatch_at",
        "_dispatcher", "_entry", "_environment", "_freeze_lock", "context", "core_fn",
    )  # fmt: skip

    def __init__(
        self,
        context: ContextT | None,
        core_fn: Callable[[ContextT], Any],
        *,
        environment: Environment | None = None,
    ) -> None:
        if not callable(core_fn):
            raise PipelineDefinitionError(f"core_fn must be callable, got {core_fn!r}")
        if _is_async_function(core_fn):
            raise PipelineDefinitionError(
                f"core_fn {getattr(core_fn, '__qualname__', core_fn)!r} is async; a core "
                "function is a plain one. Do the awaiting in an async stage (async def "
                "execute) before it, and run the pipeline with await pipeline.arun()"
            )
        if context is not None and not isinstance(context, ContextBase):
            raise PipelineDefinitionError(
                f"a pipeline runs over a PipelineContext, got {type(context).__name__}"
            )
        self.context = context
        self.core_fn = core_fn
        self._environment = environment
        # what chain() checks stages against: the registry current at the first chain()
        # (run() compiles in the registry current then, re-checking what changed)
        self._answers: stagecheck.Answers | None = None
        self._checked: list[stagecheck.CheckedStage] = []
        self._cacheable = True  # every stage's check was kept: the chain may be shared
        self._dispatch_at: int | None = None
        self._bound: BoundChain | None = None
        self._dispatcher: Any = None  # the bound Dispatch instance, if any
        self._compensable = False  # a bound stage can undo its work (see dcore._core.saga)
        self._entry: Call | None = None
        self._freeze_lock = threading.Lock()

    # -- definition ---------------------------------------------------------------------
    @property
    def environment(self) -> Environment:
        bound = self._bound
        if bound is not None:
            return bound.env
        return self._environment or current_environment()

    def chain(
        self,
        stage: type | StageRef,
        plugin: str | None = None,
        *,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """Append a stage: ``chain(Execute, plugin="x", **opts)`` or ``chain(Execute("x"))``.

        ``retry`` is a RetryPolicy or its fields as a mapping (``{"attempts": 3}``)."""
        answers = self._answers
        if (
            answers is None
            or self._bound is not None
            or answers.generation != answers.registry.generation
        ):
            answers = self._current_answers(stage, plugin)
        # the key of the answer: interface, plugin, retry policy unless None, then name,
        # type and value of each option (see stagecheck); chain(Execute("x", **options))
        # is keyed as chain(Execute, plugin="x", **options). Built inline: it is most of
        # what chaining a known stage costs
        if type(plugin) is str:
            key_options: Mapping[str, Any] = options
            key: stagecheck.StageKey = (stage, plugin) if retry is None else (stage, plugin, retry)
        elif type(stage) is StageRef and plugin is None and not options:
            key_options = stage.options
            policy = stage.retry if retry is None else retry
            key = (
                (stage.interface, stage.plugin)
                if policy is None
                else (stage.interface, stage.plugin, policy)
            )
        else:  # not a stage: the full check explains
            key_options = {}
            key = ()
        for name in key_options:
            value = key_options[name]
            key += (name, type(value), value)
        try:
            checked = answers.entries.get(key)
        except TypeError:  # an unhashable part (a retry mapping, a list option): not kept
            checked = None
        if checked is None or checked.is_dispatch:
            checked = self._check(answers, checked, key, stage, plugin, retry, options)
        self._checked.append(checked)
        return self

    def _current_answers(self, stage: type | StageRef, plugin: str | None) -> stagecheck.Answers:
        """What chain() looks stages up in: the answers of the registry current at the
        first chain(), renewed when it changes. Refuses a frozen pipeline."""
        if self._bound is not None:
            name = plugin or (stage.plugin if isinstance(stage, StageRef) else stage)
            raise PipelineDefinitionError(
                f"cannot chain {name!r}: the pipeline has already run and is frozen; "
                "build a new pipeline (ctx.create_pipeline) to change it"
            )
        answers = self._answers
        registry = (
            (self._environment or current_environment()).registry
            if answers is None
            else answers.registry
        )
        answers = self._answers = stagecheck.answers(registry)
        return answers

    def _check(
        self,
        answers: stagecheck.Answers,
        known: stagecheck.CheckedStage | None,
        key: stagecheck.StageKey,
        stage: type | StageRef,
        plugin: str | None,
        retry: RetryPolicy | Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> stagecheck.CheckedStage:
        """The full check of a stage not ``known`` (in the order its errors have always
        come: the call's form, a second Dispatch, the plugin, its options), and the
        single-Dispatch rule for a known one."""
        if known is None:
            ref = stagecheck.stage_ref(stage, plugin, retry, options)
            if stagecheck.is_dispatch(ref.interface):
                self._refuse_second_dispatch(ref)
            known = answers.check(ref, key)
            self._cacheable = self._cacheable and known.cacheable
        elif known.is_dispatch:
            self._refuse_second_dispatch(known.ref)
        if known.is_dispatch:
            self._dispatch_at = len(self._checked)
        return known

    def _refuse_second_dispatch(self, ref: StageRef) -> None:
        first = self._dispatch_at
        if first is not None:
            name = self._checked[first].ref.plugin
            raise PipelineDefinitionError(
                f"a pipeline takes at most one Dispatch: {ref.plugin!r} (stage "
                f"{len(self._checked)}) follows {name!r} (stage {first}); everything "
                f"after {name!r} already runs in the background"
            )

    @property
    def _refs(self) -> list[StageRef]:
        return [c.ref for c in self._checked]

    @property
    def stages(self) -> list[StageRef]:
        return self._refs

    @property
    def dispatch_index(self) -> int | None:
        return self._dispatch_at

    # -- description --------------------------------------------------------------------
    def describe(self) -> str:
        """``[sync] a → b ⇒ dispatch(x) ┆ async ┆ [background] c → core``."""
        from dcore._core.describe import describe

        return describe(self._refs, self._undoing())

    def to_mermaid(self) -> str:
        from dcore._core.describe import to_mermaid

        return to_mermaid(self._refs, self._undoing())

    def _undoing(self) -> set[int]:
        """The indexes of the stages that can undo their work."""
        return {i for i, checked in enumerate(self._checked) if compensates(checked.cls)}

    # -- running --------------------------------------------------------------------------
    def run(self, context: ContextT | None = None) -> Any:
        """Run over ``context`` (default: the one the pipeline was created with)."""
        ctx = self._context_for(context, "run()")
        entry = self._entry
        if entry is None:
            bound = self._freeze()
            if bound.compiled.async_stages:
                self._refuse_async(bound)
            entry = self._entry = bound.call_from(0)
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.is_remote():
            self.check_remote(ctx)
        if not self._compensable:
            return entry(ctx)
        saga = self._freeze().saga(ctx)
        assert saga is not None
        with tracking() as done:
            try:
                return entry(ctx)
            except Exception as exc:
                # the sync part failed: undo what it completed (a job that ended DEAD
                # was undone by its own delivery already)
                undo_failed_run(saga, done, exc)
                raise

    async def arun(self, context: ContextT | None = None) -> Any:
        """``run()`` for async code: ``await pipeline.arun(ctx)`` runs the part before
        the hand-off without blocking the event loop (async stages awaited on it, plain
        ones and the Dispatch's hand-off in a worker thread) and returns what ``run()``
        would. Stages with ``async def execute`` need it; it runs any pipeline."""
        ctx = self._context_for(context, "arun()")
        bound = self._freeze()
        entry = bound.acall_from(0, offload=bound.env.async_offload)
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.is_remote():
            self.check_remote(ctx)
        if not self._compensable:
            return await entry(ctx)
        saga = bound.saga(ctx)
        assert saga is not None
        with tracking() as done:
            try:
                return await entry(ctx)
            except Exception as exc:  # as run() does, in a thread: undoing may block
                if bound.env.async_offload:
                    token = CALLER_LOOP.set(asyncio.get_running_loop())
                    try:
                        await asyncio.to_thread(undo_failed_run, saga, done, exc)
                    finally:
                        CALLER_LOOP.reset(token)
                else:
                    undo_failed_run(saga, done, exc)
                raise

    def _context_for(self, context: ContextT | None, call: str) -> PipelineContext:
        ctx = context if context is not None else self.context
        # the context the pipeline was created with was checked then
        if (ctx is None or ctx is not self.context) and not isinstance(ctx, ContextBase):
            raise PipelineDefinitionError(
                f"{call} needs a PipelineContext, got {type(ctx).__name__}"
            )
        return ctx

    def _refuse_async(self, bound: BoundChain) -> None:
        """AsyncStageError when an async stage would run before the hand-off."""
        end = self._dispatch_at
        stage = bound.compiled.first_async(0, end)
        if stage is None:
            return
        where = "before the Dispatch" if end is not None else "(there is no Dispatch)"
        raise AsyncStageError(
            f"stage {stage.index} ({stage.ref.plugin!r}) has an async execute() and runs "
            f"in the caller {where}: run() cannot await it. Use `await pipeline.arun()` "
            "from async code, or asyncio.run(pipeline.arun()) from sync code"
        )

    def _freeze(self) -> BoundChain:
        """This pipeline's bound chain, made at the first run (or continuation)."""
        bound = self._bound
        if bound is not None:
            return bound
        with self._freeze_lock:  # built once, however many threads run it first
            if self._bound is None:
                env = self._environment or current_environment()
                bound = compiled(env, tuple(self._checked), self._cacheable).bind(self.core_fn)
                self._dispatcher = bound.dispatcher
                self._compensable = bound.compiled.compensable
                self._bound = bound
            return self._bound

    # -- remote hand-off ------------------------------------------------------------------
    def check_remote(self, ctx: PipelineContext) -> None:
        """Everything a remote hand-off needs, checked before any stage runs."""
        _check_shared_job_store(self.environment)
        name = type(ctx).__qualname__
        if "<locals>" in name:
            raise ContextSerializationError(
                f"context class {name} is defined inside a function; a worker cannot "
                "resolve it. Define it at module level"
            )
        ctx.to_envelope()
        core_function_name(self.core_fn)
        for i, ref in enumerate(self._refs):
            try:
                json.dumps(dict(ref.options))
            except (TypeError, ValueError) as exc:
                raise ContextSerializationError(
                    f"options of stage {i} ({ref.plugin!r}) are not JSON-serializable for a "
                    f"remote hand-off: {exc}. Pass plain values (str, int, lists, dicts)"
                ) from None

    # -- building from a message -------------------------------------------------------------
    @classmethod
    def from_spec(
        cls,
        spec: Sequence[StageSpec],
        core_fn: Callable[[Any], Any],
        *,
        environment: Environment | None = None,
    ) -> Pipeline[Any]:
        """Rebuild a pipeline from a message's spec; MessageError for what cannot be built."""
        pipeline: Pipeline[Any] = cls(None, core_fn, environment=environment)
        for i, item in enumerate(spec):
            try:
                interface = interface_by_name(item.interface)
                retry = RetryPolicy.model_validate(item.retry) if item.retry else None
                pipeline.chain(interface, item.plugin, retry=retry, **item.options)
            except (PluginError, PipelineDefinitionError, ValidationError) as exc:
                raise MessageError(f"stage {i} of the message cannot be built: {exc}") from exc
        return pipeline

    def continuation(self, resume_at: int) -> Continuation[Any]:
        """The remainder from stage ``resume_at`` on, with the job policy its Dispatch
        (the stage before it) declared."""
        return self._freeze().continuation(resume_at)

    def copy(self) -> Pipeline[ContextT]:
        """A new pipeline with the same context, core function, environment and stages,
        not frozen, whose stages are not checked again: build a pipeline once and copy it
        per request, and each copy runs with plugin instances of its own (shareable ones
        aside), as a pipeline built afresh would."""
        twin = type(self)(self.context, self.core_fn, environment=self._environment)
        twin._answers = self._answers
        twin._checked = list(self._checked)
        twin._cacheable = self._cacheable
        twin._dispatch_at = self._dispatch_at
        return twin

    def __repr__(self) -> str:
        """``Pipeline(core=app.tasks:finish, stages=[Execute('logging'), Dispatch(...)])``:
        short and the same in every run, for test and Hypothesis failure reports."""
        core = self.core_fn
        name = getattr(core, "__qualname__", type(core).__qualname__)
        stages = ", ".join(map(repr, self._refs))
        return f"Pipeline(core={getattr(core, '__module__', '?')}:{name}, stages=[{stages}])"


def _check_shared_job_store(env: Environment) -> None:
    """DispatchError when a remote hand-off would leave the job's record in this process.

    An environment whose ``memory_services_shared`` is true (the simulator's: all its
    simulated processes use its one set of in-memory services) may hand off anyway."""
    if env.memory_services_shared or not getattr(env.jobs, "process_local", False):
        return
    chosen = (
        env.settings.as_given("job_store")
        if env.settings.job_store == "memory"
        else "given as Environment(jobs=...)"
    )
    raise DispatchError(
        f"a remote dispatcher cannot hand off with the in-memory job store "
        f"({chosen}): the worker would record the job in its "
        "own memory and this process would see it PENDING for ever. Use a store the "
        "workers share: DCORE_JOB_STORE=redis DCORE_EVENT_BUS=redis "
        "DCORE_REDIS_URL=redis://HOST:6379/0 (`dcore doctor` checks the whole setup)"
    )


#: whether a code object is ``async def``, by code: a core function made per request (a
#: closure, a bound method) shares its code with the others, and holds nothing alive here
_ASYNC_CODE: dict[Any, bool] = {}


def _is_async_function(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is ``async def``; remembered per code object, as a pipeline is made
    per request and the check costs about as much as a stage."""
    code = getattr(fn, "__code__", None)
    if code is None:  # a partial, a callable object: asked each time
        return inspect.iscoroutinefunction(fn)
    known = _ASYNC_CODE.get(code)
    if known is None:
        known = _ASYNC_CODE[code] = inspect.iscoroutinefunction(fn)
    return known
