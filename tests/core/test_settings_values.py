"""A bad setting fails loudly: ConfigurationError names the DCORE_ variable (or the keyword
given in code), the bad value and the accepted form, instead of a pydantic traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dcore import DcoreError, DcoreSettings
from dcore._core.settings import accepted_form, variable
from dcore.errors import ConfigurationError


@pytest.fixture
def clean_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("DCORE_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "DCORE_THREAD_WORKERS",
            "abc",
            "DCORE_THREAD_WORKERS='abc' is not valid: expected an integer >= 1",
        ),
        (
            "DCORE_THREAD_WORKERS",
            "0",
            "DCORE_THREAD_WORKERS='0' is not valid: expected an integer >= 1",
        ),
        (
            "DCORE_CELERY_QUEUES",
            "2.5",
            "DCORE_CELERY_QUEUES='2.5' is not valid: expected an integer >= 1",
        ),
        (
            "DCORE_JOB_BACKOFF",
            "0.5",
            "DCORE_JOB_BACKOFF='0.5' is not valid: expected a number >= 1",
        ),
        ("DCORE_JOB_TTL", "a week", "DCORE_JOB_TTL='a week' is not valid: expected a number > 0"),
        (
            "DCORE_REDIS_SOCKET_TIMEOUT",
            "-1",
            "DCORE_REDIS_SOCKET_TIMEOUT='-1' is not valid: expected a number > 0",
        ),
        (
            "DCORE_S3_PATH_STYLE",
            "maybe",
            "DCORE_S3_PATH_STYLE='maybe' is not valid: "
            "expected true or false (also 1/0, yes/no, on/off)",
        ),
        (
            "DCORE_IMPORTS",
            "[app.tasks",
            "DCORE_IMPORTS='[app.tasks' is not valid: "
            "expected module names, comma-separated (a.b,c) or as a JSON list of strings",
        ),
        (
            "DCORE_IMPORTS",
            '["app.tasks", 7]',
            "DCORE_IMPORTS[1]=7 is not valid: "
            "expected module names, comma-separated (a.b,c) or as a JSON list of strings",
        ),
    ],
)
def test_a_bad_variable_is_named_with_its_value_and_the_accepted_form(
    clean_variables: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_variables.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        DcoreSettings()
    assert str(info.value) == message


def test_the_error_is_a_dcore_value_error_without_the_pydantic_traceback(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "abc")
    # what except-ValueError callers (of pydantic's ValidationError) still catch
    with pytest.raises(ValueError, match="DCORE_THREAD_WORKERS") as info:
        DcoreSettings()
    error = info.value
    assert isinstance(error, ConfigurationError)
    assert isinstance(error, DcoreError)
    assert not isinstance(error, ValidationError)
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert "pydantic" not in str(error)


def test_every_bad_variable_is_reported_at_once(clean_variables: pytest.MonkeyPatch) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "many")
    clean_variables.setenv("DCORE_JOB_ATTEMPTS", "0")
    clean_variables.setenv("DCORE_STORAGE", "memory")  # a good one is not mentioned
    with pytest.raises(ConfigurationError) as info:
        DcoreSettings()
    assert str(info.value).splitlines() == [
        "DCORE_THREAD_WORKERS='many' is not valid: expected an integer >= 1",
        "DCORE_JOB_ATTEMPTS='0' is not valid: expected an integer >= 1",
    ]


def test_a_keyword_given_in_code_is_named_as_the_keyword(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "2")  # valid, and the keyword wins
    with pytest.raises(ConfigurationError) as info:
        DcoreSettings(thread_workers="abc")
    assert str(info.value) == (
        "DcoreSettings(thread_workers='abc') is not valid: expected an integer >= 1"
    )


def test_none_is_offered_only_where_it_can_be_given(clean_variables: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        DcoreSettings(redis_socket_timeout=0)
    assert str(info.value) == (
        "DcoreSettings(redis_socket_timeout=0) is not valid: expected a number > 0, or None"
    )
    clean_variables.setenv("DCORE_REDIS_SOCKET_TIMEOUT", "0")  # a variable cannot say None
    with pytest.raises(ConfigurationError, match=r"expected a number > 0$"):
        DcoreSettings()


def test_a_secret_value_is_never_echoed(clean_variables: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        DcoreSettings(s3_secret_key=918273645)
    assert "918273645" not in str(info.value)
    assert str(info.value).startswith("DcoreSettings(s3_secret_key='**********') is not valid")


def test_an_unknown_keyword_is_an_error_with_a_suggestion(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        DcoreSettings(storge="memory", thread_workers=2)
    assert str(info.value) == "DcoreSettings(storge=...) is not a setting; did you mean storage?"


def test_every_setting_describes_its_accepted_form() -> None:
    """A new field of a type the messages cannot describe fails here, not in production."""
    undescribed = [name for name in DcoreSettings.model_fields if accepted_form(name) is None]
    assert undescribed == []


def test_a_valid_environment_builds_as_before(
    clean_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "3")
    clean_variables.setenv("DCORE_S3_PATH_STYLE", "no")
    clean_variables.setenv("DCORE_STORAGE_ROOT", str(tmp_path))
    built = DcoreSettings(job_attempts=2)
    assert (built.thread_workers, built.s3_path_style, built.storage_root) == (3, False, tmp_path)
    assert built.as_given("thread_workers") == "DCORE_THREAD_WORKERS=3"
    assert built.as_given("job_attempts") == "DcoreSettings(job_attempts=2)"


#: the settings whose type can reject text (every str-like one accepts anything)
_TYPED = [
    name
    for name, field in DcoreSettings.model_fields.items()
    if accepted_form(name) not in {"text", "a file system path"}
]
_ENV_TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(_TYPED), text=_ENV_TEXT)
def test_any_text_in_any_variable_builds_or_names_that_variable(
    clean_variables: pytest.MonkeyPatch, field: str, text: str
) -> None:
    name = variable(field)
    error: str | None = None
    with mock.patch.dict(os.environ, {name: text}):
        try:
            built: Any = DcoreSettings()
        except ConfigurationError as exc:
            error = str(exc)
    if error is None:
        assert built.as_given(field).startswith(f"{name}=")
    else:
        assert error.startswith(name), error
        assert " is not valid: expected " in error
