"""``GoldenMessages`` used directly: where files go, that recording never overwrites, and
that every way a stored file can be wrong is named with its path and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import PlainSerializer

from dcore import Dispatch, Environment, Execute, JobMessage, PipelineContext, core_function
from dcore_testing import GoldenMessageError, GoldenMessages
from dcore_testing.golden import type_directory


class Invoice(PipelineContext):
    __version__ = "1.2"
    number: str


class Receipt(PipelineContext):
    total: int = 0


class Lossy(PipelineContext):
    """Sends a value it cannot read back: its own messages would be dead-lettered."""

    amount: Annotated[int, PlainSerializer(lambda v: f"{v} EUR")] = 0


@core_function
def file_invoice(ctx: Invoice) -> str:
    return ctx.number


def golden(tmp_path: Path, update: bool = False) -> GoldenMessages:
    return GoldenMessages("golden", base=tmp_path, update=update)


def write(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def problems(excinfo: pytest.ExceptionInfo[GoldenMessageError]) -> str:
    return str(excinfo.value)


def test_files_are_named_by_type_and_version(tmp_path: Path) -> None:
    store = golden(tmp_path)
    assert type_directory(Invoice) == f"{__name__}.Invoice"
    assert store.path(Invoice) == tmp_path / "golden" / f"{__name__}.Invoice" / "1.2.json"
    assert store.path(Invoice, "0.9", directory="elsewhere").parent.parent == (
        tmp_path / "elsewhere"
    )


@pytest.mark.parametrize("version", ["../up", "a/b", "", ".hidden", "x" * 65])
def test_a_version_that_cannot_name_a_file_is_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match=r"cannot name a golden file: use letters, digits"):
        golden(tmp_path).path(Invoice, version)


def test_record_writes_once_and_never_overwrites(tmp_path: Path) -> None:
    store = golden(tmp_path)
    first = store.record(Invoice(number="A-1", job_id="j"))
    assert first is not None
    assert json.loads(first.read_text())["data"] == {"job_id": "j", "errors": [], "number": "A-1"}
    assert store.record(Invoice(number="B-2")) is None
    assert json.loads(first.read_text())["data"]["number"] == "A-1"
    assert store.written == [first]


def test_check_without_update_writes_nothing_and_says_how_to_record(tmp_path: Path) -> None:
    with pytest.raises(GoldenMessageError) as info:
        golden(tmp_path).check(Invoice(number="A-1"))
    assert "no golden message for Invoice version 1.2: record one with " in problems(info)
    assert "--dcore-update-golden" in problems(info)
    assert not (tmp_path / "golden").exists()


def test_check_of_a_class_records_nothing_and_asks_for_an_example(tmp_path: Path) -> None:
    with pytest.raises(GoldenMessageError, match="pass an example instance"):
        golden(tmp_path, update=True).check(Invoice)


def test_check_lists_the_stored_versions_in_natural_order(tmp_path: Path) -> None:
    store = golden(tmp_path, update=True)
    for version in ("1.10", "1.9"):
        write(
            store.path(Invoice, version),
            {"type": f"{__name__}:Invoice", "version": version, "data": {"number": "n"}},
        )
    with pytest.raises(GoldenMessageError) as info:  # no migrations from 1.9 or 1.10
        store.check(Invoice(number="A-1"))
    text = problems(info)
    assert text.startswith("2 golden message problems:")
    assert text.index("/1.9.json") < text.index("/1.10.json")
    assert "@migration('1.9')" in text


@pytest.mark.parametrize(
    ("document", "culprit"),
    [
        ("{not json", "not a readable JSON file"),
        ([1, 2], "not a context envelope or a job message"),
        (
            {"type": "other.mod:Thing", "version": "1.2", "data": {}},
            "holds a 'other.mod:Thing' message, not a",
        ),
        (
            {"type": f"{__name__}:Invoice", "version": "1.1", "data": {"number": "n"}},
            "the file name says version 1.2 but the message is version '1.1'; rename the file",
        ),
        ({"type": f"{__name__}:Invoice", "version": "1.2", "data": {}}, "invalid Invoice data"),
    ],
)
def test_a_broken_file_is_named_with_its_path(tmp_path: Path, document: Any, culprit: str) -> None:
    store = golden(tmp_path)
    path = store.path(Invoice)
    path.parent.mkdir(parents=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(GoldenMessageError) as info:
        store.check(Invoice(number="A-1"))
    assert f"golden/{__name__}.Invoice/1.2.json: " in problems(info)
    assert culprit in problems(info)


def test_an_example_this_code_cannot_read_back_is_reported(tmp_path: Path) -> None:
    store = golden(tmp_path, update=True)
    with pytest.raises(GoldenMessageError) as info:
        store.check(Lossy(amount=3))
    assert "the example Lossy does not load with this code: invalid Lossy data" in (problems(info))


def test_a_job_message_is_stored_whole_under_its_context_version(
    tmp_path: Path, dcore_env: Environment
) -> None:
    pipeline = Invoice(number="A-1", job_id="j-1").create_pipeline(file_invoice)
    pipeline.chain(Dispatch, plugin="schedule_job").chain(Execute, plugin="logging")
    message = pipeline.continuation(1).to_message(Invoice(number="A-1", job_id="j-1"))
    store = GoldenMessages("golden", base=tmp_path, update=True, environment=dcore_env)

    assert store.check(message) == [store.path(Invoice)]
    stored = JobMessage.model_validate_json(store.path(Invoice).read_text())
    assert stored == message


def test_a_pipeline_without_a_dispatch_sends_no_message(
    tmp_path: Path, dcore_env: Environment
) -> None:
    pipeline = Invoice(number="A-1").create_pipeline(file_invoice)
    with pytest.raises(ValueError, match="with a Dispatch stage sends a message"):
        golden(tmp_path).record(pipeline)


@pytest.mark.parametrize(
    ("junk", "says"),
    [
        (42, "recorded from a context, a JobMessage or a pipeline with a Dispatch stage, got 42"),
        ("Invoice", "pipeline with a Dispatch stage, got 'Invoice'"),
        (object, "check() takes a context, a JobMessage, a pipeline or a PipelineContext"),
    ],
)
def test_check_refuses_what_is_not_an_example(tmp_path: Path, junk: Any, says: str) -> None:
    with pytest.raises(TypeError) as info:
        golden(tmp_path).check(junk)
    assert says in str(info.value)


def test_check_all_checks_every_type_in_the_directory(tmp_path: Path) -> None:
    store = golden(tmp_path, update=True)
    store.record(Invoice(number="A-1"))
    store.record(Receipt(total=3))
    assert len(store.check_all()) == 2
    write(store.path(Receipt, "0.1"), {"type": f"{__name__}:Receipt", "version": "0.1", "data": {}})
    with pytest.raises(GoldenMessageError, match=r"no @migration\('0.1'\)"):
        store.check_all()
