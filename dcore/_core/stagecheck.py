"""Checking one ``chain()`` call, and remembering the answer.

``chain()`` fails fast: a call that is not a stage, a bad ``retry=``, an unknown plugin
or bad options raise there, naming the stage. A service that builds the same pipeline
for every request asks the same questions every time, so a successful answer, a
:class:`CheckedStage`, is kept per registry and reused while the registry's
``generation`` is unchanged: any registration or unregistration makes every earlier
answer unreachable.

What is kept, and what is not:

- only answers whose key is made of immutable scalars (``str``, ``int``, ``float``,
  ``bool``, ``bytes``, ``None``; each value's type is part of the key, so ``1``, ``1.0``
  and ``True`` stay apart) and whose validated options are immutable too, so no two
  pipelines can share a value either could change;
- failures never: a bad stage takes the full path and raises the same error every time.

A kept answer is shared by every pipeline that chains the same stage, so its stage
reference's options and its validated options are read-only mappings.

The full path (:func:`stage_ref`, then :meth:`Answers.check`) is what ``chain()``
always did; a look-up in :attr:`Answers.entries` by the call's :data:`StageKey` (built
in ``Pipeline.chain``) stands in front of it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from dcore._core.factory import immutable_values, plugin_signature
from dcore._core.message import summarise
from dcore._core.retry import RetryPolicy
from dcore._plugins.interfaces import Dispatch, Execute, StageRef
from dcore._plugins.registry import PluginRegistry, is_interface
from dcore.errors import PipelineDefinitionError

__all__ = [
    "Answers",
    "CheckedStage",
    "StageKey",
    "answers",
    "is_dispatch",
    "stage_ref",
    "storable",
]

#: What identifies a ``chain()`` call: interface, plugin, the retry policy unless it is
#: None, then name, type and value of each option, in the order given. Built by
#: ``Pipeline.chain`` for any call; only :func:`storable` ones are kept.
StageKey = tuple[Any, ...]

_ATOMIC = frozenset({str, int, float, bool, bytes, type(None)})
_REGISTRIES_KEPT = 64  # registries with answers (tests make one each)
_ANSWERS_KEPT = 1024  # answers per registry


class CheckedStage:
    """A stage as ``chain()`` accepted it: its reference, the plugin class the registry
    named and the options validated for that class. Immutable once made; a cached one is
    shared by every pipeline that chains the same stage."""

    __slots__ = ("cacheable", "cls", "is_dispatch", "options", "ref")

    def __init__(
        self, ref: StageRef, cls: type, options: Mapping[str, Any], cacheable: bool
    ) -> None:
        self.ref = ref
        self.cls = cls
        self.options = options
        self.is_dispatch = is_dispatch(ref.interface)
        #: whether pipelines made of it may share a compiled chain (see dcore._core.chain)
        self.cacheable = cacheable

    def __repr__(self) -> str:
        return f"CheckedStage({self.ref!r})"


def is_dispatch(interface: type) -> bool:
    return interface is Dispatch or (interface is not Execute and issubclass(interface, Dispatch))


def storable(key: StageKey) -> bool:
    """Whether an answer may be kept under ``key``: a stage interface, a plugin name, a
    RetryPolicy if any, and options whose values are immutable scalars (each value's
    type is in the key, so ``1``, ``1.0`` and ``True`` stay apart)."""
    if len(key) < 2 or not isinstance(key[0], type) or type(key[1]) is not str:
        return False
    has_retry = len(key) % 3 == 0  # (stage, plugin, retry, *options) vs (stage, plugin, *options)
    if has_retry and type(key[2]) is not RetryPolicy:
        return False
    return all(kind in _ATOMIC for kind in key[3 if has_retry else 2 :][1::3])


class Answers:
    """The answers checked against one generation of one registry. Stale, and never
    consulted again, once the registry changes: ``generation != registry.generation``
    (what ``chain()`` compares before each look-up in :attr:`entries`)."""

    __slots__ = ("entries", "generation", "registry")

    def __init__(self, registry: PluginRegistry, generation: int) -> None:
        self.registry = registry
        self.generation = generation
        self.entries: dict[StageKey, CheckedStage] = {}

    def check(self, ref: StageRef, key: StageKey) -> CheckedStage:
        """The full check of ``ref`` (PluginNotFoundError, PluginOptionsError), kept
        under ``key`` when it may be shared."""
        cls = self.registry.get(ref.interface, ref.plugin)
        options = plugin_signature(cls).validate(ref.plugin, ref.options)
        if not storable(key) or not immutable_values(options):
            return CheckedStage(ref, cls, options, cacheable=False)
        frozen = StageRef(ref.interface, ref.plugin, MappingProxyType(dict(ref.options)), ref.retry)
        checked = CheckedStage(frozen, cls, MappingProxyType(options), cacheable=True)
        # a registry change since this generation began makes these answers stale, so
        # keeping one checked against the newer registry here does no harm
        entries = self.entries
        if len(entries) >= _ANSWERS_KEPT:
            entries.clear()
        return entries.setdefault(key, checked)


_answers: dict[PluginRegistry, Answers] = {}
_answers_lock = threading.Lock()


def answers(registry: PluginRegistry) -> Answers:
    """The answers for ``registry`` as it is now (empty after any change to it)."""
    # read without the lock first (every new pipeline asks): a dict look-up is atomic,
    # and answers found stale or missing are made under it
    found = _answers.get(registry)
    if found is not None and found.generation == registry.generation:
        return found
    with _answers_lock:
        found = _answers.get(registry)
        if found is None or found.generation != registry.generation:
            if len(_answers) >= _REGISTRIES_KEPT:
                _answers.clear()
            found = _answers[registry] = Answers(registry, registry.generation)
        return found


# -- the form of a chain() call ---------------------------------------------------------------
def stage_ref(
    stage: type | StageRef,
    plugin: str | None,
    retry: RetryPolicy | Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> StageRef:
    """The stage reference a ``chain()`` call means; PipelineDefinitionError naming the
    mistake for anything that is not a stage."""
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
