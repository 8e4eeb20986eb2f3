"""Golden messages through the pytest plugin, in a child pytest (pytester): recording with
``--dcore-update-golden``, checking, and the failures for a version bump without a
migration, a field renamed without one, and a plugin option renamed under a stored
message. Each scenario edits the child's context class between runs, as a developer
edits theirs between commits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONTEXT_V1 = """
    __version__ = "1.0"
    title: str
"""
RENAMED_SAME_VERSION = """
    __version__ = "1.0"
    name: str = ""
"""
BUMPED_WITHOUT_MIGRATION = """
    __version__ = "2.0"
    name: str = ""
"""
BUMPED_WITH_MIGRATION = """
    __version__ = "2.0"
    name: str = ""

    @migration("1.0")
    @classmethod
    def title_became_name(cls, data):
        data["name"] = data.pop("title")
        return data
"""
IGNORING = """
    model_config = ConfigDict(extra="ignore")
    __version__ = "1.0"
    name: str = ""
"""


def child_module(body: str, example: str) -> str:
    return f"""
from pydantic import ConfigDict
from dcore import PipelineContext, migration


class Report(PipelineContext):
{body}

def test_report_messages(dcore_golden_messages):
    dcore_golden_messages.check(Report({example}, job_id="r-1"))
"""


V1 = child_module(CONTEXT_V1, 'title="q3"')


def golden_file(child: pytest.Pytester, version: str) -> Path:
    return Path(child.path, "golden", "test_report.Report", f"{version}.json")


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> pytest.Pytester:
    """A child project whose Report 1.0 message is recorded in golden/."""
    pytester.makepyfile(test_report=V1)
    result = pytester.runpytest("--dcore-update-golden")
    result.assert_outcomes(passed=1)
    assert "recorded " in result.stdout.str()
    return pytester


def test_update_records_the_current_version_and_a_plain_run_checks_it(
    recorded: pytest.Pytester,
) -> None:
    stored = json.loads(golden_file(recorded, "1.0").read_text())
    assert stored == {
        "type": "test_report:Report",
        "version": "1.0",
        "data": {"job_id": "r-1", "errors": [], "title": "q3"},
    }

    result = recorded.runpytest()
    result.assert_outcomes(passed=1)
    assert "dcore golden messages" not in result.stdout.str()  # nothing written


def test_a_missing_current_version_fails_naming_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_report=V1)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*golden/test_report.Report/1.0.json: no golden message for Report version 1.0: "
            "record one with `pytest --dcore-update-golden` and commit it*",
        ]
    )
    assert not golden_file(pytester, "1.0").exists()


def test_a_version_bump_fails_naming_the_migration_until_it_is_added(
    recorded: pytest.Pytester,
) -> None:
    recorded.makepyfile(test_report=child_module(BUMPED_WITHOUT_MIGRATION, 'name="q3"'))
    result = recorded.runpytest("--dcore-update-golden")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GoldenMessageError: 1 golden message problem:",
            "*golden/test_report.Report/1.0.json: a worker running this code would dead-letter "
            "Report 1.0 messages still queued:",
            "*no @migration('1.0') upgrades it: add a @migration('1.0') classmethod to Report*",
        ]
    )
    assert "golden.py" not in result.stdout.str()  # the traceback ends in the test
    assert golden_file(recorded, "2.0").exists()  # the new version is recorded ...
    assert "title" in golden_file(recorded, "1.0").read_text()  # ... the old one kept

    recorded.makepyfile(test_report=child_module(BUMPED_WITH_MIGRATION, 'name="q3"'))
    recorded.runpytest().assert_outcomes(passed=1)
    assert json.loads(golden_file(recorded, "2.0").read_text())["data"]["name"] == "q3"


def test_a_renamed_field_without_a_version_bump_fails_naming_the_key(
    recorded: pytest.Pytester,
) -> None:
    before = golden_file(recorded, "1.0").read_text()
    recorded.makepyfile(test_report=child_module(RENAMED_SAME_VERSION, 'name="q3"'))
    result = recorded.runpytest("--dcore-update-golden")  # updating never blesses a skew

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*golden/test_report.Report/1.0.json: a worker running this code would dead-letter*",
            "*Report data has keys it does not know: 'title'; a field was renamed or removed "
            "without a migration: bump Report.__version__ and add @migration('1.0') to Report*",
            "*if Report 1.0 was never released, delete this file and record it again*",
        ]
    )
    assert golden_file(recorded, "1.0").read_text() == before


def test_a_context_that_ignores_unknown_keys_accepts_the_old_message(
    recorded: pytest.Pytester,
) -> None:
    recorded.makepyfile(test_report=child_module(IGNORING, 'name="q3"'))
    recorded.runpytest().assert_outcomes(passed=1)


WHOLE_MESSAGE = """
from dcore import Dispatch, Execute, PipelineContext, core_function, register_plugin
from dcore._plugins.registry import default_registry


class Order(PipelineContext):
    sku: str


@register_plugin("stamp", registry=default_registry(), replace=True)
class Stamp(Execute):
    def __init__(self, {option}: str) -> None:
        self.{option} = {option}

    def execute(self, next_fn, context):
        return next_fn(context)


@core_function
def ship(ctx):
    return ctx.sku


def test_order_messages(dcore_golden_messages):
    pipeline = Order(sku="a-1", job_id="o-1").create_pipeline(ship)
    pipeline.chain(Dispatch, plugin="schedule_job")
    pipeline.chain(Execute, plugin="stamp", {option}="x")
    dcore_golden_messages.check(pipeline)
"""


def test_a_pipeline_records_its_whole_message_and_its_stages_are_checked(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_order=WHOLE_MESSAGE.format(option="label"))
    pytester.runpytest("--dcore-update-golden").assert_outcomes(passed=1)
    stored = json.loads(Path(pytester.path, "golden", "test_order.Order", "1.0.json").read_text())
    assert (stored["resume_at"], stored["core_fn"]) == (1, "test_order:ship")
    assert stored["spec"][1] == {
        "interface": "Execute",
        "plugin": "stamp",
        "options": {"label": "x"},
        "retry": None,
    }

    pytester.makepyfile(test_order=WHOLE_MESSAGE.format(option="tag"))  # option renamed
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*golden/test_order.Order/1.0.json: a worker running this code would dead-letter*",
            "*stage 1 of the message cannot be built*'label'*",
        ]
    )


def test_check_all_catches_a_context_class_that_moved(recorded: pytest.Pytester) -> None:
    recorded.makepyfile(
        test_report=V1.replace("def test_report_messages", "def _unused")
        + """
def test_all(dcore_golden_messages):
    dcore_golden_messages.check_all()
"""
    )
    recorded.runpytest().assert_outcomes(passed=1)
    # a message stored by a class that no module defines any more (it moved to another)
    gone = Path(recorded.path, "golden", "reports_old.Report", "1.0.json")
    gone.parent.mkdir()
    gone.write_text(
        json.dumps({"type": "reports_old:Report", "version": "1.0", "data": {"title": "q3"}})
    )
    result = recorded.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*golden/reports_old.Report/1.0.json: a worker running this code would dead-letter*",
            "*unknown context type 'reports_old:Report'*",
            "*if the class was moved or renamed, its queued messages cannot run*",
        ]
    )
