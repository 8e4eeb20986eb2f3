"""Readable, short and deterministic reprs for pipelines, stage references and stage
specs: what a test or Hypothesis failure report prints instead of
``<Pipeline object at 0x...>``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcore import (
    Dispatch,
    Execute,
    Pipeline,
    PipelineContext,
    PluginRegistry,
    RetryPolicy,
    StageSpec,
)
from dcore_testing.strategies import pipelines


class ReprCtx(PipelineContext):
    name: str = "x"


def finish(ctx: ReprCtx) -> str:
    return ctx.name


class Opaque:
    """An option value with the default repr, which carries a memory address."""


def _upload(registry: PluginRegistry) -> Pipeline[ReprCtx]:
    pipeline = ReprCtx().create_pipeline(finish)
    pipeline.chain(Execute("logging")).chain(Dispatch("schedule_job"))
    pipeline.chain(Execute("storage_write", prefix="uploads/"))
    return pipeline


def test_a_pipeline_shows_its_core_and_stages(dcore_registry: PluginRegistry) -> None:
    assert repr(_upload(dcore_registry)) == (
        "Pipeline(core=tests.testing.test_reprs:finish, stages=[Execute('logging'), "
        "Dispatch('schedule_job'), Execute('storage_write', prefix='uploads/')])"
    )


def test_a_pipeline_repr_is_the_same_for_equal_pipelines_and_after_a_run(
    dcore_registry: PluginRegistry,
) -> None:
    first, second = _upload(dcore_registry), _upload(dcore_registry)
    assert repr(first) == repr(second)
    pipeline = ReprCtx().create_pipeline(lambda ctx: ctx.name).chain(Execute("logging"))
    before = repr(pipeline)
    pipeline.run()
    assert (
        repr(pipeline)
        == before
        == (
            "Pipeline(core=tests.testing.test_reprs:test_a_pipeline_repr_is_the_same_for_equal_"
            "pipelines_and_after_a_run.<locals>.<lambda>, stages=[Execute('logging')])"
        )
    )


@pytest.mark.parametrize(
    ("ref", "text"),
    [
        (Execute("logging"), "Execute('logging')"),
        (Dispatch("celery", queue="q"), "Dispatch('celery', queue='q')"),
        (
            Execute("upload", retry=RetryPolicy(attempts=5, initial=0.5)),
            "Execute('upload', retry=RetryPolicy(attempts=5, initial=0.5))",
        ),
        (
            Execute("upload", retry=RetryPolicy(retry_on=(TimeoutError, ConnectionError))),
            "Execute('upload', retry=RetryPolicy(retry_on=(TimeoutError, ConnectionError)))",
        ),
        (
            Execute("upload", retry=RetryPolicy(retry_on=TimeoutError)),
            "Execute('upload', retry=RetryPolicy(retry_on=(TimeoutError,)))",
        ),
        (Execute("x", key="k" * 100), "Execute('x', key='kkkkkkkkkkkkkkkkk...kkkkkkkkkkkkkkkkkk')"),
        (Execute("x", nested=[[1], {"a": 1}]), "Execute('x', nested=[[...], {...}])"),
        (Execute("x", ids=list(range(100))), "Execute('x', ids=[0, 1, 2, 3, 4, 5, ...])"),
        (
            Execute("x", hook=finish, kind=ValueError),
            "Execute('x', hook=tests.testing.test_reprs:finish, kind=builtins:ValueError)",
        ),
    ],
)
def test_a_stage_ref_reads_like_the_call_that_builds_it(ref: Any, text: str) -> None:
    assert repr(ref) == text


def test_a_stage_ref_repr_carries_no_memory_address() -> None:
    text = repr(Execute("x", value=Opaque()))
    assert text == "Execute('x', value=<tests.testing.test_reprs.Opaque>)"
    assert not re.search(r"0x[0-9a-f]+", text)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (
            StageSpec(interface="Dispatch", plugin="schedule_job"),
            "StageSpec('Dispatch', 'schedule_job')",
        ),
        (
            StageSpec(
                interface="Execute",
                plugin="lock",
                options={"key": "index", "ttl": 30},
                retry={"attempts": 3},
            ),
            "StageSpec('Execute', 'lock', key='index', ttl=30, retry={'attempts': 3})",
        ),
    ],
)
def test_a_stage_spec_shows_only_what_is_set(spec: StageSpec, text: str) -> None:
    assert repr(spec) == text


def test_a_hypothesis_failure_report_shows_the_pipeline(dcore_registry: PluginRegistry) -> None:
    @settings(max_examples=50, database=None, derandomize=True)
    @given(
        pipelines(
            ReprCtx(),
            finish,
            ["logging", Execute("storage_write", prefix="u/")],
            min_stages=1,
            max_stages=2,
        )
    )
    def never_two_stages(pipeline: Pipeline[Any]) -> None:
        assert len(pipeline.stages) < 2

    with pytest.raises(AssertionError) as info:
        never_two_stages()
    report = "\n".join(getattr(info.value, "__notes__", []))
    assert "pipeline=Pipeline(core=tests.testing.test_reprs:finish, stages=[" in report
    assert "object at 0x" not in report


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=100),
    lambda inner: (
        st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=5), inner, max_size=10)
    ),
    max_leaves=40,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(JSON, min_size=1, max_size=4))
def test_stage_reprs_stay_short_and_deterministic(values: list[Any]) -> None:
    options = {f"o{i}": value for i, value in enumerate(values)}
    text = repr(Execute("plugin", **options))
    assert text == repr(Execute("plugin", **options))
    # per option: name, and at most 6 items (or keys and values) of at most 40 characters
    assert len(text) <= len("Execute('plugin')") + len(values) * (6 + 6 * (40 + 2 + 40 + 2))
