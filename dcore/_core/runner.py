"""Running one stage: origin tagging, the stage's own retries, observers, pooled plugins.

A :class:`Stage` is what compiling a pipeline makes of one ``chain()`` call; it holds no
per-request state, so one compiled chain serves every pipeline built the same way.
:func:`fold` turns stages and the instances one pipeline runs them with into nested
:data:`Call` s: a short call for a plain Execute stage, a general one for retries, pooled
plugins and observing stages, ``dispatch_call`` for the hand-off and ``core_call`` for
the core function at the end.

An exception is tagged with the stage whose own code raised it (``plugin#index``, or
``core``), so a stage's retry policy covers failures of its own body only, never those
raised further down the chain, and retries cannot multiply down a pipeline.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dcore._core import events
from dcore._core.environment import Environment
from dcore._core.factory import PluginFactory
from dcore._core.lifecycle import dead_letter, describe_error, schedule
from dcore._core.message import StageSpec, trace_propagator
from dcore._core.pool import PluginPool
from dcore._core.retry import NO_RETRY, RetryPolicy, call_with_retry, declared_policy
from dcore._core.saga import compensates, completed
from dcore._plugins.interfaces import StageRef
from dcore.errors import JobNotFoundError
from dcore.services.jobs import JobState

if TYPE_CHECKING:
    from dcore._core.continuation import Continuation
    from dcore._core.observe import PipelineObserver

__all__ = [
    "Call",
    "Stage",
    "core_call",
    "dispatch_call",
    "fold",
    "is_observer",
    "observers_of",
    "origin_of",
    "raised_downstream",
    "retry_notice",
    "stage_failed",
    "tag",
]

#: One step of a folded chain: takes the context, returns what core_fn returned.
Call = Callable[[Any], Any]
_ORIGIN = "__dcore_stage__"


def origin_of(exc: BaseException) -> str | None:
    """The stage (``plugin#index``, or ``core``) whose own code raised ``exc``."""
    return getattr(exc, _ORIGIN, None)


def raised_downstream(exc: BaseException) -> bool:
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


def tag(exc: BaseException, origin: str) -> None:
    if getattr(exc, _ORIGIN, None) is None:
        with contextlib.suppress(AttributeError, TypeError):  # exceptions with __slots__
            setattr(exc, _ORIGIN, origin)


class Stage:
    """One compiled stage: its reference, plugin class, validated options, resolved retry
    policy, and how a pipeline gets its instance: ``shared`` (a shareable plugin, built
    once), ``build()`` (one per pipeline), or neither (a pooled plugin,
    leased per run). Observers are handed this object; it is the same for every pipeline
    that compiled to the same chain, so it holds nothing of one request."""

    __slots__ = (
        "build", "cls", "compensates", "declared_policy", "index", "is_async",
        "is_dispatch", "label", "observer", "options", "origin", "plain", "policy",
        "pooled", "ref", "shared",
    )  # fmt: skip

    def __init__(
        self, index: int, ref: StageRef, cls: type, options: Any, *, is_dispatch: bool
    ) -> None:
        self.index = index
        self.ref = ref
        self.cls = cls
        self.options = options
        self.is_dispatch = is_dispatch
        #: what the chain, the plugin or its interface declared (None: nothing)
        self.declared_policy: RetryPolicy | None = declared_policy(ref.retry, cls)
        self.policy: RetryPolicy = self.declared_policy or NO_RETRY
        self.label = ref.plugin
        self.origin = f"{ref.plugin}#{index}"
        self.pooled = hasattr(cls, "__enter__") and hasattr(cls, "__exit__")
        #: whether its instance observes the pipeline's stages (the tracing stage)
        self.observer = not self.pooled and not is_dispatch and is_observer_class(cls)
        #: whether it can undo its work (see dcore._core.saga)
        self.compensates = not is_dispatch and compensates(cls)
        #: one attempt, not pooled: the shortest call (see fold)
        self.plain = not self.pooled and self.policy.attempts == 1 and not is_dispatch
        #: whether its ``execute`` is ``async def`` (see dcore._core.afold)
        self.is_async = not is_dispatch and inspect.iscoroutinefunction(
            getattr(cls, "execute", None)
        )
        self.build: Callable[[], Any] | None = None
        self.shared: Any = None

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


# -- observers ------------------------------------------------------------------------------
def is_observer_class(kind: type) -> bool:
    return callable(getattr(kind, "stage_enter", None)) and callable(
        getattr(kind, "stage_exit", None)
    )


def is_observer(instance: Any) -> bool:
    return is_observer_class(type(instance))


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


def observers_of(shared: Sequence[PipelineObserver], own: list[Any]) -> Sequence[PipelineObserver]:
    """The observers a pipeline's stages report to: the environment's, then its own."""
    return _Observers(shared, own) if own else shared


# -- the calls --------------------------------------------------------------------------------
def core_call(core: Callable[[Any], Any]) -> Call:
    def call_core(ctx: Any) -> Any:
        try:
            return core(ctx)
        except BaseException as exc:
            tag(exc, "core")
            raise

    return call_core


def stage_failed(stage: Stage, env: Environment, ctx: Any, exc: BaseException) -> None:
    """Tag ``exc`` with ``stage``; report it as the stage's failure if its own code
    raised it."""
    own = not raised_downstream(exc)
    tag(exc, stage.origin)
    if own and isinstance(exc, Exception):
        events.emit(
            env,
            events.STAGE_FAILED,
            job_id=ctx.job_id,
            stage=stage.origin,
            error=describe_error(exc),
            final=True,
        )


def fold(
    stages: Sequence[Stage],
    instances: Sequence[Any],
    core: Callable[[Any], Any],
    env: Environment,
    observers: Sequence[PipelineObserver],
    rest_after: Callable[[Stage], Continuation[Any]],
    tail: Call | None = None,
) -> Call:
    """``stages`` (run with ``instances``, by stage index) then ``core``, as one call;
    the Dispatch stage hands ``rest_after(stage)`` to its dispatcher. ``tail``, when
    given, replaces the core at the end (the rest of a chain folded another way).

    A plain stage (one attempt, not pooled) whose pipeline has no observer of its own
    gets the shortest call: a function with what it needs bound as defaults (making ten
    per request costs half what closures do). The environment's observers are a live
    list, checked per call; only a non-empty one takes the observed path."""
    call = core_call(core) if tail is None else tail
    shared = env.observers
    unobserved = observers is shared
    for stage in reversed(stages):
        instance = instances[stage.index]
        compensates = stage.compensates
        if compensates:  # it completed once it handed over (see dcore._core.saga)
            call = _handing_over(stage.index, call)
        if stage.plain and unobserved:

            def plain(
                ctx: Any,
                instance: Any = instance,
                next_call: Call = call,
                stage: Stage = stage,
                env: Environment = env,
                observers: Sequence[PipelineObserver] = shared,
            ) -> Any:
                if observers:
                    return _observed(stage, instance.execute, next_call, env, observers, ctx)
                try:
                    return instance.execute(next_call, ctx)
                except BaseException as exc:
                    stage_failed(stage, env, ctx, exc)
                    raise

            call = plain
        elif stage.is_dispatch:
            call = dispatch_call(stage, instance, rest_after(stage), env)
        else:
            call = _general_call(stage, instance, call, env, observers)
        if compensates:  # ... or returned
            call = _returning(stage.index, call)
    return call


def _handing_over(index: int, next_call: Call) -> Call:
    def hand_over(ctx: Any) -> Any:
        completed(index)
        return next_call(ctx)

    return hand_over


def _returning(index: int, stage_call: Call) -> Call:
    def run_stage(ctx: Any) -> Any:
        result = stage_call(ctx)
        completed(index)
        return result

    return run_stage


def _observed(
    stage: Stage,
    execute: Callable[[Call, Any], Any],
    next_call: Call,
    env: Environment,
    observers: Sequence[PipelineObserver],
    ctx: Any,
) -> Any:
    for observer in observers:
        observer.stage_enter(stage, ctx)
    try:
        result = execute(next_call, ctx)
    except BaseException as exc:
        stage_failed(stage, env, ctx, exc)
        for observer in observers:
            observer.stage_exit(stage, ctx, exc)
        raise
    for observer in observers:
        observer.stage_exit(stage, ctx, None)
    return result


def _general_call(
    stage: Stage,
    instance: Any,
    next_call: Call,
    env: Environment,
    observers: Sequence[PipelineObserver],
) -> Call:
    """A stage with retries, a pooled plugin or observers of its own pipeline."""
    policy = stage.policy
    clock = env.clock
    pool = plugin_pool(env) if stage.pooled else None
    ref = stage.ref
    origin = stage.origin

    def own_failure(exc: BaseException) -> bool:
        return not raised_downstream(exc)

    def body(ctx: Any) -> Any:
        if pool is None:
            return instance.execute(next_call, ctx)
        with pool.lease(ref.interface, ref.plugin, **ref.options) as leased:
            return leased.execute(next_call, ctx)

    def run(_next: Call, ctx: Any) -> Any:
        if policy.attempts == 1:
            return body(ctx)
        return call_with_retry(
            lambda: body(ctx),
            policy,
            clock,
            retry_if=own_failure,
            rng=env.random,
            before_sleep=retry_notice(env, ctx, origin),
        )

    def call(ctx: Any) -> Any:
        return _observed(stage, run, next_call, env, observers, ctx)

    return call


def retry_notice(
    env: Environment, ctx: Any, origin: str
) -> Callable[[int, BaseException, float], None]:
    """What a stage's own retries announce before each wait (plain and async alike):
    ``stage.failed`` with the attempt that failed and the delay before the next."""

    def notify(attempt: int, exc: BaseException, delay: float) -> None:
        events.emit(
            env,
            events.STAGE_FAILED,
            job_id=ctx.job_id,
            stage=origin,
            error=describe_error(exc),
            attempt=attempt,
            retry_in=delay,
        )

    return notify


def plugin_pool(env: Environment) -> PluginPool:
    """The environment's pool of pooled plugins, built in that environment: its registry
    and services, not the current one's."""
    return env.resource("dcore.plugin_pool", lambda: PluginPool(PluginFactory(environment=env)))


def dispatch_call(
    stage: Stage, dispatcher: Any, continuation: Continuation[Any], env: Environment
) -> Call:
    """The hand-off: record the job as scheduled, then give the dispatcher the rest."""

    remote = dispatcher.is_remote()

    def call_dispatch(ctx: Any) -> Any:
        # the trace context of the hand-off travels with the continuation, so an
        # in-process dispatcher's thread continues the request's trace
        bound = continuation.bind(trace_propagator().inject())
        # the record keeps the message of a shipped job (the recovery sweep re-sends it if
        # the broker loses it); an in-process job's dies with its process, and its dead
        # letter builds the message only if it is ever needed
        message = bound.to_json_or_none(ctx) if remote else None
        schedule(env, ctx.job_id, message=message)
        try:
            return dispatcher.dispatch(bound, ctx)
        except Exception as exc:
            tag(exc, stage.origin)
            # an inline run has already recorded (and dead-lettered) its own failure;
            # only a hand-off that never started the job dead-letters it here
            if _still_pending(env, ctx.job_id):
                dead_letter(
                    env,
                    ctx.job_id,
                    message=message or bound.to_json_or_none(ctx),
                    error=f"dispatch failed: {describe_error(exc)}",
                )
            raise

    return call_dispatch


def _still_pending(env: Environment, job_id: str) -> bool:
    try:
        return env.jobs.get(job_id).state is JobState.PENDING
    except JobNotFoundError:
        return True
