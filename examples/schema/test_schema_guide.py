"""The schema-change guide (docs/how-to/contexts.md), run by the suite so it stays true:
a renamed field with a version bump and a migration runs the messages queued before it,
an unknown key is dead-lettered, and golden messages of every version still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dcore import Environment, JobState, MessageError, run_message
from dcore_testing import GoldenMessages
from examples.schema import reports

GOLDEN = Path(__file__).parent / "golden" / "examples.schema.reports.ReportContext"


def golden(version: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{version}.json").read_text())  # type: ignore[no-any-return]


# --8<-- [start:golden]
def test_golden_messages_of_every_version_still_load(dcore_golden_messages: GoldenMessages) -> None:
    ctx = reports.ReportContext(job_id="report-2", name="q3", pages=12)
    checked = dcore_golden_messages.check(reports.report_pipeline(ctx))
    assert [p.name for p in checked] == ["1.0.json", "2.0.json"]


# --8<-- [end:golden]


def test_a_message_queued_before_the_rename_runs_after_it(dcore_env: Environment) -> None:
    old = golden("1.0")
    assert old["context"]["data"]["title"] == "q3"  # what 1.0 sent
    assert run_message(json.dumps(old)) == "reports/q3.pdf"  # migrated to name="q3"
    assert dcore_env.jobs.get(old["job_id"]).state is JobState.SUCCEEDED


def test_a_key_the_context_does_not_know_is_dead_lettered(dcore_env: Environment) -> None:
    message = golden("2.0")
    message["context"]["data"]["subtitle"] = "draft"  # sent by code this worker predates
    with pytest.raises(MessageError, match="ReportContext data has keys it does not know"):
        run_message(json.dumps(message))
    assert dcore_env.jobs.get(message["job_id"]).state is JobState.DEAD
    [letter] = dcore_env.events.entries(dcore_env.settings.dlq_topic)
    assert "'subtitle'" in letter.payload["error"]
