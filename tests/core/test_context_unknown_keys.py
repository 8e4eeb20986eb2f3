"""Envelope data with keys the context class does not know is a MessageError naming them
and the fix (a version bump and a @migration), unless the class opted in to ignoring
them; runtime-only fields, aliases and computed fields are never unknown."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AliasChoices, ConfigDict, Field, computed_field

from dcore import MessageError, PipelineContext, Runtime, migration
from dcore._core.context import context_type_name


class Article(PipelineContext):
    """Was ``title: str`` at 1.0; renamed to ``name`` with a default, version not bumped."""

    __version__ = "1.0"
    name: str = ""


class Tolerant(PipelineContext):
    model_config = ConfigDict(extra="ignore")
    name: str = ""


class TolerantChild(Tolerant):
    """Inherits its parent's choice to ignore unknown keys."""


class Keeping(PipelineContext):
    model_config = ConfigDict(extra="allow")
    name: str = ""


class Strict(PipelineContext):
    model_config = ConfigDict(extra="forbid")
    name: str = ""


class Migrated(PipelineContext):
    __version__ = "2.0"
    name: str = ""

    @migration("1.0")
    @classmethod
    def title_became_name(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["name"] = data.pop("title")
        return data


class HalfMigrated(PipelineContext):
    """Its migration copies ``title`` to ``name`` but forgets to drop ``title``."""

    __version__ = "2.0"
    name: str = ""

    @migration("1.0")
    @classmethod
    def copy_title(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "name": data["title"]}


class Session:
    """Stands in for a request-scoped object."""


class WithSession(PipelineContext):
    name: str = ""
    session: Runtime[Session] = None


class Derived(PipelineContext):
    first: str = ""
    last: str = Field(default="", validation_alias=AliasChoices("last", "surname"))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


def envelope(
    cls: type[PipelineContext], data: dict[str, Any], version: str = "1.0"
) -> dict[str, Any]:
    return {"type": context_type_name(cls), "version": version, "data": data}


V1_DATA = {"job_id": "job-1", "errors": [], "title": "q3-report"}


def test_a_renamed_field_without_a_migration_is_a_message_error_naming_key_and_fix() -> None:
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope(Article, V1_DATA))

    message = str(info.value)
    assert message.startswith("Article data has keys it does not know: 'title';")
    assert "renamed or removed without a migration" in message
    assert "bump Article.__version__ and add @migration('1.0') to Article" in message
    assert "model_config = ConfigDict(extra='ignore') on Article" in message


def test_a_migration_that_maps_the_old_key_away_makes_the_message_valid() -> None:
    ctx = PipelineContext.from_envelope(envelope(Migrated, V1_DATA))
    assert isinstance(ctx, Migrated)
    assert (ctx.name, ctx.job_id) == ("q3-report", "job-1")


def test_a_migration_that_leaves_the_old_key_is_named_as_the_culprit() -> None:
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope(HalfMigrated, V1_DATA))
    message = str(info.value)
    assert "HalfMigrated data has keys it does not know: 'title'" in message
    assert "the migrations from version '1.0' leave them" in message
    assert "@migration('1.0')" in message


def test_current_version_data_with_only_known_keys_loads() -> None:
    ctx = PipelineContext.from_envelope(envelope(Article, {"job_id": "j", "name": "x"}))
    assert isinstance(ctx, Article)
    assert ctx.name == "x"


@pytest.mark.parametrize("cls", [Tolerant, TolerantChild])
def test_a_context_that_sets_extra_ignore_drops_unknown_keys(cls: type[PipelineContext]) -> None:
    ctx = PipelineContext.from_envelope(envelope(cls, {**V1_DATA, "name": "kept"}))
    assert type(ctx) is cls
    assert ctx.model_dump(mode="json") == {"job_id": "job-1", "errors": [], "name": "kept"}


def test_a_context_that_sets_extra_allow_keeps_unknown_keys_and_sends_them_on() -> None:
    ctx = PipelineContext.from_envelope(envelope(Keeping, V1_DATA))
    assert ctx.model_extra == {"title": "q3-report"}
    assert ctx.to_envelope()["data"]["title"] == "q3-report"


def test_a_context_that_sets_extra_forbid_gets_the_same_clear_error() -> None:
    with pytest.raises(MessageError, match="Strict data has keys it does not know: 'title'"):
        PipelineContext.from_envelope(envelope(Strict, V1_DATA))


def test_contexts_built_in_code_keep_pydantic_defaults() -> None:
    # the rule is for messages: a keyword the class does not know is still ignored in code
    ctx = Article(name="a", title="b")
    assert ctx.model_dump(mode="json") == {"job_id": ctx.job_id, "errors": [], "name": "a"}


def test_many_unknown_keys_are_listed_sorted_and_cut_short() -> None:
    data = {f"k{i:02}": i for i in range(8)} | {"x" * 500: 1}
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope(Article, data))
    message = str(info.value)
    assert "'k00', 'k01', 'k02', 'k03', 'k04' and 4 more;" in message
    assert "x" * 61 not in message
    assert len(message) < 600


def test_runtime_only_field_names_are_never_unknown_and_never_read() -> None:
    ctx = PipelineContext.from_envelope(
        envelope(WithSession, {"job_id": "j", "name": "n", "session": "forged"})
    )
    assert isinstance(ctx, WithSession)
    assert ctx.session is None  # a message cannot fill a request-scoped field


def test_runtime_only_field_names_are_not_read_when_unknown_keys_are_ignored() -> None:
    class TolerantSession(WithSession):
        model_config = ConfigDict(extra="allow")

    ctx = PipelineContext.from_envelope(envelope(TolerantSession, {"session": "forged"}))
    assert isinstance(ctx, TolerantSession)
    assert ctx.session is None
    assert ctx.model_extra == {}


def test_aliases_and_computed_fields_are_known_keys() -> None:
    sent = Derived(first="Ada", last="Lovelace").to_envelope()
    assert sent["data"]["full"] == "Ada Lovelace"  # model_dump writes computed fields
    back = PipelineContext.from_envelope(sent)
    assert isinstance(back, Derived)
    assert back.full == "Ada Lovelace"
    by_alias = PipelineContext.from_envelope(envelope(Derived, {"first": "A", "surname": "L"}))
    assert isinstance(by_alias, Derived)
    assert by_alias.last == "L"


KNOWN = {"job_id", "errors", "name", "session"}


@given(
    extra=st.dictionaries(
        st.text(max_size=20).filter(lambda k: k not in KNOWN), st.integers(), min_size=1, max_size=4
    )
)
def test_any_key_outside_the_fields_is_refused_and_named(extra: dict[str, int]) -> None:
    with pytest.raises(MessageError) as info:
        PipelineContext.from_envelope(envelope(WithSession, {"name": "n", **extra}))
    first = sorted(extra)[0]
    assert f"does not know: {first[:60]!r}" in str(info.value)


@given(name=st.text(max_size=20), job_id=st.text(min_size=1, max_size=20))
def test_what_a_context_sends_it_accepts(name: str, job_id: str) -> None:
    ctx = WithSession(name=name, job_id=job_id, session=Session())
    back = PipelineContext.from_envelope(ctx.to_envelope())
    assert isinstance(back, WithSession)
    assert back.model_dump() == ctx.model_dump()
    assert back.session is None
