"""PipelineContext: runtime-only fields, the versioned envelope, migrations, bytes,
stable shard keys and reported errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import BackgroundTasks
from hypothesis import given
from hypothesis import strategies as st

from dcore import (
    SHARD_COUNT,
    ContextSerializationError,
    Environment,
    ErrorRecord,
    MessageError,
    PipelineContext,
    Runtime,
    migration,
    stable_hash,
)
from dcore._core.context import context_type, context_type_name, registered_context_types


class Session:
    """Stands in for a request-scoped object (a DB session): not serializable."""


class UploadContext(PipelineContext):
    file_path: str
    file_content: bytes
    session: Runtime[Session] = None


class SeedContext(PipelineContext):
    """The seed's declaration: a plain ``BackgroundTasks`` annotation."""

    job_type: str
    background_tasks: BackgroundTasks


class Profile(PipelineContext):
    """Version 2.0 of a payload that was 1.0 (``name``) and 1.1 (``full_name``)."""

    __version__ = "2.0"
    first: str
    last: str

    @migration("1.0", to="1.1")
    @classmethod
    def rename(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["full_name"] = data.pop("name")
        return data

    @migration("1.1")
    @classmethod
    def split(cls, data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data.pop("full_name").partition(" ")
        return {**data, "first": first, "last": last}


class Opaque(PipelineContext):
    handle: object


def envelope_json_round_trip(ctx: PipelineContext) -> PipelineContext:
    return PipelineContext.from_envelope(json.loads(json.dumps(ctx.to_envelope())))


# -- runtime-only fields ---------------------------------------------------------------------


def test_runtime_field_is_never_serialized_and_none_when_rebuilt() -> None:
    session = Session()
    ctx = UploadContext(file_path="a.txt", file_content=b"x", session=session)

    assert ctx.session is session
    assert "session" not in ctx.model_dump()
    assert "session" not in json.loads(ctx.model_dump_json())
    assert "session" not in ctx.to_envelope()["data"]
    rebuilt = envelope_json_round_trip(ctx)
    assert isinstance(rebuilt, UploadContext)
    assert rebuilt.session is None
    assert UploadContext.runtime_fields() == ["session"]


def test_runtime_field_defaults_to_none() -> None:
    assert UploadContext(file_path="a", file_content=b"").session is None


def test_seed_background_tasks_field_is_runtime_only() -> None:
    tasks = BackgroundTasks()
    ctx = SeedContext(job_type="demo", background_tasks=tasks)

    assert ctx.background_tasks is tasks
    assert SeedContext.runtime_fields() == ["background_tasks"]
    assert "background_tasks" not in ctx.to_envelope()["data"]
    rebuilt = envelope_json_round_trip(ctx)
    assert isinstance(rebuilt, SeedContext)
    assert rebuilt.background_tasks is None
    assert rebuilt.job_type == "demo"


def test_non_serializable_field_error_names_field_and_fix() -> None:
    ctx = Opaque(handle=Session())
    with pytest.raises(ContextSerializationError) as info:
        ctx.to_envelope()
    message = str(info.value)
    assert "Opaque.handle (Session)" in message
    assert "Runtime[...]" in message


# -- envelope ---------------------------------------------------------------------------------


def test_envelope_names_registered_type_and_version() -> None:
    ctx = UploadContext(file_path="a", file_content=b"\x00\xff")
    envelope = ctx.to_envelope()

    assert envelope["type"] == f"{__name__}:UploadContext"
    assert envelope["version"] == "1.0"
    assert envelope["data"]["job_id"] == ctx.job_id
    assert registered_context_types()[envelope["type"]] is UploadContext
    assert context_type(context_type_name(UploadContext)) is UploadContext


def test_every_subclass_registers_itself() -> None:
    class Late(PipelineContext):
        pass

    assert context_type(context_type_name(Late)) is Late


def test_unknown_context_type_is_a_message_error_naming_it() -> None:
    envelope = {"type": "somewhere.else:Ghost", "version": "1.0", "data": {}}
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope)
    assert "'somewhere.else:Ghost'" in str(info.value)
    assert "DCORE_IMPORTS" in str(info.value)


def test_envelope_never_imports_the_module_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"canary_{uuid.uuid4().hex[:8]}"
    flag = tmp_path / "imported"
    (tmp_path / f"{canary}.py").write_text(
        f"open({str(flag)!r}, 'w').close()\n"
        "from dcore import PipelineContext\n"
        "class Evil(PipelineContext):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(MessageError, match=f"'{canary}:Evil'"):
        PipelineContext.from_envelope({"type": f"{canary}:Evil", "version": "1.0", "data": {}})

    assert canary not in sys.modules
    assert not flag.exists()


@pytest.mark.parametrize(
    "envelope",
    [None, [], {"type": "x"}, {"version": "1.0", "data": {}}, "a string"],
)
def test_malformed_envelope_is_a_message_error(envelope: Any) -> None:
    with pytest.raises(MessageError, match="'type', 'version' and 'data'"):
        PipelineContext.from_envelope(envelope)


def test_envelope_of_another_type_is_rejected_by_a_subclass() -> None:
    envelope = UploadContext(file_path="a", file_content=b"").to_envelope()
    with pytest.raises(MessageError, match="holds a UploadContext, not a Profile"):
        Profile.from_envelope(envelope)


def test_invalid_data_is_a_message_error_naming_the_class() -> None:
    envelope = {"type": context_type_name(UploadContext), "version": "1.0", "data": {}}
    with pytest.raises(MessageError, match=r"(?s)invalid UploadContext data.*file_path"):
        PipelineContext.from_envelope(envelope)


def test_data_that_is_not_an_object_is_a_message_error() -> None:
    envelope = {"type": context_type_name(UploadContext), "version": "1.0", "data": [1]}
    with pytest.raises(MessageError, match="UploadContext data must be a JSON object"):
        PipelineContext.from_envelope(envelope)


@given(content=st.binary(max_size=256), path=st.text(max_size=30))
def test_bytes_survive_json_round_trip_as_base64(content: bytes, path: str) -> None:
    ctx = UploadContext(file_path=path, file_content=content)
    wire = json.dumps(ctx.to_envelope())

    rebuilt = PipelineContext.from_envelope(json.loads(wire))

    assert isinstance(rebuilt, UploadContext)
    assert rebuilt.file_content == content
    assert rebuilt.file_path == path
    assert rebuilt.job_id == ctx.job_id


# -- migrations --------------------------------------------------------------------------------


def test_migrations_chain_old_payload_up_to_current_version() -> None:
    job_id = uuid.uuid4().hex
    old = {
        "type": context_type_name(Profile),
        "version": "1.0",
        "data": {"job_id": job_id, "name": "Ada Lovelace"},
    }
    rebuilt = PipelineContext.from_envelope(old)

    assert isinstance(rebuilt, Profile)
    assert (rebuilt.first, rebuilt.last, rebuilt.job_id) == ("Ada", "Lovelace", job_id)


def test_migration_from_intermediate_version_applies_the_rest() -> None:
    envelope = {
        "type": context_type_name(Profile),
        "version": "1.1",
        "data": {"full_name": "Grace Hopper"},
    }
    rebuilt = PipelineContext.from_envelope(envelope)
    assert isinstance(rebuilt, Profile)
    assert (rebuilt.first, rebuilt.last) == ("Grace", "Hopper")


def test_current_version_needs_no_migration() -> None:
    ctx = Profile(first="A", last="B")
    assert envelope_json_round_trip(ctx) == ctx


def test_missing_migration_is_a_message_error_naming_versions_and_fix() -> None:
    envelope = {"type": context_type_name(Profile), "version": "0.9", "data": {}}
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope)
    message = str(info.value)
    assert "Profile payload has version '0.9'" in message
    assert "class is at '2.0'" in message
    assert "add a @migration('0.9') classmethod to Profile" in message


def test_migration_returning_non_dict_is_a_message_error() -> None:
    class Broken(PipelineContext):
        __version__ = "2"

        @migration("1")
        @classmethod
        def up(cls, data: dict[str, Any]) -> dict[str, Any]:
            return None  # type: ignore[return-value]

    envelope = {"type": context_type_name(Broken), "version": "1", "data": {}}
    with pytest.raises(MessageError, match="Broken migration"):
        PipelineContext.from_envelope(envelope)


def test_migration_returning_non_dict_names_the_migration_it_came_from() -> None:
    class BrokenStep(PipelineContext):
        __version__ = "3"

        @migration("1", to="2")
        @classmethod
        def first(cls, data: dict[str, Any]) -> dict[str, Any]:
            return data

        @migration("2")
        @classmethod
        def second(cls, data: dict[str, Any]) -> dict[str, Any]:
            return None  # type: ignore[return-value]

    envelope = {"type": context_type_name(BrokenStep), "version": "1", "data": {}}
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope)

    assert "migration from '2' must return a dict" in str(info.value)  # the culprit, not '3'


# -- identity, shard key, errors -------------------------------------------------------------


def test_job_id_is_a_fresh_uuid4_hex() -> None:
    a, b = PipelineContext(), PipelineContext()
    assert a.job_id != b.job_id
    assert uuid.UUID(hex=a.job_id).version == 4
    assert len(a.job_id) == 32


def test_shard_key_is_stable_hash_of_job_id_in_range() -> None:
    ctx = PipelineContext(job_id="job-42")
    assert ctx.shard_key == stable_hash("job-42") % SHARD_COUNT
    assert 0 <= ctx.shard_key < SHARD_COUNT


def _hashes_in_fresh_interpreter(seed: str) -> dict[str, int]:
    code = textwrap.dedent(
        """
        import json
        from dcore import PipelineContext, stable_hash
        print(json.dumps({
            "builtin": hash("job-42"),
            "stable": stable_hash("job-42"),
            "bytes": stable_hash(b"job-42"),
            "json": stable_hash({"b": [1, 2], "a": None}),
            "shard": PipelineContext(job_id="job-42").shard_key,
        }))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_shard_key_and_stable_hash_agree_across_processes() -> None:
    one, two = _hashes_in_fresh_interpreter("1"), _hashes_in_fresh_interpreter("2")

    assert one["builtin"] != two["builtin"]  # the salt really differed
    here = {
        "stable": stable_hash("job-42"),
        "bytes": stable_hash(b"job-42"),
        "json": stable_hash({"a": None, "b": [1, 2]}),
        "shard": PipelineContext(job_id="job-42").shard_key,
    }
    for key, value in here.items():
        assert one[key] == two[key] == value, key


def test_stable_hash_tells_types_apart_and_ignores_key_order() -> None:
    assert stable_hash("1") != stable_hash(1) != stable_hash(b"1")
    assert stable_hash(True) != stable_hash(1)
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert 0 <= stable_hash("x") < 2**64


def test_stable_hash_rejects_unhashable_type_naming_it() -> None:
    with pytest.raises(TypeError, match="not Session; hash a field of it instead"):
        stable_hash(Session())


def test_error_bus_records_error_and_publishes_it(dcore_env: Environment) -> None:
    published: list[dict[str, Any]] = []
    dcore_env.events.subscribe("errors", lambda event: published.append(dict(event.payload)))
    ctx = PipelineContext()
    assert not ctx.failed

    record = ctx.error_bus.report(ValueError("bad row"), stage="parse")

    assert ctx.failed
    assert ctx.errors == [record]
    assert (record.type, record.message, record.stage) == (
        "builtins.ValueError",
        "bad row",
        "parse",
    )
    assert published[0]["job_id"] == ctx.job_id
    assert published[0]["message"] == "bad row"


def test_reported_errors_travel_in_the_envelope() -> None:
    ctx = UploadContext(file_path="a", file_content=b"")
    ctx.errors.append(ErrorRecord(type="E", message="m", stage="s#0"))
    rebuilt = envelope_json_round_trip(ctx)
    assert rebuilt.failed
    assert rebuilt.errors == ctx.errors
