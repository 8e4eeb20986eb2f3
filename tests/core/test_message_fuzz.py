"""Fuzzing the worker's entry point with hostile and broken messages.

Every input ends one of three ways: the job SUCCEEDED (the message was valid), the job is
DEAD with exactly one dead letter (malformed, or its run failed for good), or nothing at
all happened to any job because the input cannot name one (then it is dead-lettered
under "unknown", once). The worker never raises (it lives on) and nothing outside the
registered core functions runs: the canaries below are importable, callable, unregistered
and never called."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcore import DcoreSettings, Environment, JobState, PipelineContext, core_function
from dcore._core.delivery import Action
from dcore.celery import execute
from dcore.errors import JobNotFoundError

CALLED: list[str] = []


def canary(*args: Any, **kwargs: Any) -> None:
    CALLED.append("canary")


class FuzzContext(PipelineContext):
    name: str = "x"
    count: int = 0
    tags: list[str] = []


@core_function
def fuzz_core(ctx: FuzzContext) -> str:
    return ctx.name


def _valid(job_id: str) -> dict[str, Any]:
    return {
        "dcore": 1,
        "job_id": job_id,
        "attempt": 1,
        "spec": [
            {"interface": "Dispatch", "plugin": "celery", "options": {}},
            {"interface": "Execute", "plugin": "logging", "options": {}},
        ],
        "resume_at": 1,
        "core_fn": f"{__name__}:fuzz_core",
        "context": {
            "type": f"{__name__}:FuzzContext",
            "version": "1.0",
            "data": {"job_id": job_id, "name": "n", "count": 1, "tags": ["a"]},
        },
        "trace": {},
        "shard": 3,
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
callables = st.sampled_from(
    [
        f"{__name__}:canary",
        "os:system",
        "builtins:eval",
        "eval",
        "os:environ.copy",
        f"{__name__}:fuzz_core.__globals__",
        "dcore._core.message:set_trace_propagator",
        "subprocess:Popen",
        "shutil:rmtree",
        f"{__name__}:FuzzContext",
        "sys:exit",
    ]
) | st.text(max_size=40)
PATHS = [
    ("job_id",),
    ("attempt",),
    ("spec",),
    ("spec", 0),
    ("spec", 1, "plugin"),
    ("spec", 1, "options"),
    ("spec", 0, "interface"),
    ("resume_at",),
    ("core_fn",),
    ("context",),
    ("context", "type"),
    ("context", "version"),
    ("context", "data"),
    ("context", "data", "name"),
    ("context", "data", "tags"),
    ("context", "data", "job_id"),
    ("trace",),
    ("shard",),
    ("dcore",),
]


@st.composite
def messages(draw: st.DrawFn) -> str | bytes:
    job_id = draw(st.text("0123456789abcdef", min_size=1, max_size=12))
    message: Any = _valid(job_id)
    kind = draw(
        st.sampled_from(
            ["valid", "replace", "delete", "callable", "deep", "extra", "text", "bytes", "truncate"]
        )
    )
    if kind in ("replace", "delete"):
        *parents, last = draw(st.sampled_from(PATHS))
        target = message
        for key in parents:
            target = target[key]
        if kind == "delete" and isinstance(target, dict):
            target.pop(last, None)
        else:
            target[last] = draw(json_values)
    elif kind == "callable":
        message["core_fn"] = draw(callables)
    elif kind == "deep":
        levels = draw(st.sampled_from([40, 150, 1000, 5000]))
        return json.dumps(message).replace('"n"', "[" * levels + "]" * levels, 1)
    elif kind == "extra":
        message[draw(st.text(max_size=8))] = draw(json_values)
    elif kind == "text":
        return draw(st.text(max_size=200))
    elif kind == "bytes":
        return draw(st.binary(max_size=200))
    elif kind == "truncate":
        text = json.dumps(message)
        return text[: draw(st.integers(0, len(text) - 1))]
    return json.dumps(message)


SETTINGS = DcoreSettings(storage="memory", event_bus="memory", job_store="memory", locks="memory")


@settings(max_examples=5000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=messages())
def test_every_input_succeeds_or_dies_with_one_dead_letter_and_nothing_unregistered_runs(
    raw: str | bytes,
) -> None:
    CALLED.clear()
    env = Environment(SETTINGS.model_copy())
    outcome = execute(raw, environment=env)  # never raises: the worker lives on

    assert outcome.action in (Action.ACK, Action.DEAD), outcome
    assert CALLED == []
    letters = [e.payload for e in env.events.entries(SETTINGS.dlq_topic)]
    records = env.jobs.list(limit=10)
    if outcome.action is Action.ACK:
        assert [r.state for r in records] == [JobState.SUCCEEDED]
        assert letters == []
    else:
        assert len(letters) == 1, letters
        try:
            record = env.jobs.get(letters[0]["job_id"])
        except JobNotFoundError:
            raise AssertionError(f"a dead letter without its DEAD job: {letters}") from None
        assert record.state is JobState.DEAD
        assert letters[0]["error"]  # with the reason
    env.close()
