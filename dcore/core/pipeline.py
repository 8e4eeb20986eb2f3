"""Assembling and running a pipeline.

``chain()`` collects stage references and checks each at once (known plugin, valid
options, at most one Dispatch). The first ``run()`` freezes the pipeline: plugins are
built, the chain is folded into nested calls once, and later ``chain()`` calls raise.

Semantics: stage *i* gets ``next_fn`` running stages *i+1..n* and then ``core_fn``; the
value ``core_fn`` returns flows back up to ``run()``. Stages before the Dispatch run in
the caller; the Dispatch gets a :class:`Continuation` for the rest and ``run()`` returns
what the Dispatch returned.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Self

from pydantic import ValidationError

from dcore.core import events
from dcore.core.context import PipelineContext
from dcore.core.environment import Environment, current_environment
from dcore.core.factory import PluginFactory, plugin_signature
from dcore.core.interfaces import ContextT, Dispatch, Execute, StageRef
from dcore.core.lifecycle import dead_letter, describe_error, run_job, schedule
from dcore.core.message import (
    ContextEnvelope,
    JobMessage,
    StageSpec,
    callable_path,
    trace_propagator,
)
from dcore.core.plugins import interface_by_name, is_interface
from dcore.core.pool import PluginPool
from dcore.core.retry import NO_RETRY, RetryPolicy, call_with_retry, declared_policy
from dcore.errors import (
    ContextSerializationError,
    JobNotFoundError,
    MessageError,
    PipelineDefinitionError,
    PluginError,
)
from dcore.services.jobs import JobState

if TYPE_CHECKING:
    from dcore.core.observe import PipelineObserver

__all__ = ["Continuation", "Pipeline", "Stage", "origin_of"]

Call = Callable[[Any], Any]
_ORIGIN = "__dcore_stage__"


def origin_of(exc: BaseException) -> str | None:
    """The stage (``plugin#index``, or ``core``) whose own code raised ``exc``."""
    return getattr(exc, _ORIGIN, None)


def _raised_downstream(exc: BaseException) -> bool:
    """True when ``exc`` or an error it was raised from/while handling came out of a later
    stage: a stage that wraps next_fn's failure in its own error must not retry it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if origin_of(current) is not None:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _tag(exc: BaseException, origin: str) -> None:
    if getattr(exc, _ORIGIN, None) is None:
        with contextlib.suppress(AttributeError, TypeError):  # exceptions with __slots__
            setattr(exc, _ORIGIN, origin)


class Stage:
    """One assembled stage: its reference, plugin class and resolved retry policy."""

    def __init__(self, index: int, ref: StageRef, cls: type, options: dict[str, Any]) -> None:
        self.index = index
        self.ref = ref
        self.cls = cls
        self.options = options
        self.is_dispatch = ref.interface is Dispatch or issubclass(ref.interface, Dispatch)
        #: what the chain, the plugin or its interface declared (None: nothing)
        self.declared_policy: RetryPolicy | None = declared_policy(ref.retry, cls)
        self.policy: RetryPolicy = self.declared_policy or NO_RETRY
        self.label = ref.plugin
        self.origin = f"{ref.plugin}#{index}"
        self.pooled = hasattr(cls, "__enter__") and hasattr(cls, "__exit__")
        self.instance: Any = None

    def spec(self) -> StageSpec:
        retry = None
        if self.ref.retry is not None:
            retry = self.ref.retry.model_dump(mode="json")
        return StageSpec(
            interface=self.ref.interface.__name__,
            plugin=self.ref.plugin,
            options=dict(self.ref.options),
            retry=retry,
        )

    def __repr__(self) -> str:
        return f"Stage({self.ref.interface.__name__}:{self.ref.plugin}#{self.index})"


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
        retry: RetryPolicy | None = None,
        **options: Any,
    ) -> Self:
        """Append a stage: ``chain(Execute, plugin="x", **opts)`` or ``chain(Execute("x"))``."""
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
        stage: type | StageRef, plugin: str | None, retry: RetryPolicy | None, options: Any
    ) -> StageRef:
        if isinstance(stage, StageRef):
            if plugin is not None or options:
                raise PipelineDefinitionError(
                    f"pass options inside the stage reference, e.g. "
                    f"{stage.interface.__name__}({stage.plugin!r}, ...), not to chain()"
                )
            _check_stage_interface(stage.interface)
            if retry is not None:
                stage = StageRef(stage.interface, stage.plugin, stage.options, retry)
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
        return StageRef(stage, plugin, dict(options), retry)

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
        observers: Sequence[PipelineObserver] = env.observers
        # a stage plugin that also observes (tracing) sees every stage of its pipeline
        own = [s.instance for s in self._stages if _is_observer(s.instance)]
        if own:
            observers = _Observers(env.observers, own)
        core = self.core_fn

        def call_core(ctx: Any) -> Any:
            try:
                return core(ctx)
            except BaseException as exc:
                _tag(exc, "core")
                raise

        call: Call = call_core
        for stage in reversed(self._stages[start:]):
            if stage.is_dispatch:
                call = self._dispatch_call(stage)
            else:
                call = _execute_call(stage, call, env, observers)
        self._suffix[start] = call
        return call

    def _dispatch_call(self, stage: Stage) -> Call:
        assert self._env is not None
        env = self._env
        continuation: Continuation[Any] = Continuation(
            self, stage.index + 1, stage.declared_policy
        )
        dispatcher = stage.instance

        def call_dispatch(ctx: Any) -> Any:
            # the trace context of the hand-off travels with the continuation, so an
            # in-process dispatcher's thread continues the request's trace
            bound = continuation.bind(trace_propagator().inject())
            message = bound.to_json_or_none(ctx)
            schedule(env, ctx.job_id, message=message)
            try:
                return dispatcher.dispatch(bound, ctx)
            except Exception as exc:
                _tag(exc, stage.origin)
                # an inline run has already recorded (and dead-lettered) its own failure;
                # only a hand-off that never started the job dead-letters it here
                if _still_pending(env, ctx.job_id):
                    dead_letter(env, ctx.job_id, message=message,
                                error=f"dispatch failed: {describe_error(exc)}")
                raise

        return call_dispatch

    # -- remote hand-off ------------------------------------------------------------------
    def check_remote(self, ctx: PipelineContext) -> None:
        """Everything a remote hand-off needs, checked before any stage runs."""
        name = type(ctx).__qualname__
        if "<locals>" in name:
            raise ContextSerializationError(
                f"context class {name} is defined inside a function; a worker cannot "
                "resolve it. Define it at module level"
            )
        ctx.to_envelope()
        callable_path(self.core_fn)
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

    def continuation(
        self, resume_at: int, policy: RetryPolicy | None = None
    ) -> Continuation[Any]:
        self._freeze()
        return Continuation(self, resume_at, policy)

    def _run_suffix(self, resume_at: int, ctx: Any) -> Any:
        self._freeze()
        if resume_at > len(self._refs):
            raise MessageError(
                f"resume_at={resume_at} is past the end of a {len(self._refs)}-stage pipeline"
            )
        return self._fold(resume_at)(ctx)


def _check_stage_interface(interface: type) -> None:
    if interface is Execute or interface is Dispatch or issubclass(interface, Execute | Dispatch):
        return
    raise PipelineDefinitionError(
        f"{interface.__name__} is a service interface, not a stage; chain an Execute "
        "or Dispatch plugin"
    )


def _still_pending(env: Environment, job_id: str) -> bool:
    try:
        return env.jobs.get(job_id).state is JobState.PENDING
    except JobNotFoundError:
        return True


def _is_observer(instance: Any) -> bool:
    kind = type(instance)
    return callable(getattr(kind, "stage_enter", None)) and callable(
        getattr(kind, "stage_exit", None)
    )


class _Observers(Sequence["PipelineObserver"]):
    """The environment's observers (a live list) followed by the pipeline's own."""

    def __init__(self, shared: Sequence[PipelineObserver], own: list[Any]) -> None:
        self._shared = shared
        self._own = own

    def _all(self) -> list[PipelineObserver]:
        return [*self._shared, *self._own]

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._shared) + len(self._own)

    def __iter__(self) -> Iterator[PipelineObserver]:
        return iter(self._all())


def _execute_call(
    stage: Stage, next_call: Call, env: Environment, observers: Sequence[PipelineObserver]
) -> Call:
    policy = stage.policy
    clock = env.clock
    pool: PluginPool | None = None
    if stage.pooled:
        pool = env.resource("dcore.plugin_pool", PluginPool)
    instance = stage.instance
    ref = stage.ref
    origin = stage.origin

    def own_failure(exc: BaseException) -> bool:
        return not _raised_downstream(exc)

    def body(ctx: Any) -> Any:
        if pool is None:
            return instance.execute(next_call, ctx)
        with pool.lease(ref.interface, ref.plugin, **ref.options) as leased:
            return leased.execute(next_call, ctx)

    def call(ctx: Any) -> Any:
        for observer in observers:
            observer.stage_enter(stage, ctx)
        try:
            if policy.attempts == 1:
                result = body(ctx)
            else:
                result = call_with_retry(
                    lambda: body(ctx), policy, clock, retry_if=own_failure, rng=env.random,
                    before_sleep=lambda n, exc, delay: events.emit(
                        env, events.STAGE_FAILED, job_id=ctx.job_id, stage=origin,
                        error=describe_error(exc), attempt=n, retry_in=delay),
                )
        except BaseException as exc:
            own = not _raised_downstream(exc)
            _tag(exc, origin)
            if own and isinstance(exc, Exception):
                events.emit(env, events.STAGE_FAILED, job_id=ctx.job_id, stage=origin,
                            error=describe_error(exc), final=True)
            for observer in observers:
                observer.stage_exit(stage, ctx, exc)
            raise
        for observer in observers:
            observer.stage_exit(stage, ctx, None)
        return result

    return call


class Continuation(Generic[ContextT]):
    """The rest of a pipeline after its Dispatch: call it here, or ship it as a message.

    ``next_fn(ctx)`` runs the remainder in this process as the job's one and final
    attempt (recorded in the job store; a failure is recorded, dead-lettered and
    re-raised). Dispatchers that re-deliver call :meth:`run` with the attempt number.
    """

    def __init__(
        self,
        pipeline: Pipeline[Any],
        resume_at: int,
        policy: RetryPolicy | None,
        trace: dict[str, str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.resume_at = resume_at
        #: the job-level retry policy the Dispatch stage declared (None: the environment's)
        self.policy = policy
        #: trace context captured at the hand-off (see :meth:`bind`)
        self.trace: dict[str, str] = trace or {}
        # the message of one hand-off, built once for the job record, the dispatcher
        # and the dead letter alike (a 16 KiB context is not serialized three times)
        self._message: tuple[object, JobMessage | None] | None = None

    def bind(self, trace: dict[str, str]) -> Continuation[ContextT]:
        """A continuation for one hand-off, carrying ``trace``: :meth:`run` continues
        that trace in whatever thread it runs, and :meth:`to_message` ships it."""
        return Continuation(self.pipeline, self.resume_at, self.policy, trace)

    @property
    def environment(self) -> Environment:
        return self.pipeline.environment

    def __call__(self, context: ContextT) -> Any:
        return self.run(context)

    def run(
        self,
        context: ContextT,
        *,
        attempt: int = 1,
        final: bool = True,
        message: str | None = None,
    ) -> Any:
        """Run the remainder as attempt ``attempt``; ``final`` if none will follow.
        ``message`` is the job's message JSON when the caller has it (a worker); else it
        is built only if needed (a dead letter)."""
        env = self.environment
        scope = trace_propagator().extract(self.trace) if self.trace else contextlib.nullcontext()
        with scope:
            return run_job(
                env,
                context.job_id,
                lambda: self.pipeline._run_suffix(self.resume_at, context),
                attempt=attempt,
                final=final,
                message=message if message is not None else lambda: self.to_json_or_none(context),
            )

    def run_unrecorded(self, context: ContextT) -> Any:
        """Run the remainder without touching the job store (for tests and tools)."""
        return self.pipeline._run_suffix(self.resume_at, context)

    def to_message(self, context: ContextT, *, attempt: int = 1) -> JobMessage:
        """The remainder as a JobMessage; ContextSerializationError names what cannot go."""
        cached = self._message
        if cached is not None and cached[0] is context and cached[1] is not None:
            message = cached[1]
            return message if attempt == message.attempt else message.with_attempt(attempt)
        message = self._build_message(context, attempt)
        self._message = (context, message)
        return message

    def _build_message(self, context: ContextT, attempt: int) -> JobMessage:
        pipeline = self.pipeline
        if pipeline._stages is not None:
            spec = [s.spec() for s in pipeline._stages]
        else:
            spec = [Stage(i, r, r.interface, {}).spec() for i, r in enumerate(pipeline._refs)]
        return JobMessage(
            job_id=context.job_id,
            attempt=attempt,
            spec=spec,
            resume_at=self.resume_at,
            core_fn=callable_path(pipeline.core_fn),
            context=ContextEnvelope.model_validate(context.to_envelope()),
            trace=self.trace or trace_propagator().inject(),
            shard=context.shard_key,
        )

    def to_json_or_none(self, context: ContextT) -> str | None:
        """The message JSON when the remainder can be shipped (for the job record and the
        DLQ), else None: in-process dispatchers may carry closures."""
        cached = self._message
        if cached is not None and cached[0] is context and cached[1] is None:
            return None
        try:
            return self.to_message(context).to_json()
        except Exception:
            self._message = (context, None)
            return None
