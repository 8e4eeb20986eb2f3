# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Dispatch("name"), makes a StageRef)
"""``schedule_job`` with a dispatcher name no plugin has: DCORE_DISPATCHER is named when
the setting chose it; a ``using=`` option in code is reported as the plugin it names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcore import (
    Dispatch,
    Environment,
    PipelineContext,
    PluginNotFoundError,
    PluginRegistry,
    use_environment,
)
from dcore.errors import BackendNotFoundError


def core(ctx: PipelineContext) -> str:
    return "done"


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dcore_registry: PluginRegistry
) -> Iterator[Environment]:
    for key in list(os.environ):
        if key.upper().startswith("DCORE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DCORE_DISPATCHER", "threads")
    monkeypatch.setenv("DCORE_STORAGE_ROOT", str(tmp_path))
    environment = Environment.from_env()
    with use_environment(environment):
        yield environment
    environment.close()


def test_an_unknown_dcore_dispatcher_is_named_before_any_stage_runs(env: Environment) -> None:
    ctx = PipelineContext()
    pipeline = ctx.create_pipeline(core).chain(Dispatch("schedule_job"))
    with pytest.raises(BackendNotFoundError) as info:
        pipeline.run()
    message = str(info.value)
    assert message.startswith(
        "DCORE_DISPATCHER='threads' is not valid: no Dispatch plugin named 'threads'; "
        "registered: celery, fastapi, inline, "
    )
    assert message.endswith("Did you mean 'thread'?")
    with pytest.raises(LookupError):  # the error a caller caught before, unchanged
        PipelineContext().create_pipeline(core).chain(Dispatch("schedule_job")).run()
    assert env.jobs.list() == []


def test_an_unknown_using_option_names_the_plugin_not_the_variable(env: Environment) -> None:
    pipeline = (
        PipelineContext().create_pipeline(core).chain(Dispatch("schedule_job", using="inlin"))
    )
    with pytest.raises(PluginNotFoundError) as info:
        pipeline.run()
    assert not isinstance(info.value, BackendNotFoundError)
    assert "DCORE_DISPATCHER" not in str(info.value)
    assert "no Dispatch plugin named 'inlin'" in str(info.value)
