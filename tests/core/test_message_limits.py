"""Size and depth limits on incoming job messages: over either, the message is
malformed, dead-lettered with the reason, and the worker lives on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcore import DcoreSettings, Environment, JobMessage, JobState, MessageError, run_message
from dcore._core.message import DEFAULT_MAX_DEPTH, nesting


def _message(data: Any, job_id: str = "j-limits") -> dict[str, Any]:
    return {
        "dcore": 1,
        "job_id": job_id,
        "attempt": 1,
        "spec": [],
        "resume_at": 0,
        "core_fn": "nowhere:fn",
        "context": {
            "type": "dcore._core.context:PipelineContext",
            "version": "1.0",
            "data": {"job_id": job_id, "extra": data},
        },
    }


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_a_message_nested_a_thousand_levels_is_dead_lettered(dcore_env: Environment) -> None:
    raw = json.dumps(_message(0)).replace("0}}", _nested(1000) + "}}")
    with pytest.raises(MessageError, match="malformed job message"):
        run_message(raw)
    assert dcore_env.jobs.get("j-limits").state is JobState.DEAD
    [letter] = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    assert letter.payload["job_id"] == "j-limits"
    assert letter.payload["message"] == raw


def test_peeking_the_job_id_of_a_hostile_message_never_raises() -> None:
    assert JobMessage.peek_job_id("[" * 100_000) is None
    assert JobMessage.peek_job_id(b"\xff" * 10) is None
    assert JobMessage.peek_job_id('{"job_id": ' + _nested(5000) + "}") is None
    assert JobMessage.peek_job_id('{"job_id": "' + "x" * 500 + '"}') is None
    assert JobMessage.peek_job_id('{"job_id": "ok"}') == "ok"


def test_context_data_deeper_than_the_limit_is_malformed_naming_the_setting(
    dcore_env: Environment,
) -> None:
    deep: Any = 1
    for _ in range(DEFAULT_MAX_DEPTH):
        deep = [deep]
    with pytest.raises(
        MessageError,
        match="context.data is nested more than 32 levels deep "
        r"\(DCORE_MESSAGE_MAX_DEPTH\)",
    ):
        run_message(json.dumps(_message(deep)))
    assert dcore_env.jobs.get("j-limits").state is JobState.DEAD


def test_the_depth_limit_is_a_setting(tmp_path: Any) -> None:
    settings = DcoreSettings(message_max_depth=3, storage_root=tmp_path)
    with Environment(settings) as env:
        with pytest.raises(MessageError, match="more than 3 levels"):
            run_message(json.dumps(_message([[[1]]])), environment=env)
        assert env.jobs.get("j-limits").state is JobState.DEAD


def test_a_message_over_the_size_limit_is_malformed_naming_the_setting(tmp_path: Any) -> None:
    settings = DcoreSettings(message_max_bytes=2048, storage_root=tmp_path)
    raw = json.dumps(_message("x" * 4096))
    with Environment(settings) as env:
        with pytest.raises(MessageError, match=r"over the limit of 2048 \(DCORE_MESSAGE_MAX_BYTES"):
            run_message(raw, environment=env)
        assert env.jobs.get("j-limits").state is JobState.DEAD
        [letter] = env.events.entries(env.settings.dlq_topic)
        assert letter.payload["message"] == raw


@given(
    st.recursive(
        st.integers() | st.text(max_size=3),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
        ),
        max_leaves=30,
    )
)
def test_nesting_counts_list_and_dict_levels(value: Any) -> None:
    def reference(v: Any) -> int:
        if isinstance(v, list):
            return 1 + max((reference(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((reference(x) for x in v.values()), default=0)
        return 0

    assert nesting(value, 1000) == reference(value)
