# mypy: disable-error-code="abstract,call-arg,arg-type"
# (mypy cannot see that calling an interface, Execute("name"), makes a StageRef)
"""``run_message``: a malformed message is a MessageError, the job goes DEAD with a
dead letter holding the raw message, and the worker lives on."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from dcore import Dispatch, Environment, Execute, JobState, MessageError, run_message
from dcore._worker import load_message
from tests.core.dcore_roundtrip_support import rt


@pytest.fixture
def message(dcore_env: Environment) -> dict[str, Any]:
    """A valid message for ``before ⇒ rt_capture ┆ after → summarize``, as a dict."""
    rt.Capture.captured.clear()
    dcore_env.memory_services_shared = True  # its worker is this process
    ctx = rt.RoundTripContext(name="m")
    pipeline = ctx.create_pipeline(rt.summarize)
    pipeline.chain(Execute("rt_mark", tag="before")).chain(Dispatch("rt_capture"))
    pipeline.chain(Execute("rt_mark", tag="after"))
    pipeline.run()
    [(continuation, shipped)] = rt.Capture.captured
    return json.loads(continuation.to_message(shipped).to_json())  # type: ignore[no-any-return]


def dead_letters(env: Environment) -> list[dict[str, Any]]:
    return [e.payload for e in env.events.entries(env.settings.dlq_topic)]


def test_valid_message_runs_remainder(dcore_env: Environment, message: dict[str, Any]) -> None:
    result = run_message(json.dumps(message).encode())
    assert result["steps"] == ["before", "after", "core"]
    assert dcore_env.jobs.get(message["job_id"]).state is JobState.SUCCEEDED
    assert dead_letters(dcore_env) == []


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(msg: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = msg
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value

    return mutate


MALFORMED = {
    "unknown context type": (
        set_path("context.type", "nowhere.mod:Ghost"),
        "unknown context type 'nowhere.mod:Ghost'",
    ),
    "unknown plugin": (
        set_path("spec.2.plugin", "rt_nope"),
        "stage 2 of the message cannot be built: no Execute plugin named 'rt_nope'",
    ),
    "unknown interface": (
        set_path("spec.0.interface", "Transmogrify"),
        "no plugin interface named 'Transmogrify'",
    ),
    "bad plugin options": (
        set_path("spec.2.options", {"tag": "x", "speed": 9}),
        "unknown option 'speed'",
    ),
    "resume_at past the end": (
        set_path("resume_at", 4),
        "resume_at=4 is past the end of a 3-stage spec",
    ),
    "negative resume_at": (set_path("resume_at", -1), "resume_at"),
    "missing migration": (set_path("context.version", "0.1"), "no @migration('0.1') upgrades it"),
    "migration that raises": (
        set_path("context.version", "0.9"),
        "RoundTripContext migration from '0.9' failed: KeyError: 'title'",
    ),
    "core_fn not registered": (
        set_path("core_fn", "not_imported_anywhere:fn"),
        "'not_imported_anywhere:fn' is not a registered core function",
    ),
    "core_fn importable but not registered": (
        set_path("core_fn", "os:system"),
        "'os:system' is not a registered core function",
    ),
    "unsupported format": (set_path("dcore", 2), "dcore"),
    "invalid context data": (
        set_path("context.data.name", ["not", "a", "str"]),
        "invalid RoundTripContext data",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_dead_lettered_and_worker_lives_on(
    dcore_env: Environment, message: dict[str, Any], case: str
) -> None:
    mutate, culprit = MALFORMED[case]
    good = copy.deepcopy(message)
    mutate(message)
    raw = json.dumps(message)

    with pytest.raises(MessageError) as info:
        run_message(raw)

    assert culprit in str(info.value)
    assert dcore_env.jobs.get(message["job_id"]).state is JobState.DEAD
    [letter] = dead_letters(dcore_env)
    assert letter["job_id"] == message["job_id"]
    assert letter["error"].startswith("MessageError: ")
    assert culprit in letter["error"]
    assert letter["message"] == raw
    assert "not_imported_anywhere" not in sys.modules  # a message never imports anything

    # the worker lives on: the next (good) message runs
    good["job_id"] = good["context"]["data"]["job_id"] = "next-job"
    assert run_message(json.dumps(good))["steps"] == ["before", "after", "core"]


def test_job_id_mismatch_is_dead_lettered_under_the_message_id(
    dcore_env: Environment, message: dict[str, Any]
) -> None:
    message["job_id"] = "impostor"
    with pytest.raises(MessageError, match="message job_id 'impostor' differs from its context"):
        run_message(json.dumps(message))
    assert dcore_env.jobs.get("impostor").state is JobState.DEAD
    assert [d["job_id"] for d in dead_letters(dcore_env)] == ["impostor"]


@pytest.mark.parametrize("raw", ["{not json", b"\xff\xfe", "[]", '{"dcore": 1}'])
def test_unparseable_message_goes_to_dlq_with_its_raw_text(
    dcore_env: Environment, raw: str | bytes
) -> None:
    with pytest.raises(MessageError, match="malformed job message"):
        run_message(raw)
    [letter] = dead_letters(dcore_env)
    assert letter["job_id"] == "unknown"
    expected = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    assert letter["message"] == expected
    assert dcore_env.jobs.get("unknown").state is JobState.DEAD


def test_a_plugin_that_refuses_the_messages_options_is_dead_lettered(
    dcore_env: Environment, message: dict[str, Any]
) -> None:
    """Options a constructor rejects fail every delivery alike: DEAD at once, not retried."""

    class Picky(Execute[Any]):
        def __init__(self, tag: str) -> None:
            if tag == "loud":
                raise ValueError("tag 'loud' is not allowed here")

        def execute(self, next_fn: Any, context: Any) -> Any:
            return next_fn(context)

    dcore_env.registry.register("rt_mark", Picky, replace=True)
    message["spec"][2]["options"] = {"tag": "loud"}

    with pytest.raises(MessageError, match="rejected its options: tag 'loud' is not allowed"):
        run_message(json.dumps(message))

    assert dcore_env.jobs.get(message["job_id"]).state is JobState.DEAD
    [letter] = dead_letters(dcore_env)
    assert "rejected its options" in letter["error"]


def test_load_message_resolves_without_running(
    dcore_env: Environment, message: dict[str, Any]
) -> None:
    parsed, context, pipeline = load_message(json.dumps(message))
    assert parsed.job_id == context.job_id == message["job_id"]
    assert isinstance(context, rt.RoundTripContext)
    assert context.steps == ["before"]
    assert [s.plugin for s in pipeline.stages] == ["rt_mark", "rt_capture", "rt_mark"]
    assert dcore_env.jobs.get(message["job_id"]).state is JobState.PENDING  # not run


def test_worker_reuses_the_pipeline_built_for_a_spec(
    dcore_env: Environment, message: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dcore._core.pipeline import Pipeline

    builds: list[int] = []
    original = Pipeline.from_spec.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "from_spec", classmethod(counting))
    second = copy.deepcopy(message)
    second["job_id"] = second["context"]["data"]["job_id"] = "f" * 32

    first_result = run_message(json.dumps(message))
    second_result = run_message(json.dumps(second))

    assert first_result["steps"] == second_result["steps"] == ["before", "after", "core"]
    assert len(builds) == 1


def test_replacing_a_plugin_invalidates_cached_pipelines(
    dcore_env: Environment, dcore_registry: Any, message: dict[str, Any]
) -> None:
    run_message(json.dumps(message))

    class Loud(rt.Mark):
        def execute(self, next_fn: Any, context: Any) -> Any:
            context.steps.append(self.tag.upper())
            return next_fn(context)

    dcore_registry.register("rt_mark", Loud, replace=True)
    again = copy.deepcopy(message)
    again["job_id"] = again["context"]["data"]["job_id"] = "e" * 32

    assert run_message(json.dumps(again))["steps"] == ["before", "AFTER", "core"]
