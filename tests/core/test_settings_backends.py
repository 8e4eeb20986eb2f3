"""A backend setting naming no plugin fails on first use with the setting named as it was
given (DCORE_STORAGE='minoi', or the DcoreSettings keyword), the registered names and a
suggestion; it stays a PluginNotFoundError for code that catches one."""

from __future__ import annotations

import os

import pytest

from dcore import DcoreSettings, Environment, PluginNotFoundError, PluginRegistry
from dcore.errors import BackendNotFoundError


@pytest.fixture
def clean_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("DCORE_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value", "service", "interface", "suggestion"),
    [
        ("DCORE_STORAGE", "minoi", "storage", "StorageInterface", "minio"),
        ("DCORE_EVENT_BUS", "redsi", "events", "EventBusInterface", "redis"),
        ("DCORE_JOB_STORE", "memroy", "jobs", "JobStorageInterface", "memory"),
        ("DCORE_LOCKS", "rediss", "locks", "LockInterface", "redis"),
    ],
)
def test_an_unknown_backend_variable_is_named_in_the_error(
    clean_variables: pytest.MonkeyPatch,
    dcore_registry: PluginRegistry,
    name: str,
    value: str,
    service: str,
    interface: str,
    suggestion: str,
) -> None:
    clean_variables.setenv(name, value)
    env = Environment.from_env()
    with pytest.raises(BackendNotFoundError) as info:
        getattr(env, service)
    message = str(info.value)
    assert message.startswith(
        f"{name}={value!r} is not valid: no {interface} plugin named {value!r}; registered: "
    )
    assert message.endswith(f"Did you mean {suggestion!r}?")
    assert isinstance(info.value, PluginNotFoundError)
    assert info.value.setting == f"{name}={value!r}"
    env.close()


def test_a_backend_given_in_code_is_named_by_its_keyword(
    clean_variables: pytest.MonkeyPatch, dcore_registry: PluginRegistry
) -> None:
    clean_variables.setenv("DCORE_JOB_STORE", "memory")  # the keyword wins, and is named
    env = Environment(DcoreSettings(job_store="redsi"))
    with pytest.raises(BackendNotFoundError) as info:
        _ = env.jobs
    assert str(info.value).startswith(
        "DcoreSettings(job_store='redsi') is not valid: no JobStorageInterface plugin"
    )
    env.close()
