"""Schema skew on a worker: a message sent by v1 code whose context field was renamed in
v2 without a version bump is dead-lettered naming the unknown key and ``@migration``,
never run with the field's default; with the migration it runs."""

from __future__ import annotations

from typing import Any

import pytest

from dcore import Environment, JobState, MessageError, PipelineContext, core_function, migration
from dcore._core.context import context_type_name
from dcore._core.message import JobMessage, core_function_name
from dcore._worker import run_message


class ReportV2(PipelineContext):
    """v2 renamed ``title`` to ``name`` (with a default) but kept ``__version__``."""

    __version__ = "1.0"
    name: str = ""


class ReportV3(PipelineContext):
    """The fix: the version bumped and a migration mapping the old key."""

    __version__ = "2.0"
    name: str = ""

    @migration("1.0")
    @classmethod
    def title_became_name(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["name"] = data.pop("title")
        return data


@core_function
def publish(ctx: ReportV2 | ReportV3) -> str:
    """Writes under the context's name: an empty name is the silent bug."""
    return f"reports/{ctx.name}.pdf"


def v1_message(context_cls: type[PipelineContext], job_id: str = "job-v1") -> str:
    """What v1 code sent: ``title`` in the context data, version 1.0."""
    return JobMessage(
        job_id=job_id,
        spec=[],
        resume_at=0,
        core_fn=core_function_name(publish),
        context={
            "type": context_type_name(context_cls),
            "version": "1.0",
            "data": {"job_id": job_id, "errors": [], "title": "q3"},
        },
    ).to_json()


def dead_letters(env: Environment) -> list[dict[str, Any]]:
    return [e.payload for e in env.events.entries(env.settings.dlq_topic)]


def test_a_v1_message_against_a_renamed_v2_field_is_dead_lettered(dcore_env: Environment) -> None:
    raw = v1_message(ReportV2)

    with pytest.raises(MessageError, match="does not know: 'title'"):
        run_message(raw)

    assert dcore_env.jobs.get("job-v1").state is JobState.DEAD
    [letter] = dead_letters(dcore_env)
    assert letter["job_id"] == "job-v1"
    assert letter["message"] == raw
    assert letter["error"].startswith(
        "MessageError: ReportV2 data has keys it does not know: 'title'"
    )
    assert "@migration('1.0')" in letter["error"]


def test_the_same_message_after_a_version_bump_and_migration_runs(dcore_env: Environment) -> None:
    assert run_message(v1_message(ReportV3)) == "reports/q3.pdf"
    assert dcore_env.jobs.get("job-v1").state is JobState.SUCCEEDED
    assert dead_letters(dcore_env) == []
