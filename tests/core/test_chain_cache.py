# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""What ``chain()`` and the first ``run()`` remember between pipelines, and what they must
not: a registry change, a replaced plugin, a closed environment or another core function
is always seen; a plugin instance belongs to one pipeline unless its class declares
``shareable = True``; a cached check never changes what a plugin receives."""

from __future__ import annotations

import enum
import math
import threading
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcore import (
    Dispatch,
    Environment,
    Execute,
    NextFn,
    PipelineContext,
    PipelineDefinitionError,
    PluginNotFoundError,
    PluginOptionsError,
    PluginRegistry,
    RetryPolicy,
    run_message,
)
from dcore._core.pipeline import Pipeline
from dcore._core.retry import declared_policy
from dcore._plugins.registry import register_core_function
from dcore.services.storage import StorageInterface
from tests.core.dcore_roundtrip_support import rt  # registers its plugins by default


class Ctx(PipelineContext):
    seen: list[Any] = []


class Record(Execute[Ctx]):
    """Appends (tag, this instance) to ``ctx.seen``."""

    def __init__(self, tag: str = "x") -> None:
        self.tag = tag

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        context.seen.append((self.tag, self))
        return next_fn(context)


class SharedRecord(Record):
    shareable = True


class Loud(Record):
    """What ``record`` is replaced by: tags in capitals."""

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        context.seen.append((self.tag.upper(), self))
        return next_fn(context)


class Strict(Execute[Ctx]):
    """Takes no ``tag``: replacing ``record`` with it makes old options invalid."""

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        return next_fn(context)


def core(ctx: Ctx) -> list[Any]:
    return [tag for tag, _ in ctx.seen]


def other_core(ctx: Ctx) -> str:
    return "other"


@pytest.fixture
def plugins(dcore_registry: PluginRegistry, dcore_env: Environment) -> PluginRegistry:
    dcore_registry.register("record", Record)
    dcore_registry.register("shared_record", SharedRecord)
    return dcore_registry


def build(
    plugin: str = "record", tags: tuple[str, ...] = ("a", "b"), fn: Any = core
) -> Pipeline[Ctx]:
    pipeline = Ctx().create_pipeline(fn)
    for tag in tags:
        pipeline.chain(Execute, plugin=plugin, tag=tag)
    return pipeline


def instances(ctx: Ctx) -> list[Any]:
    return [instance for _, instance in ctx.seen]


# -- per-pipeline instances -------------------------------------------------------------------
def test_pipelines_built_alike_get_their_own_instances(plugins: PluginRegistry) -> None:
    first, second = Ctx(), Ctx()
    build().run(first)
    build().run(second)

    assert [t for t, _ in first.seen] == [t for t, _ in second.seen] == ["a", "b"]
    assert not set(map(id, instances(first))) & set(map(id, instances(second)))


def test_a_shareable_plugin_is_one_instance_for_pipelines_built_alike(
    plugins: PluginRegistry,
) -> None:
    first, second = Ctx(), Ctx()
    build("shared_record").run(first)
    build("shared_record").run(second)

    assert instances(first) == instances(second)
    assert all(a is b for a, b in zip(instances(first), instances(second), strict=True))


def test_concurrent_requests_never_share_an_instance_unless_it_is_shareable(
    plugins: PluginRegistry,
) -> None:
    """Two requests in flight at once (both inside the last stage at the same moment)."""
    both_inside = threading.Barrier(2, timeout=10)

    class Meet(Execute[Ctx]):
        def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
            context.seen.append(("meet", self))
            both_inside.wait()
            return next_fn(context)

    plugins.register("meet", Meet)
    contexts = [Ctx(), Ctx()]
    errors: list[BaseException] = []

    def request(ctx: Ctx) -> None:
        try:
            pipeline = ctx.create_pipeline(core)
            pipeline.chain(Execute("record", tag="own")).chain(Execute("shared_record", tag="s"))
            pipeline.chain(Execute("meet")).run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(ctx,)) for ctx in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    (own_1, shared_1, meet_1), (own_2, shared_2, meet_2) = map(instances, contexts)
    assert own_1 is not own_2
    assert meet_1 is not meet_2
    assert shared_1 is shared_2


def test_a_copy_runs_with_instances_of_its_own(plugins: PluginRegistry) -> None:
    template = build()
    first, second = Ctx(), Ctx()
    template.copy().run(first)
    template.copy().run(second)

    assert core(first) == core(second) == ["a", "b"]
    assert not set(map(id, instances(first))) & set(map(id, instances(second)))
    assert template.stages == build().stages
    template.chain(Execute("record", tag="c"))  # the template itself never froze
    assert len(template.stages) == 3


def test_each_delivery_of_a_message_runs_with_instances_of_its_own(
    plugins: PluginRegistry, dcore_env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker keeps the pipeline it rebuilt from a message, but each delivery runs a
    copy with instances of its own."""
    dcore_env.memory_services_shared = True  # the capturing "worker" is this process
    rt.Capture.captured.clear()
    ctx = rt.RoundTripContext(name="m")
    pipeline = ctx.create_pipeline(rt.summarize)
    pipeline.chain(Dispatch("rt_capture")).chain(Execute("rt_mark", tag="after"))
    pipeline.run()
    [(continuation, shipped)] = rt.Capture.captured
    built: list[Any] = []
    original_init = rt.Mark.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(rt.Mark, "__init__", recording_init)
    for n in range(2):
        message = continuation.to_message(shipped).model_copy(deep=True)
        message.job_id = message.context.data["job_id"] = f"{n:032x}"
        assert run_message(message)["steps"] == ["after", "core"]

    assert len(built) == 2
    assert built[0] is not built[1]


# -- what makes a remembered chain stale ------------------------------------------------------
def test_a_registry_change_builds_shareable_plugins_again(plugins: PluginRegistry) -> None:
    first, second, third = Ctx(), Ctx(), Ctx()
    build("shared_record").run(first)
    build("shared_record").run(second)
    plugins.register("unrelated", Strict)  # any registration is a new generation
    build("shared_record").run(third)

    assert instances(first)[0] is instances(second)[0]
    assert instances(third)[0] is not instances(first)[0]


def test_a_replaced_plugin_is_used_by_pipelines_built_after(plugins: PluginRegistry) -> None:
    assert build().run() == ["a", "b"]

    plugins.register("record", Loud, replace=True)

    assert build().run() == ["A", "B"]


def test_a_plugin_replaced_between_chain_and_run_is_the_one_that_runs(
    plugins: PluginRegistry,
) -> None:
    chained = build()
    plugins.register("record", Loud, replace=True)

    assert chained.run() == ["A", "B"]


def test_options_are_checked_again_when_the_plugin_was_replaced_before_run(
    plugins: PluginRegistry,
) -> None:
    chained = build()
    plugins.register("record", Strict, replace=True)

    with pytest.raises(PluginOptionsError, match="unknown option 'tag'"):
        chained.run()


def test_a_plugin_unregistered_after_chain_fails_at_run(plugins: PluginRegistry) -> None:
    build().run()  # compiled and remembered
    chained = build()
    plugins.unregister(Execute, "record")

    with pytest.raises(PluginNotFoundError, match="no Execute plugin named 'record'"):
        chained.run()
    with pytest.raises(PluginNotFoundError, match="no Execute plugin named 'record'"):
        build()


def test_pipelines_sharing_every_instance_still_run_their_own_core(
    plugins: PluginRegistry,
) -> None:
    assert build("shared_record").run() == ["a", "b"]
    assert build("shared_record", fn=other_core).run() == "other"
    assert build("shared_record").run() == ["a", "b"]


def test_a_replaced_core_function_is_what_a_worker_runs(dcore_env: Environment) -> None:
    dcore_env.memory_services_shared = True  # the capturing "worker" is this process
    rt.Capture.captured.clear()
    ctx = rt.RoundTripContext(name="m")
    ctx.create_pipeline(rt.summarize).chain(Dispatch("rt_capture")).run()
    [(continuation, shipped)] = rt.Capture.captured
    message = continuation.to_message(shipped)
    assert run_message(message.to_json())["steps"] == ["core"]

    def replacement(context: Any) -> str:
        return "replaced"

    register_core_function(replacement, message.core_fn, replace=True)
    try:
        again = message.model_copy(update={"job_id": "e" * 32}, deep=True)
        again.context.data["job_id"] = "e" * 32
        assert run_message(again.to_json()) == "replaced"
    finally:
        register_core_function(rt.summarize, message.core_fn, replace=True)


def test_closing_the_environment_builds_shareable_plugins_with_its_new_services(
    dcore_registry: PluginRegistry, dcore_env: Environment
) -> None:
    class Writer(Execute[Ctx]):
        shareable = True

        def __init__(self, storage: StorageInterface) -> None:
            self.storage = storage

        def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
            context.seen.append(("w", self))
            return next_fn(context)

    dcore_registry.register("writer", Writer)
    before, after = Ctx(), Ctx()
    Ctx().create_pipeline(core).chain(Execute("writer")).run(before)
    dcore_env.close()
    Ctx().create_pipeline(core).chain(Execute("writer")).run(after)

    (old,), (new,) = instances(before), instances(after)
    assert old is not new
    assert new.storage is dcore_env.storage
    assert old.storage is not dcore_env.storage


# -- observers are read live --------------------------------------------------------------
def test_an_observer_added_after_a_chain_was_compiled_sees_every_stage(
    plugins: PluginRegistry, dcore_env: Environment
) -> None:
    class Seen:
        def __init__(self) -> None:
            self.events: list[tuple[str, str]] = []

        def stage_enter(self, stage: Any, context: Any) -> None:
            self.events.append(("enter", stage.origin))

        def stage_exit(self, stage: Any, context: Any, error: BaseException | None) -> None:
            self.events.append(("exit", stage.origin))

    earlier = build("shared_record")
    earlier.run()
    observer = Seen()
    dcore_env.observers.append(observer)
    build("shared_record").run()
    earlier.run(Ctx())
    replacement = Seen()
    dcore_env.observers = [replacement]  # a new list: pipelines built from now on use it
    build("shared_record").run()

    one_run = [
        ("enter", "shared_record#0"),
        ("enter", "shared_record#1"),
        ("exit", "shared_record#1"),
        ("exit", "shared_record#0"),
    ]
    assert observer.events == one_run * 2
    assert replacement.events == one_run


# -- a cached check never changes what the plugin gets -------------------------------------------
class Keep(Execute[Ctx]):
    shareable = False
    kept: ClassVar[list[Any]] = []

    def __init__(self, value: Any = None) -> None:
        Keep.kept.append(value)

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        return next_fn(context)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.binary(max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(SCALARS, min_size=1, max_size=6))
def test_each_pipeline_gets_the_option_value_and_type_it_was_given(values: list[Any]) -> None:
    """1, 1.0 and True are equal keys to a dict; the cache must still keep them apart."""
    from dcore import DcoreSettings, default_registry, use_environment, use_registry

    registry = default_registry().copy()
    registry.register("keep", Keep)
    with (
        use_registry(registry),
        Environment(DcoreSettings(), registry=registry) as env,
        use_environment(env),
    ):
        for value in values:
            Keep.kept.clear()
            Ctx().create_pipeline(core).chain(Execute("keep", value=value)).run()
            [got] = Keep.kept
            assert type(got) is type(value)
            assert got == value or (math.isnan(got) and math.isnan(value))


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    ONE = 1


def test_an_enum_member_equal_to_a_remembered_scalar_keeps_its_type(
    plugins: PluginRegistry,
) -> None:
    """``"red" == Colour.RED`` and ``1 == Level.ONE``, with equal hashes: the remembered
    answer for the scalar must not serve the member, nor the other way round."""
    plugins.register("keep", Keep)
    for value in ["red", Colour.RED, "red", 1, Level.ONE, True, 1.0, Level.ONE]:
        Keep.kept.clear()
        Ctx().create_pipeline(core).chain(Execute, plugin="keep", value=value).run()
        Ctx().create_pipeline(core).chain(Execute("keep", value=value)).run()
        assert [type(v) for v in Keep.kept] == [type(value)] * 2


def test_mutable_option_values_are_never_shared_between_pipelines(
    plugins: PluginRegistry,
) -> None:
    plugins.register("keep", Keep)
    Keep.kept.clear()
    for _ in range(2):
        Ctx().create_pipeline(core).chain(Execute("keep", value=[1])).run()

    first, second = Keep.kept
    assert first == second == [1]
    first.append(2)
    assert second == [1]


def test_a_bad_option_fails_at_chain_after_a_good_one_was_remembered(
    plugins: PluginRegistry,
) -> None:
    build(tags=("a",)).run()

    for _ in range(2):
        with pytest.raises(PluginOptionsError, match=r"bad options for plugin 'record'.*'tag'"):
            Ctx().create_pipeline(core).chain(Execute("record", tag=3))


def test_a_second_dispatch_is_refused_when_both_were_remembered(
    dcore_env: Environment,
) -> None:
    Ctx().create_pipeline(core).chain(Dispatch("inline"))  # remembered

    pipeline = Ctx().create_pipeline(core).chain(Dispatch("inline"))
    with pytest.raises(PipelineDefinitionError, match=r"'inline' \(stage 1\) follows"):
        pipeline.chain(Dispatch("inline"))


def test_a_nearer_none_does_not_hide_a_declared_retry_policy() -> None:
    class Declares(Execute[Ctx]):
        retry_policy: ClassVar[RetryPolicy | None] = RetryPolicy(attempts=4)

        def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
            return next_fn(context)

    class Silent(Declares):
        retry_policy = None

    policy = declared_policy(None, Silent)
    assert policy is not None
    assert policy.attempts == 4


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ((Execute, "keep"), True),
        ((Execute, "keep", "value", int, 1), True),
        ((Execute, "keep", RetryPolicy(attempts=2), "value", bool, True), True),
        ((Execute, "keep", "value", Colour, Colour.RED), False),  # not a plain scalar
        ((Execute, "keep", "value", list, (1,)), False),
        ((Execute, "keep", "not a policy", "value", int, 1), False),
        (("Execute", "keep"), False),  # not an interface
        ((Execute, 1), False),
        ((), False),  # a call in neither form
    ],
)
def test_only_answers_keyed_by_plain_scalars_are_kept(key: tuple[Any, ...], kept: bool) -> None:
    from dcore._core.stagecheck import storable

    assert storable(key) is kept
