# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""Assembling a pipeline: both chain syntaxes, checks at chain() time, freezing, reuse,
and the text/Mermaid pictures of the async boundary."""

from __future__ import annotations

from typing import Any

import pytest

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
    StageRef,
)
from dcore._core.pipeline import Pipeline
from dcore.services import StorageInterface


class Ctx(PipelineContext):
    seen: list[str] = []


class Append(Execute[Ctx]):
    """Appends its tag to ``ctx.seen``; counts how often it was constructed."""

    built = 0

    def __init__(self, tag: str = "x") -> None:
        type(self).built += 1
        self.tag = tag

    def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
        context.seen.append(self.tag)
        return next_fn(context)


def finish(ctx: Ctx) -> list[str]:
    return [*ctx.seen, "core"]


@pytest.fixture
def append_plugin(dcore_registry: PluginRegistry, dcore_env: Environment) -> type[Append]:
    Append.built = 0
    dcore_registry.register("append", Append)
    return Append


def test_keyword_and_reference_syntax_make_the_same_stage(append_plugin: type[Append]) -> None:
    a = Ctx().create_pipeline(finish).chain(Execute, plugin="append", tag="a")
    b = Ctx().create_pipeline(finish).chain(Execute("append", tag="a"))

    assert a.stages == b.stages == [StageRef(Execute, "append", {"tag": "a"})]
    assert a.run() == b.run() == ["a", "core"]


def test_chain_runs_stages_top_to_bottom_and_returns_core_value(
    append_plugin: type[Append],
) -> None:
    pipeline = Ctx().create_pipeline(finish)
    for tag in "abc":
        pipeline.chain(Execute("append", tag=tag))

    assert pipeline.run() == ["a", "b", "c", "core"]


def test_options_both_inside_reference_and_to_chain_are_rejected(
    append_plugin: type[Append],
) -> None:
    pipeline = Ctx().create_pipeline(finish)
    with pytest.raises(PipelineDefinitionError, match=r"Execute\('append', \.\.\.\)"):
        pipeline.chain(Execute("append"), tag="x")


@pytest.mark.parametrize(
    ("stage", "plugin", "culprit"),
    [
        (StorageInterface, "local", "StorageInterface is a service interface"),
        (StorageInterface("local"), None, "StorageInterface is a service interface"),
        (object, "x", "got <class 'object'>"),
        (Execute, None, "needs the plugin's name, got None"),
        (Execute, "", "needs the plugin's name, got ''"),
    ],
)
def test_chain_rejects_what_is_not_a_stage(
    dcore_env: Environment, stage: Any, plugin: str | None, culprit: str
) -> None:
    pipeline = Ctx().create_pipeline(finish)
    with pytest.raises(PipelineDefinitionError) as info:
        pipeline.chain(stage, plugin)
    assert culprit in str(info.value)
    assert pipeline.stages == []


def test_retry_may_be_given_as_a_mapping_of_policy_fields(append_plugin: type[Append]) -> None:
    policy = {"attempts": 3}
    by_keyword = Ctx().create_pipeline(finish).chain(Execute, plugin="append", retry=policy)
    by_reference = Ctx().create_pipeline(finish).chain(Execute("append", retry=policy))

    assert by_keyword.stages == by_reference.stages
    assert by_keyword.stages[0].retry == RetryPolicy(attempts=3)


@pytest.mark.parametrize(
    ("retry", "culprit"),
    [
        ({"attempts": 0}, "retry= of stage 'append' is invalid: attempts: Input should be"),
        ({"atempts": 2}, "is invalid: atempts: Extra inputs are not permitted"),
        (3, "must be a RetryPolicy or a mapping of its fields, got int: 3"),
    ],
)
def test_a_bad_retry_fails_at_chain_naming_the_stage(
    append_plugin: type[Append], retry: Any, culprit: str
) -> None:
    for chain in (
        lambda p: p.chain(Execute, plugin="append", retry=retry),
        lambda p: p.chain(Execute("append", retry=retry)),
    ):
        pipeline = Ctx().create_pipeline(finish)
        with pytest.raises(PipelineDefinitionError, match=culprit):
            chain(pipeline)
        assert pipeline.stages == []


def test_unknown_plugin_fails_at_chain_not_at_run(dcore_env: Environment) -> None:
    pipeline = Ctx().create_pipeline(finish)
    with pytest.raises(PluginNotFoundError, match=r"'loging'.*Did you mean 'logging'"):
        pipeline.chain(Execute, plugin="loging")
    assert pipeline.stages == []


def test_bad_options_fail_at_chain_naming_plugin_and_option(
    append_plugin: type[Append],
) -> None:
    pipeline = Ctx().create_pipeline(finish)
    with pytest.raises(PluginOptionsError, match=r"'append'.*unknown option 'colour'"):
        pipeline.chain(Execute, plugin="append", colour="red")
    assert pipeline.stages == []


def test_second_dispatch_is_rejected_even_with_an_unknown_name(dcore_env: Environment) -> None:
    pipeline = Ctx().create_pipeline(finish).chain(Dispatch("inline"))
    with pytest.raises(PipelineDefinitionError, match="'no_such' \\(stage 1\\) follows 'inline'"):
        pipeline.chain(Dispatch("no_such"))


def test_chain_after_run_raises_because_pipeline_is_frozen(append_plugin: type[Append]) -> None:
    pipeline = Ctx().create_pipeline(finish).chain(Execute("append", tag="a"))
    pipeline.run()

    with pytest.raises(PipelineDefinitionError, match=r"cannot chain 'append'.*frozen"):
        pipeline.chain(Execute("append", tag="late"))
    with pytest.raises(PipelineDefinitionError, match=r"cannot chain 'late2'.*frozen"):
        pipeline.chain(Execute, plugin="late2")
    assert len(pipeline.stages) == 1


def test_run_with_fresh_context_reuses_built_stages(append_plugin: type[Append]) -> None:
    pipeline = Ctx().create_pipeline(finish)
    pipeline.chain(Execute("append", tag="a")).chain(Execute("append", tag="b"))

    first = pipeline.run()
    second = pipeline.run(Ctx(seen=["fresh"]))
    third = pipeline.run(Ctx())

    assert first == ["a", "b", "core"]
    assert second == ["fresh", "a", "b", "core"]
    assert third == ["a", "b", "core"]
    assert Append.built == 2  # one instance per stage, built at the first run only


def test_run_needs_a_context(append_plugin: type[Append]) -> None:
    pipeline: Pipeline[Ctx] = Pipeline(None, finish)
    with pytest.raises(
        PipelineDefinitionError, match="run\\(\\) needs a PipelineContext, got NoneType"
    ):
        pipeline.run()
    with pytest.raises(PipelineDefinitionError, match="got dict"):
        pipeline.run({"seen": []})
    own = Ctx().create_pipeline(finish)  # its own context is known good; others are not
    with pytest.raises(
        PipelineDefinitionError, match="run\\(\\) needs a PipelineContext, got dict"
    ):
        own.run({"seen": []})


def test_pipeline_rejects_non_callable_core_and_non_context() -> None:
    with pytest.raises(PipelineDefinitionError, match="core_fn must be callable, got 42"):
        Pipeline(Ctx(), 42)
    with pytest.raises(PipelineDefinitionError, match="PipelineContext, got str"):
        Pipeline("ctx", finish)


def test_short_circuit_returns_stage_value_without_running_rest(
    dcore_registry: PluginRegistry, append_plugin: type[Append]
) -> None:
    class Stop(Execute[Ctx]):
        def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
            return "cached"

    dcore_registry.register("stop", Stop)
    ctx = Ctx()
    pipeline = ctx.create_pipeline(finish)
    pipeline.chain(Execute("append", tag="a")).chain(Execute("stop"))
    pipeline.chain(Execute("append", tag="b"))

    assert pipeline.run() == "cached"
    assert ctx.seen == ["a"]


def test_stage_may_modify_context_and_wrap_the_rest(
    dcore_registry: PluginRegistry, dcore_env: Environment
) -> None:
    class Wrap(Execute[Ctx]):
        def execute(self, next_fn: NextFn[Ctx], context: Ctx) -> Any:
            context.seen.append("before")
            try:
                return ("wrapped", next_fn(context))
            finally:
                context.seen.append("after")

    dcore_registry.register("wrap", Wrap)
    ctx = Ctx()
    result = ctx.create_pipeline(finish).chain(Execute("wrap")).run()

    assert result == ("wrapped", ["before", "core"])
    assert ctx.seen == ["before", "after"]


# -- describe / mermaid --------------------------------------------------------------------


@pytest.fixture
def named(dcore_registry: PluginRegistry, dcore_env: Environment) -> None:
    for name in ("a", "b", "c", "d"):
        dcore_registry.register(name, type(f"Stage_{name}", (Append,), {}))


def test_describe_shows_sync_part_dispatch_and_background_part(named: None) -> None:
    pipeline = Ctx().create_pipeline(finish)
    pipeline.chain(Execute("a")).chain(Execute("b")).chain(Dispatch("schedule_job"))
    pipeline.chain(Execute("c")).chain(Execute("d"))

    assert pipeline.describe() == (
        "[sync] a → b ⇒ dispatch(schedule_job) ┆ async ┆ [background] c → d → core"
    )


@pytest.mark.parametrize(
    ("chain", "text"),
    [
        ([], "[sync] core"),
        (["a", "b"], "[sync] a → b → core"),
        (["D"], "[sync] ⇒ dispatch(inline) ┆ async ┆ [background] core"),
        (["D", "a"], "[sync] ⇒ dispatch(inline) ┆ async ┆ [background] a → core"),
        (["a", "D"], "[sync] a ⇒ dispatch(inline) ┆ async ┆ [background] core"),
    ],
)
def test_describe_places_boundary_wherever_dispatch_is(
    named: None, chain: list[str], text: str
) -> None:
    pipeline = Ctx().create_pipeline(finish)
    for name in chain:
        pipeline.chain(Dispatch("inline") if name == "D" else Execute(name))
    assert pipeline.describe() == text


def test_mermaid_puts_stages_in_sync_and_background_subgraphs(named: None) -> None:
    pipeline = Ctx().create_pipeline(finish)
    pipeline.chain(Execute("a")).chain(Dispatch("thread")).chain(Execute("c"))

    chart = pipeline.to_mermaid()
    lines = chart.splitlines()

    assert lines[0] == "flowchart LR"
    sync_at = lines.index('  subgraph sync["sync (caller)"]')
    background_at = lines.index('  subgraph background["background"]')
    assert sync_at < lines.index('    s0["a"]') < lines.index('    s1{{"dispatch(thread)"}}')
    assert lines.index('    s1{{"dispatch(thread)"}}') < background_at
    assert background_at < lines.index('    s2["c"]') < lines.index('    s3["core"]')
    assert "  s0 --> s1" in lines
    assert "  s1 -. async .-> s2" in lines
    assert "  s2 --> s3" in lines


def test_mermaid_without_dispatch_has_no_async_edge(named: None) -> None:
    chart = Ctx().create_pipeline(finish).chain(Execute("a")).to_mermaid()
    assert "background" not in chart
    assert "async" not in chart
    assert "  s0 --> s1" in chart.splitlines()
