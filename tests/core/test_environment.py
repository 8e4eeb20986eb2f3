"""The Environment: backends chosen by DCORE_* variables, scoped with use_environment,
and the embedded default's storage root fixed against the cwd when first built."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcore import (
    DcoreSettings,
    Environment,
    PluginNotFoundError,
    PluginRegistry,
    current_environment,
    reset_default_environment,
    use_environment,
)
from dcore._core.environment import scoped_environment
from dcore.backends.memory import MemoryEventBus
from dcore.errors import ConfigurationError
from dcore.services import StorageInterface


@pytest.fixture
def clean_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("DCORE_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def fresh_default(clean_variables: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget the process default before and after, so the test builds its own."""
    reset_default_environment()
    yield
    reset_default_environment()


def test_settings_come_from_dcore_variables(clean_variables: pytest.MonkeyPatch) -> None:
    clean_variables.setenv("DCORE_STORAGE", "memory")
    clean_variables.setenv("DCORE_DISPATCHER", "inline")
    clean_variables.setenv("DCORE_THREAD_WORKERS", "3")
    clean_variables.setenv("DCORE_IMPORTS", "app.tasks, app.models")
    clean_variables.setenv("DCORE_S3_SECRET_KEY", "hunter2")

    env = Environment.from_env(job_attempts=4)

    s = env.settings
    assert (s.storage, s.dispatcher, s.thread_workers) == ("memory", "inline", 3)
    assert s.imports == ["app.tasks", "app.models"]
    assert s.job_attempts == 4  # overrides win over variables
    assert "hunter2" not in repr(s)  # secrets stay secret
    assert type(env.storage).__name__ == "MemoryStorage"


def test_imports_also_accept_json_list(clean_variables: pytest.MonkeyPatch) -> None:
    clean_variables.setenv("DCORE_IMPORTS", '["a.b", "c"]')
    assert DcoreSettings().imports == ["a.b", "c"]


def test_invalid_variable_names_the_setting(clean_variables: pytest.MonkeyPatch) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "0")
    with pytest.raises(ConfigurationError, match="DCORE_THREAD_WORKERS='0' is not valid"):
        DcoreSettings()


def test_unknown_backend_name_fails_on_first_use_listing_choices(
    clean_variables: pytest.MonkeyPatch, dcore_registry: PluginRegistry
) -> None:
    clean_variables.setenv("DCORE_STORAGE", "minoi")
    env = Environment.from_env()
    with pytest.raises(PluginNotFoundError) as info:
        _ = env.storage
    assert "no StorageInterface plugin named 'minoi'" in str(info.value)
    assert "Did you mean 'minio'?" in str(info.value)


def test_services_are_built_lazily_once_and_injectable(dcore_env: Environment) -> None:
    assert dcore_env.events is dcore_env.events
    assert isinstance(dcore_env.events, MemoryEventBus)
    assert dcore_env.service(StorageInterface) is dcore_env.storage  # type: ignore[type-abstract]
    with pytest.raises(LookupError, match="str is not a service"):
        dcore_env.service(str)


def test_passed_in_services_are_used_and_not_closed(dcore_registry: PluginRegistry) -> None:
    closed: list[str] = []

    class Bus(MemoryEventBus):
        def close(self) -> None:
            closed.append("bus")

    bus = Bus()
    env = Environment(DcoreSettings(), events=bus, registry=dcore_registry)
    assert env.events is bus
    env.close()
    assert closed == []


def test_resource_is_a_per_environment_singleton_closed_with_it(
    dcore_env: Environment,
) -> None:
    class Thing:
        closed = False

        def close(self) -> None:
            self.closed = True

    thing = dcore_env.resource("test.thing", Thing)
    assert dcore_env.resource("test.thing", Thing) is thing
    dcore_env.close()
    assert thing.closed


def test_use_environment_scopes_nests_and_restores(dcore_registry: PluginRegistry) -> None:
    outer_default = current_environment()
    a = Environment(DcoreSettings(), registry=dcore_registry)
    b = Environment(DcoreSettings(), registry=dcore_registry)
    with use_environment(a):
        assert current_environment() is a
        with use_environment(b):
            assert current_environment() is b
        assert current_environment() is a
    assert current_environment() is outer_default


def test_an_environment_scoped_again_inside_another_leaves_that_one_current(
    dcore_registry: PluginRegistry,
) -> None:
    """a, then b, then a again: leaving the innermost a makes b current, not a."""
    a = Environment(DcoreSettings(), registry=dcore_registry)
    b = Environment(DcoreSettings(), registry=dcore_registry)
    with use_environment(a):
        with use_environment(b):
            with use_environment(a):
                assert current_environment() is a
            assert current_environment() is b
        assert current_environment() is a


def test_blocks_that_end_out_of_order_each_remove_their_own_entry(
    dcore_registry: PluginRegistry,
) -> None:
    """Blocks in different threads may end in any order: the outermost a ending first
    leaves the later a (and b) in place, so a is still current."""
    a = Environment(DcoreSettings(), registry=dcore_registry)
    b = Environment(DcoreSettings(), registry=dcore_registry)
    outer, middle, inner = use_environment(a), use_environment(b), use_environment(a)
    for block in (outer, middle, inner):
        block.__enter__()
    outer.__exit__(None, None, None)
    assert current_environment() is a  # the inner block's entry
    inner.__exit__(None, None, None)
    assert current_environment() is b
    middle.__exit__(None, None, None)


def test_scoped_environment_is_the_innermost_one_and_never_builds_the_default(
    dcore_registry: PluginRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dcore._core.environment as module

    monkeypatch.setattr(module, "_stack", [])
    monkeypatch.setattr(module, "_tokens", [])
    monkeypatch.setattr(module, "_default", None)
    assert scoped_environment() is None
    assert module._default is None  # asking did not build one

    a = Environment(DcoreSettings(), registry=dcore_registry)
    with use_environment(a):
        assert scoped_environment() is a
    assert scoped_environment() is None


def test_scoped_environment_is_visible_to_other_threads(dcore_env: Environment) -> None:
    seen: list[Environment] = []
    worker = threading.Thread(target=lambda: seen.append(current_environment()))
    worker.start()
    worker.join(30)
    assert seen == [dcore_env]


def test_default_storage_root_is_resolved_against_cwd_at_first_build(
    fresh_default: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dcore_registry: PluginRegistry,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)

    env = current_environment()
    monkeypatch.chdir(second)  # a later chdir does not move the root

    assert env.settings.storage_root == first / ".dcore" / "storage"
    assert env.settings.storage_root.is_absolute()
    assert current_environment() is env
    env.storage.put("uploads/a.txt", b"hello")
    assert (first / ".dcore" / "storage" / "uploads" / "a.txt").read_bytes() == b"hello"
    assert not (second / ".dcore").exists()


def test_default_storage_root_follows_dcore_storage_root(
    fresh_default: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DCORE_STORAGE_ROOT", "data/files")
    assert current_environment().settings.storage_root == tmp_path / "data" / "files"


def test_reset_default_environment_closes_and_rebuilds(fresh_default: None) -> None:
    first = current_environment()
    reset_default_environment()
    assert current_environment() is not first
