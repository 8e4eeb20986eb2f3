# mypy: disable-error-code="abstract,call-arg,arg-type"
"""Messages that try to make a worker call something nobody registered.

Every one is refused as malformed: the job goes DEAD with exactly one dead letter whose
reason names the registration to add, nothing outside the registered core functions
runs (the canaries below are importable, callable and never registered), and the worker
serves the next valid job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dcore import Dispatch, Environment, Execute, JobState, MessageError, run_message
from dcore._core import message as message_module
from tests.core.dcore_roundtrip_support import rt

CALLED: list[str] = []


def canary(*args: Any, **kwargs: Any) -> str:
    """Importable from this module, never registered: must never run."""
    CALLED.append("canary")
    return "ran"


class Holder:
    def method(self, *args: Any) -> str:
        CALLED.append("method")
        return "ran"

    @staticmethod
    def static(*args: Any) -> str:
        CALLED.append("static")
        return "ran"


holder = Holder()

SMUGGLED = {
    "an importable function of another module": "os:system",
    "a process spawner": "subprocess:Popen",
    "a destructive helper": "shutil:rmtree",
    "an environment read": "os:getenv",
    "a builtin by module": "builtins:eval",
    "a builtin by bare name": "eval",
    "a dunder of a module": "os:__builtins__",
    "a dunder path to globals": f"{__name__}:canary.__globals__",
    "an attribute path through a module": "os:environ.copy",
    "an attribute path to sys.modules": "sys:modules.update",
    "a bound method of a module object": f"{__name__}:holder.method",
    "a static method": f"{__name__}:Holder.static",
    "an unregistered function in an imported module": f"{__name__}:canary",
    "a process-wide setter": "dcore._core.message:set_trace_propagator",
    "an attribute path off a registered function": (
        "dcore_roundtrip_pipeline:summarize.__globals__"
    ),
    "a registered name with a suffix": "dcore_roundtrip_pipeline:summarize.x",
    "an over-long name": "a" * 5000,
}


@pytest.fixture
def message(dcore_env: Environment) -> dict[str, Any]:
    rt.Capture.captured.clear()
    dcore_env.memory_services_shared = True  # its worker is this process
    ctx = rt.RoundTripContext(name="m")
    pipeline = ctx.create_pipeline(rt.summarize)
    pipeline.chain(Execute("rt_mark", tag="before")).chain(Dispatch("rt_capture"))
    pipeline.run()
    [(continuation, shipped)] = rt.Capture.captured
    return json.loads(continuation.to_message(shipped).to_json())  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", sorted(SMUGGLED))
def test_a_message_naming_an_unregistered_callable_is_dead_lettered(
    dcore_env: Environment, message: dict[str, Any], case: str
) -> None:
    CALLED.clear()
    propagator = message_module.trace_propagator()
    good = dict(message)
    message["core_fn"] = SMUGGLED[case]
    raw = json.dumps(message)

    with pytest.raises(MessageError) as info:
        run_message(raw)

    text = str(info.value)
    assert "registered core function" in text or "malformed job message" in text
    assert CALLED == []
    assert message_module.trace_propagator() is propagator  # no process-wide setter ran
    assert dcore_env.jobs.get(message["job_id"]).state is JobState.DEAD
    letters = [e.payload for e in dcore_env.events.entries(dcore_env.settings.dlq_topic)]
    assert [(p["job_id"], p["message"]) for p in letters] == [(message["job_id"], raw)]
    assert "MessageError" in letters[0]["error"]

    # the worker serves the next valid job
    good["job_id"] = "next"
    good["context"] = {**good["context"], "data": {**good["context"]["data"], "job_id": "next"}}
    assert run_message(json.dumps(good))["steps"] == ["before", "core"]


def test_the_refusal_names_the_registration_to_add(
    dcore_env: Environment, message: dict[str, Any]
) -> None:
    message["core_fn"] = f"{__name__}:canary"
    with pytest.raises(MessageError) as info:
        run_message(json.dumps(message))
    assert "@dcore.core_function" in str(info.value)
    assert "DCORE_IMPORTS" in str(info.value)


def test_a_retry_on_name_cannot_walk_past_classes_or_run_properties(
    dcore_env: Environment, message: dict[str, Any]
) -> None:
    message["spec"][1]["retry"] = {"attempts": 2, "retry_on": [f"{__name__}:holder.method"]}
    with pytest.raises(MessageError, match="is not an exception class"):
        run_message(json.dumps(message))
    assert CALLED == []
