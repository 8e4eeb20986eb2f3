"""Running one stage: origin tagging, the stage's own retries, observers, pooled plugins.

An exception is tagged with the stage whose own code raised it (``plugin#index``, or
``core``), so a stage's retry policy covers failures of its own body only, never those
raised further down the chain, and retries cannot multiply down a pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dcore.core import events
from dcore.core.environment import Environment
from dcore.core.factory import PluginFactory
from dcore.core.interfaces import Dispatch, StageRef
from dcore.core.lifecycle import describe_error
from dcore.core.message import StageSpec
from dcore.core.pool import PluginPool
from dcore.core.retry import NO_RETRY, RetryPolicy, call_with_retry, declared_policy

if TYPE_CHECKING:
    from dcore.core.observe import PipelineObserver

__all__ = ["Call", "Stage", "execute_call", "is_observer", "observers_of", "origin_of", "tag"]

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


def tag(exc: BaseException, origin: str) -> None:
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


def is_observer(instance: Any) -> bool:
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


def observers_of(shared: Sequence[PipelineObserver], own: list[Any]) -> Sequence[PipelineObserver]:
    """The observers a pipeline's stages report to: the environment's, then its own."""
    return _Observers(shared, own) if own else shared


def execute_call(
    stage: Stage, next_call: Call, env: Environment, observers: Sequence[PipelineObserver]
) -> Call:
    policy = stage.policy
    clock = env.clock
    pool: PluginPool | None = None
    if stage.pooled:
        # built in this environment: its registry and services, not the current one's
        pool = env.resource(
            "dcore.plugin_pool", lambda: PluginPool(PluginFactory(environment=env))
        )
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
            tag(exc, origin)
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
