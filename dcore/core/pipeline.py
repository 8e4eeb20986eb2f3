"""Assembling a pipeline and folding it into one call.

``chain()`` collects stage references and checks each at once (known plugin, valid
options, at most one Dispatch). The first ``run()`` freezes the pipeline: plugins are
built, the chain is folded into nested calls once (each stage's call is made by
:mod:`dcore.core.runner`), and later ``chain()`` calls raise.

Semantics: stage *i* gets ``next_fn`` running stages *i+1..n* and then ``core_fn``; the
value ``core_fn`` returns flows back up to ``run()``. Stages before the Dispatch run in
the caller; the Dispatch gets a :class:`Continuation` for the rest and ``run()`` returns
what the Dispatch returned.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Self

from pydantic import ValidationError

from dcore.core.context import PipelineContext
from dcore.core.continuation import Continuation
from dcore.core.environment import Environment, current_environment
from dcore.core.factory import PluginFactory, plugin_signature
from dcore.core.interfaces import ContextT, Dispatch, Execute, StageRef
from dcore.core.lifecycle import dead_letter, describe_error, schedule
from dcore.core.message import StageSpec, core_function_name, summarise, trace_propagator
from dcore.core.plugins import interface_by_name, is_interface
from dcore.core.retry import RetryPolicy
from dcore.core.runner import Call, Stage, execute_call, is_observer, observers_of, origin_of, tag
from dcore.errors import (
    ContextSerializationError,
    DispatchError,
    JobNotFoundError,
    MessageError,
    PipelineDefinitionError,
    PluginError,
)
from dcore.services.jobs import JobState

# Continuation, Stage and origin_of are re-exported: they are part of this module's API
__all__ = ["Continuation", "Pipeline", "Stage", "origin_of"]


class Pipeline(Generic[ContextT]):
    """A chain of named plugin stages ending in ``core_fn``. Build, then ``run()``."""

    def __init__(
        self,
        context: ContextT | None,
        core_fn: Callable[[ContextT], Any],
        *,
        environment: Environment | None = None,
    ) -> None:
        if not callable(core_fn):
            raise PipelineDefinitionError(f"core_fn must be callable, got {core_fn!r}")
        if context is not None and not isinstance(context, PipelineContext):
            raise PipelineDefinitionError(
                f"a pipeline runs over a PipelineContext, got {type(context).__name__}"
            )
        self.context = context
        self.core_fn = core_fn
        self._environment = environment
        self._refs: list[StageRef] = []
        # (plugin class, validated options) per stage as checked by chain(), reused when
        # the pipeline is frozen unless the registry now maps the name to another class
        self._checked: list[tuple[type, dict[str, Any]]] = []
        self._stages: list[Stage] | None = None
        self._entry: Call | None = None
        self._suffix: dict[int, Call] = {}
        self._env: Environment | None = None
        self._dispatch: Stage | None = None  # found once, when frozen
        self._freeze_lock = threading.Lock()

    # -- definition ---------------------------------------------------------------------
    @property
    def environment(self) -> Environment:
        return self._env or self._environment or current_environment()

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
        if self._stages is not None:
            name = plugin or (stage.plugin if isinstance(stage, StageRef) else stage)
            raise PipelineDefinitionError(
                f"cannot chain {name!r}: the pipeline has already run and is frozen; "
                "build a new pipeline (ctx.create_pipeline) to change it"
            )
        ref = self._as_ref(stage, plugin, retry, options)
        if issubclass(ref.interface, Dispatch):
            first = next((r for r in self._refs if issubclass(r.interface, Dispatch)), None)
            if first is not None:
                raise PipelineDefinitionError(
                    f"a pipeline takes at most one Dispatch: {ref.plugin!r} (stage "
                    f"{len(self._refs)}) follows {first.plugin!r} (stage "
                    f"{self._refs.index(first)}); everything after {first.plugin!r} already "
                    "runs in the background"
                )
        cls = self.environment.registry.get(ref.interface, ref.plugin)
        checked = plugin_signature(cls).validate(ref.plugin, ref.options)
        self._checked.append((cls, checked))
        self._refs.append(ref)
        return self

    @staticmethod
    def _as_ref(
        stage: type | StageRef,
        plugin: str | None,
        retry: RetryPolicy | Mapping[str, Any] | None,
        options: Any,
    ) -> StageRef:
        if isinstance(stage, StageRef):
            if plugin is not None or options:
                raise PipelineDefinitionError(
                    f"pass options inside the stage reference, e.g. "
                    f"{stage.interface.__name__}({stage.plugin!r}, ...), not to chain()"
                )
            _check_stage_interface(stage.interface)
            policy = _retry_policy(stage.plugin, stage.retry if retry is None else retry)
            if policy is not stage.retry:
                stage = StageRef(stage.interface, stage.plugin, stage.options, policy)
            return stage
        if stage is not Execute and stage is not Dispatch:
            if not is_interface(stage):
                raise PipelineDefinitionError(
                    f"chain() takes a plugin interface such as Execute or Dispatch (or a "
                    f"stage reference like Execute('logging')), got {stage!r}"
                )
            assert isinstance(stage, type)
            _check_stage_interface(stage)
        assert isinstance(stage, type)
        if not isinstance(plugin, str) or not plugin:
            raise PipelineDefinitionError(
                f"chain({stage.__name__}, plugin=...) needs the plugin's name, got {plugin!r}"
            )
        return StageRef(stage, plugin, dict(options), _retry_policy(plugin, retry))

    @property
    def stages(self) -> list[StageRef]:
        return list(self._refs)

    @property
    def dispatch_index(self) -> int | None:
        for i, ref in enumerate(self._refs):
            if issubclass(ref.interface, Dispatch):
                return i
        return None

    # -- description --------------------------------------------------------------------
    def describe(self) -> str:
        """``[sync] a → b ⇒ dispatch(x) ┆ async ┆ [background] c → core``."""
        from dcore.core.describe import describe

        return describe(self._refs)

    def to_mermaid(self) -> str:
        from dcore.core.describe import to_mermaid

        return to_mermaid(self._refs)

    # -- running --------------------------------------------------------------------------
    def run(self, context: ContextT | None = None) -> Any:
        """Run over ``context`` (default: the one the pipeline was created with)."""
        ctx = context if context is not None else self.context
        if not isinstance(ctx, PipelineContext):
            raise PipelineDefinitionError(
                f"run() needs a PipelineContext, got {type(ctx).__name__}"
            )
        entry = self._freeze()
        dispatch = self._dispatch
        if dispatch is not None and dispatch.instance.is_remote():
            self.check_remote(ctx)
        return entry(ctx)

    def _dispatch_stage(self) -> Stage | None:
        assert self._stages is not None
        return next((s for s in self._stages if s.is_dispatch), None)

    def _freeze(self) -> Call:
        if self._entry is not None:
            return self._entry
        with self._freeze_lock:
            if self._entry is None:
                env = self.environment
                stages = self._assemble(env)
                self._env = env
                self._stages = stages
                self._dispatch = next((s for s in stages if s.is_dispatch), None)
                self._entry = self._fold(0)
        return self._entry

    def _assemble(self, env: Environment) -> list[Stage]:
        factory = PluginFactory(environment=env)
        stages = []
        for i, ref in enumerate(self._refs):
            cls = factory.resolve(ref.interface, ref.plugin)
            checked_cls, options = self._checked[i]
            if cls is not checked_cls:
                options = factory.validate(ref.interface, ref.plugin, ref.options)
            stage = Stage(i, ref, cls, options)
            if not stage.pooled or stage.is_dispatch:
                stage.instance = factory.instantiate(cls, ref.plugin, options)
            if stage.is_dispatch and env.dispatch_wrapper is not None:
                stage.instance = env.dispatch_wrapper(stage.instance)
            stages.append(stage)
        return stages

    def _fold(self, start: int) -> Call:
        """Nested calls for stages ``start..n`` then core; built once and cached."""
        cached = self._suffix.get(start)
        if cached is not None:
            return cached
        assert self._stages is not None
        assert self._env is not None
        env = self._env
        # a stage plugin that also observes (tracing) sees every stage of its pipeline
        own = [s.instance for s in self._stages if is_observer(s.instance)]
        observers = observers_of(env.observers, own)
        core = self.core_fn

        def call_core(ctx: Any) -> Any:
            try:
                return core(ctx)
            except BaseException as exc:
                tag(exc, "core")
                raise

        call: Call = call_core
        for stage in reversed(self._stages[start:]):
            if stage.is_dispatch:
                call = self._dispatch_call(stage)
            else:
                call = execute_call(stage, call, env, observers)
        self._suffix[start] = call
        return call

    def _dispatch_call(self, stage: Stage) -> Call:
        assert self._env is not None
        env = self._env
        continuation: Continuation[Any] = Continuation(
            self, stage.index + 1, stage.declared_policy
        )
        dispatcher = stage.instance
        remote = dispatcher.is_remote()

        def call_dispatch(ctx: Any) -> Any:
            # the trace context of the hand-off travels with the continuation, so an
            # in-process dispatcher's thread continues the request's trace
            bound = continuation.bind(trace_propagator().inject())
            # the record keeps the message of a shipped job (the recovery sweep re-sends
            # it if the broker loses it); an in-process job's dies with its process, and
            # its dead letter builds the message only if it is ever needed
            message = bound.to_json_or_none(ctx) if remote else None
            schedule(env, ctx.job_id, message=message)
            try:
                return dispatcher.dispatch(bound, ctx)
            except Exception as exc:
                tag(exc, stage.origin)
                # an inline run has already recorded (and dead-lettered) its own failure;
                # only a hand-off that never started the job dead-letters it here
                if _still_pending(env, ctx.job_id):
                    dead_letter(env, ctx.job_id, message=message or bound.to_json_or_none(ctx),
                                error=f"dispatch failed: {describe_error(exc)}")
                raise

        return call_dispatch

    # -- remote hand-off ------------------------------------------------------------------
    def check_remote(self, ctx: PipelineContext) -> None:
        """Everything a remote hand-off needs, checked before any stage runs: a job store
        the worker shares (a memory one would record the job in the worker's own memory,
        and the caller would see it PENDING for ever), and a context, core function and
        stage options that travel."""
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
        self._freeze()
        assert self._stages is not None
        before = self._stages[resume_at - 1] if 0 < resume_at <= len(self._stages) else None
        policy = before.declared_policy if before is not None and before.is_dispatch else None
        return Continuation(self, resume_at, policy)

    def _run_suffix(self, resume_at: int, ctx: Any) -> Any:
        self._freeze()
        if resume_at > len(self._refs):
            raise MessageError(
                f"resume_at={resume_at} is past the end of a {len(self._refs)}-stage pipeline"
            )
        return self._fold(resume_at)(ctx)

    def __repr__(self) -> str:
        """``Pipeline(core=app.tasks:finish, stages=[Execute('logging'), Dispatch(...)])``:
        short and the same in every run, for test and Hypothesis failure reports."""
        core = self.core_fn
        name = getattr(core, "__qualname__", type(core).__qualname__)
        stages = ", ".join(map(repr, self._refs))
        return f"Pipeline(core={getattr(core, '__module__', '?')}:{name}, stages=[{stages}])"


def _retry_policy(plugin: str, retry: object) -> RetryPolicy | None:
    """A stage's ``retry=``: a RetryPolicy, its fields as a mapping, or None."""
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if not isinstance(retry, Mapping):
        raise PipelineDefinitionError(
            f"retry= of stage {plugin!r} must be a RetryPolicy or a mapping of its fields, "
            f"got {type(retry).__name__}: {retry!r}"
        )
    try:
        return RetryPolicy.model_validate(retry)
    except ValidationError as exc:
        raise PipelineDefinitionError(
            f"retry= of stage {plugin!r} is invalid: {summarise(exc)}"
        ) from None


def _check_stage_interface(interface: type) -> None:
    if interface is Execute or interface is Dispatch or issubclass(interface, Execute | Dispatch):
        return
    raise PipelineDefinitionError(
        f"{interface.__name__} is a service interface, not a stage; chain an Execute "
        "or Dispatch plugin"
    )


def _check_shared_job_store(env: Environment) -> None:
    """DispatchError when a remote hand-off would leave the job's record in this process.

    An environment whose ``memory_services_shared`` is true (the simulator's: all its
    simulated processes use its one set of in-memory services) may hand off anyway."""
    if env.memory_services_shared or not getattr(env.jobs, "process_local", False):
        return
    chosen = env.settings.as_given("job_store") if env.settings.job_store == "memory" \
        else "given as Environment(jobs=...)"
    raise DispatchError(
        f"a remote dispatcher cannot hand off with the in-memory job store "
        f"({chosen}): the worker would record the job in its "
        "own memory and this process would see it PENDING for ever. Use a store the "
        "workers share: DCORE_JOB_STORE=redis DCORE_EVENT_BUS=redis "
        "DCORE_REDIS_URL=redis://HOST:6379/0 (`dcore doctor` checks the whole setup)"
    )


def _still_pending(env: Environment, job_id: str) -> bool:
    try:
        return env.jobs.get(job_id).state is JobState.PENDING
    except JobNotFoundError:
        return True
