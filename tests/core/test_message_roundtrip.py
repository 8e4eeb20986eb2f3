# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""The serializable hand-off: ``to_message`` → JSON → ``run_message`` in a fresh
interpreter gives what the in-process run gives, and a remote hand-off is checked
before any stage runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dcore import (
    ContextSerializationError,
    DcoreSettings,
    Dispatch,
    Environment,
    Execute,
    JobHandle,
    JobMessage,
    JobState,
    NextFn,
    PipelineContext,
    PluginNotFoundError,
    PluginRegistry,
    core_function,
    run_message,
    use_environment,
)
from dcore.errors import JobNotFoundError
from tests.core.dcore_roundtrip_support import MODULE, rt

HERE = Path(__file__).parent

PAYLOAD = bytes(range(256)) + b"\xff\xfe\x00"


@pytest.fixture(autouse=True)
def _clear_captured() -> None:
    rt.Capture.captured.clear()


@pytest.fixture(autouse=True)
def _worker_in_this_process(dcore_env: Environment) -> None:
    """The captured messages run here, so the memory job store is the worker's too."""
    dcore_env.memory_services_shared = True


def remote_pipeline(ctx: Any, core: Any = None) -> Any:
    pipeline = ctx.create_pipeline(core or rt.summarize)
    pipeline.chain(Execute("rt_mark", tag="before")).chain(Dispatch("rt_capture"))
    pipeline.chain(Execute("rt_mark", tag="after1"))
    pipeline.chain(Execute, plugin="rt_mark", tag="after2")
    return pipeline


EXPECTED = {
    "name": "report",
    "steps": ["before", "after1", "after2", "core"],
    "size": len(PAYLOAD),
    "head": PAYLOAD[:4].hex(),
}


def _run_in_fresh_interpreter(message: str, tmp_path: Path) -> dict[str, Any]:
    code = (
        "import json, sys\n"
        "from dcore import current_environment\n"
        "from dcore._worker import run_message\n"
        "raw = sys.stdin.read()\n"
        "result = run_message(raw)\n"
        "record = current_environment().jobs.get(json.loads(raw)['job_id'])\n"
        "print(json.dumps({'result': result, 'state': record.state,\n"
        "                  'modules': sorted(m for m in sys.modules if 'roundtrip' in m)}))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "DCORE_IMPORTS": MODULE,
        "DCORE_STORAGE_ROOT": str(tmp_path / "worker-storage"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=message,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_message_runs_the_same_in_a_fresh_interpreter_as_in_process(
    dcore_env: Environment, tmp_path: Path
) -> None:
    ctx = rt.RoundTripContext(name="report", payload=PAYLOAD)
    handle = remote_pipeline(ctx).run()
    [(continuation, shipped)] = rt.Capture.captured
    assert handle == JobHandle(job_id=ctx.job_id, status="scheduled")
    assert shipped.steps == ["before"]  # the sync part ran before the hand-off

    wire = continuation.to_message(shipped).to_json()

    # in this process, through the continuation itself (on a copy) and through the message
    in_process = continuation(shipped.model_copy(deep=True))
    with (
        Environment(
            DcoreSettings(storage_root=tmp_path / "w"), registry=dcore_env.registry
        ) as worker_env,
        use_environment(worker_env),
    ):
        from_message = run_message(wire)
        assert worker_env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED
    fresh = _run_in_fresh_interpreter(wire, tmp_path)

    assert in_process == from_message == fresh["result"] == EXPECTED
    assert fresh["state"] == "SUCCEEDED"
    assert fresh["modules"] == [MODULE]  # DCORE_IMPORTS, and nothing the message named


def test_message_is_the_documented_versioned_json(dcore_env: Environment) -> None:
    ctx = rt.RoundTripContext(name="report", payload=b"\x00\x01")
    remote_pipeline(ctx).run()
    [(continuation, shipped)] = rt.Capture.captured

    data = json.loads(continuation.to_message(shipped, attempt=2).to_json())

    assert data["dcore"] == 1
    assert data["job_id"] == ctx.job_id
    assert data["attempt"] == 2
    assert data["resume_at"] == 2
    assert data["spec"] == [
        {"interface": "Execute", "plugin": "rt_mark", "options": {"tag": "before"}, "retry": None},
        {"interface": "Dispatch", "plugin": "rt_capture", "options": {}, "retry": None},
        {"interface": "Execute", "plugin": "rt_mark", "options": {"tag": "after1"}, "retry": None},
        {"interface": "Execute", "plugin": "rt_mark", "options": {"tag": "after2"}, "retry": None},
    ]
    assert data["core_fn"] == f"{MODULE}:summarize"
    assert data["context"]["type"] == f"{MODULE}:RoundTripContext"
    assert data["context"]["version"] == "1.0"
    assert data["context"]["data"]["payload"] == "AAE="  # base64
    assert data["context"]["data"]["steps"] == ["before"]
    assert data["shard"] == ctx.shard_key
    assert isinstance(data["trace"], dict)
    assert JobMessage.parse(json.dumps(data)).job_id == ctx.job_id


# -- up-front validation of a remote hand-off ---------------------------------------------


class WithConnection(rt.RoundTripContext):  # type: ignore[name-defined,misc]
    connection: object = None


class Loose(Execute[Any]):
    def __init__(self, **options: Any) -> None:
        self.options = options

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        context.steps.append("loose")
        return next_fn(context)


@core_function
def module_level_core(ctx: Any) -> str:
    return "done"


def assert_nothing_ran(env: Environment, ctx: Any) -> None:
    assert ctx.steps == []
    assert rt.Capture.captured == []
    with pytest.raises(JobNotFoundError):
        env.jobs.get(ctx.job_id)


def test_non_serializable_context_field_fails_before_any_stage(dcore_env: Environment) -> None:
    ctx = WithConnection(name="x", connection=object())
    with pytest.raises(ContextSerializationError) as info:
        remote_pipeline(ctx).run()
    assert "WithConnection.connection (object) cannot be serialized" in str(info.value)
    assert "Runtime[...]" in str(info.value)
    assert_nothing_ran(dcore_env, ctx)


def test_an_unregistered_core_fn_fails_before_any_stage_naming_the_decorator(
    dcore_env: Environment,
) -> None:
    def local_core(ctx: Any) -> str:
        return "never"

    ctx = rt.RoundTripContext(name="x")
    with pytest.raises(ContextSerializationError) as info:
        remote_pipeline(ctx, local_core).run()
    message = str(info.value)
    assert "'test_an_unregistered_core_fn_fails_before_any_stage_naming_the_decorator" in message
    assert "is not a registered core function" in message
    assert "@dcore.core_function" in message
    assert_nothing_ran(dcore_env, ctx)


def test_non_json_options_fail_before_any_stage_naming_stage_and_plugin(
    dcore_env: Environment, dcore_registry: PluginRegistry
) -> None:
    dcore_registry.register("loose", Loose)
    ctx = rt.RoundTripContext(name="x")
    pipeline = ctx.create_pipeline(module_level_core)
    pipeline.chain(Execute("rt_mark", tag="before")).chain(Dispatch("rt_capture"))
    pipeline.chain(Execute("loose", when=datetime(2024, 1, 1)))

    with pytest.raises(ContextSerializationError) as info:
        pipeline.run()
    message = str(info.value)
    assert "options of stage 2 ('loose') are not JSON-serializable" in message
    assert "datetime" in message
    assert "Pass plain values" in message
    assert_nothing_ran(dcore_env, ctx)


def test_context_class_defined_in_a_function_fails_before_any_stage(
    dcore_env: Environment,
) -> None:
    class Local(rt.RoundTripContext):  # type: ignore[name-defined,misc]
        pass

    ctx = Local(name="x")
    with pytest.raises(ContextSerializationError, match="Local is defined inside a function"):
        remote_pipeline(ctx).run()
    assert_nothing_ran(dcore_env, ctx)


def test_plugin_unregistered_after_chain_fails_before_any_stage(
    dcore_env: Environment, dcore_registry: PluginRegistry
) -> None:
    ctx = rt.RoundTripContext(name="x")
    pipeline = remote_pipeline(ctx)
    dcore_registry.unregister(Execute, "rt_mark")

    with pytest.raises(PluginNotFoundError, match="no Execute plugin named 'rt_mark'"):
        pipeline.run()
    assert_nothing_ran(dcore_env, ctx)


def test_in_process_dispatch_may_carry_closures_and_runtime_objects(
    dcore_env: Environment,
) -> None:
    seen: list[str] = []

    def local_core(ctx: Any) -> str:
        seen.append(ctx.name)
        return "ok"

    ctx = WithConnection(name="closure", connection=object())
    pipeline = ctx.create_pipeline(local_core).chain(Dispatch("inline"))

    assert pipeline.run() == JobHandle(job_id=ctx.job_id, status="succeeded")
    assert seen == ["closure"]
    assert dcore_env.jobs.get(ctx.job_id).state is JobState.SUCCEEDED


def test_base_context_without_subclass_round_trips(dcore_env: Environment) -> None:
    ctx = PipelineContext()
    envelope = ctx.to_envelope()
    assert PipelineContext.from_envelope(envelope) == ctx
