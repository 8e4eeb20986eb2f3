"""The frozen chain: a pipeline compiled once, bound per pipeline, folded into calls.

Three steps turn the stages ``chain()`` checked into one call, like a web framework
folding its middleware list once into a stack:

1. **compile** (:func:`compiled`): look each plugin up in the running environment's
   registry (re-validating the options if the name now means another class), resolve
   retry policies, build the one instance of each *shareable* plugin and the recipe
   (the constructor with its arguments, services included) for every other. The
   result, a :class:`CompiledChain`, depends on nothing but the stages, the environment
   and the registry's generation, so it is kept per environment and reused by every
   pipeline built the same way: a registry change (a new generation) makes it
   unreachable, and closing the environment drops them all.
2. **bind** (:class:`BoundChain`): one pipeline's own plugin instances (fresh unless
   the plugin declares ``shareable = True``; the Dispatch wrapped by
   ``env.dispatch_wrapper``) and its core function. A pipeline keeps its bound chain
   once it has run, and a :class:`~dcore._core.continuation.Continuation` holds it.
3. **fold** (:meth:`BoundChain.call_from`): nested calls from one stage to the core,
   made once per start (the whole chain for ``run()``, the rest after the Dispatch for
   a continuation) by :func:`dcore._core.runner.fold`.

A chain that is not kept (an option holding a list or a dict, a ``retry=`` given as a
mapping) is compiled for its pipeline alone, as every chain was before.

A new kind of stage needs what it must know at compile on
:class:`~dcore._core.runner.Stage` (set in :func:`_compile`), and its own call built in
:func:`dcore._core.runner.fold`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from dcore._core.afold import AsyncCall, afold
from dcore._core.continuation import Continuation
from dcore._core.environment import Environment
from dcore._core.factory import PluginFactory, immutable_values, plugin_signature, rejected
from dcore._core.loops import run_coroutine
from dcore._core.message import StageSpec
from dcore._core.runner import Call, Stage, fold, is_observer, observers_of
from dcore._core.saga import Saga
from dcore._core.stagecheck import CheckedStage
from dcore._plugins.registry import PluginRegistry
from dcore.errors import MessageError, PluginOptionsError

__all__ = ["BoundChain", "CompiledChain", "compiled"]

_CACHE = "dcore.compiled_chains"  # the environment resource holding them
_KEPT = 256  # compiled chains per environment
_BOUND_KEPT = 64  # bound chains per compiled chain without instances of their own


class CompiledChain:
    """A pipeline's stages compiled for one environment and registry generation: shared
    by every pipeline with the same stages, so it holds nothing of one request."""

    __slots__ = (
        "_bound", "async_stages", "compensable", "dispatch", "env", "generation", "observing",
        "registry", "shared", "stages",
    )  # fmt: skip

    def __init__(
        self,
        env: Environment,
        registry: PluginRegistry,
        generation: int,
        stages: Sequence[Stage],
    ) -> None:
        self.env = env
        self.registry = registry
        self.generation = generation
        self.stages = tuple(stages)
        self.dispatch = next((s for s in self.stages if s.is_dispatch), None)
        #: the stages whose plugin observes the pipeline (the tracing stage)
        self.observing = tuple(s.index for s in self.stages if s.observer)
        #: some stage can undo its work (see dcore._core.saga)
        self.compensable = any(s.compensates for s in self.stages)
        #: the indexes of the stages whose ``execute`` is ``async def``
        self.async_stages = tuple(s.index for s in self.stages if s.is_async)
        #: no pipeline has an instance of its own: every plugin is shareable or pooled,
        #: and there is no Dispatch (whose instance the environment may wrap per pipeline)
        self.shared = self.dispatch is None and all(s.build is None for s in self.stages)
        self._bound: dict[Callable[[Any], Any], BoundChain] = {}

    def bind(self, core_fn: Callable[[Any], Any]) -> BoundChain:
        """The chain with a pipeline's own instances and ``core_fn``. When no stage has
        an instance of its own, every pipeline with the same core function gets the one
        bound (and folded) chain."""
        if not self.shared:
            return BoundChain(self, core_fn)
        try:
            bound = self._bound.get(core_fn)
        except TypeError:  # an unhashable callable
            return BoundChain(self, core_fn)
        if bound is None or bound.env_observers is not self.env.observers:
            if len(self._bound) >= _BOUND_KEPT:
                self._bound.clear()
            bound = self._bound[core_fn] = BoundChain(self, core_fn)
        return bound

    def first_async(self, start: int = 0, end: int | None = None) -> Stage | None:
        """The first async stage of stages ``start..end-1``, if any."""
        stop = len(self.stages) if end is None else end
        index = next((i for i in self.async_stages if start <= i < stop), None)
        return None if index is None else self.stages[index]

    def __repr__(self) -> str:
        return f"CompiledChain({', '.join(map(repr, self.stages))})"


def _compile(
    env: Environment, registry: PluginRegistry, checked: Sequence[CheckedStage]
) -> tuple[CompiledChain, bool]:
    """The chain for ``checked`` in ``env``, and whether it may be shared."""
    generation = registry.generation
    factory = PluginFactory(registry=registry, environment=env)
    immutable = True
    stages = []
    for index, item in enumerate(checked):
        ref = item.ref
        cls = registry.get(ref.interface, ref.plugin)
        options = item.options
        if cls is not item.cls:  # the name now means another class: check its options
            options = plugin_signature(cls).validate(ref.plugin, ref.options)
            immutable = immutable and immutable_values(options)
        stage = Stage(index, ref, cls, options, is_dispatch=item.is_dispatch)
        if not stage.pooled or stage.is_dispatch:
            if getattr(cls, "shareable", False) is True:
                stage.shared = factory.instantiate(cls, ref.plugin, options)
            else:
                stage.build = factory.recipe(cls, options)
        stages.append(stage)
    return CompiledChain(env, registry, generation, stages), immutable


class _Kept:
    """An environment's compiled chains, by registry, generation and checked stages;
    the oldest goes first when there are too many. An environment resource: closing the
    environment (which closes the services its chains' plugins hold) drops them."""

    def __init__(self) -> None:
        self.chains: dict[tuple[Any, ...], CompiledChain] = {}
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.chains.clear()


# the last environment's _Kept, so a run finds it without taking the environment's lock
# (weakly: an environment is not kept alive for it)
_last: tuple[Callable[[], Environment | None], _Kept] = (lambda: None, _Kept())


def _kept_in(env: Environment) -> _Kept:
    global _last
    last_env, kept = _last
    if last_env() is not env or kept.closed:
        kept = env.resource(_CACHE, _Kept)
        _last = (weakref.ref(env), kept)
    return kept


def compiled(env: Environment, checked: tuple[CheckedStage, ...], cacheable: bool) -> CompiledChain:
    """The compiled chain for ``checked`` in ``env``: the one compiled before for the
    same stages while the registry is unchanged, else a new one (kept when
    ``cacheable``, i.e. every stage's answer was)."""
    registry = env.registry
    if not cacheable:
        return _compile(env, registry, checked)[0]
    kept = _kept_in(env)
    key = (registry, registry.generation, checked)
    chain = kept.chains.get(key)
    if chain is not None:
        return chain
    chain, immutable = _compile(env, registry, checked)
    if not immutable or chain.generation != key[1]:
        return chain
    with kept.lock:
        if len(kept.chains) >= _KEPT:
            del kept.chains[next(iter(kept.chains))]
        return kept.chains.setdefault(key, chain)


def _instances(stages: Sequence[Stage]) -> list[Any]:
    """One pipeline's plugin instances: the shared one of a shareable plugin, a new one
    of any other (None for a pooled plugin, leased per run)."""
    instances: list[Any] = []
    stage = None
    try:
        for stage in stages:
            build = stage.build
            instances.append(stage.shared if build is None else build())
    except PluginOptionsError:
        raise
    except (TypeError, ValueError) as exc:
        assert stage is not None
        raise rejected(stage.cls, stage.label, exc) from exc
    return instances


class BoundChain:
    """A compiled chain with one pipeline's plugin instances and core function: what
    ``run()`` folds and calls, and what a Continuation runs the rest of.

    Made once per pipeline (when it first runs) and never changed after; the folded
    calls are made on first use, one per start position."""

    __slots__ = (
        "_acalls", "_calls", "compiled", "core_fn", "dispatcher", "env", "env_observers",
        "instances", "observers",
    )  # fmt: skip

    def __init__(self, compiled: CompiledChain, core_fn: Callable[[Any], Any]) -> None:
        env = compiled.env
        self.compiled = compiled
        self.env = env
        self.core_fn = core_fn
        instances = _instances(compiled.stages)
        own = [instances[i] for i in compiled.observing] if compiled.observing else None
        self.dispatcher: Any = None
        dispatch = compiled.dispatch
        if dispatch is not None:
            instance = instances[dispatch.index]
            if env.dispatch_wrapper is not None:
                instance = instances[dispatch.index] = env.dispatch_wrapper(instance)
            self.dispatcher = instance
            if is_observer(instance):
                own = [
                    i
                    for s, i in zip(compiled.stages, instances, strict=True)
                    if s.observer or s is dispatch
                ]
        self.instances = instances
        # a stage plugin that also observes (tracing) sees every stage of its pipeline
        self.env_observers = env.observers  # a live list, read per call (unless replaced)
        self.observers = observers_of(env.observers, own) if own else env.observers
        self._calls: dict[int, Call] = {}
        self._acalls: dict[tuple[int, bool], AsyncCall] = {}

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.compiled.stages

    def call_from(self, start: int) -> Call:
        """Stages ``start..n`` then the core, as one call (folded once, then reused)."""
        call = self._calls.get(start)
        if call is None:
            call = self._calls.setdefault(start, self._fold(start))
        return call

    def _fold(self, start: int) -> Call:
        return fold(
            self.compiled.stages[start:],
            self.instances,
            self.core_fn,
            self.env,
            self.observers,
            self._rest_after,
        )

    def acall_from(self, start: int, *, offload: bool) -> AsyncCall:
        """Stages ``start..`` up to the hand-off (or the core) as one coroutine function
        (see :mod:`dcore._core.afold`): plain stages in a worker thread when
        ``offload``, else on the loop. Folded once per start, then reused."""
        call = self._acalls.get((start, offload))
        if call is None:
            stages = self.compiled.stages
            dispatch = self.compiled.dispatch
            end = (
                dispatch.index + 1
                if dispatch is not None and dispatch.index >= start
                else len(stages)
            )
            call = self._acalls.setdefault(
                (start, offload),
                afold(
                    stages[start:end],
                    self.instances,
                    self.core_fn,
                    self.env,
                    self.observers,
                    self._rest_after,
                    offload=offload,
                ),
            )
        return call

    def _rest_after(self, dispatch: Stage) -> Continuation[Any]:
        return Continuation(self, dispatch.index + 1, dispatch.declared_policy)

    def run_from(self, resume_at: int, ctx: Any) -> Any:
        """Run stages ``resume_at..n`` and the core over ``ctx``: where they include
        async stages, to completion on this thread's event loop (every engine's
        background part comes through here)."""
        if resume_at > len(self.compiled.stages):
            raise MessageError(
                f"resume_at={resume_at} is past the end of a "
                f"{len(self.compiled.stages)}-stage pipeline"
            )
        if self.compiled.async_stages and self.compiled.first_async(resume_at) is not None:
            return run_coroutine(self.env, self.acall_from(resume_at, offload=False)(ctx))
        return self.call_from(resume_at)(ctx)

    def continuation(self, resume_at: int) -> Continuation[Any]:
        """The rest from stage ``resume_at`` on, with the job policy its Dispatch (the
        stage before it) declared."""
        stages = self.compiled.stages
        before = stages[resume_at - 1] if 0 < resume_at <= len(stages) else None
        policy = before.declared_policy if before is not None and before.is_dispatch else None
        return Continuation(self, resume_at, policy)

    def saga(self, context: Any, before: int = 0) -> Saga | None:
        """The compensations of this pipeline over ``context`` (None: no stage can undo
        its work); ``before`` stages ran before the hand-off."""
        if not self.compiled.compensable:
            return None
        return Saga(self.compiled.stages, self.instances, context, self.env, before)

    def spec(self) -> list[StageSpec]:
        """The stages as a JobMessage ships them."""
        return [s.spec() for s in self.compiled.stages]

    def __repr__(self) -> str:
        core = getattr(self.core_fn, "__qualname__", type(self.core_fn).__qualname__)
        return f"BoundChain(core={core}, stages={list(self.compiled.stages)})"
