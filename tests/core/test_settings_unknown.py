"""An unknown DCORE_* variable (a typo such as DCORE_STORGE) warns, with a "did you mean",
once per distinct set of unknown names; the variables dcore reads outside the settings
never warn, and the source is checked so that list cannot go stale."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

import dcore
import dcore._core.settings as settings_module
import dcore_testing
from dcore import DcoreSettings, Environment
from dcore._core.settings import OTHER_VARIABLES, known_variables, unknown_variables, variable
from dcore.errors import ConfigurationWarning


@pytest.fixture
def clean_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DCORE_* variables, and no memory of sets already warned about."""
    for key in list(os.environ):
        if key.upper().startswith("DCORE_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(settings_module, "_warned", set())
    return monkeypatch


def recorded(build: int = 1) -> list[str]:
    """The ConfigurationWarning messages of ``build`` constructions, none filtered away."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(build):
            DcoreSettings()
    return [str(w.message) for w in caught if issubclass(w.category, ConfigurationWarning)]


def test_a_misspelled_variable_warns_with_a_suggestion_and_is_ignored(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_STORGE", "memory")
    with pytest.warns(ConfigurationWarning) as caught:
        built = DcoreSettings()
    [warning] = caught
    assert "DCORE_STORGE (did you mean DCORE_STORAGE?)" in str(warning.message)
    assert warning.filename == __file__  # points at the code that built the settings
    assert isinstance(warning.message, UserWarning)
    assert built.storage == "local"  # the typo changed nothing, which is why it warns


def test_a_name_close_to_nothing_warns_without_a_suggestion(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_QWXZ", "1")
    [message] = recorded()
    assert "DCORE_QWXZ" in message
    assert "did you mean" not in message


def test_one_warning_per_distinct_set_of_unknown_names(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_STORGE", "memory")
    assert len(recorded(build=5)) == 1
    clean_variables.setenv("DCORE_EVENTBUS", "redis")  # the set changed: warn again
    [message] = recorded(build=5)
    assert "DCORE_EVENTBUS (did you mean DCORE_EVENT_BUS?)" in message
    assert "DCORE_STORGE" in message
    clean_variables.delenv("DCORE_EVENTBUS")  # a set seen before stays quiet
    assert recorded(build=5) == []


def test_environments_built_in_a_loop_warn_once(clean_variables: pytest.MonkeyPatch) -> None:
    clean_variables.setenv("DCORE_JOB_STOR", "redis")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            Environment.from_env(storage="memory").close()
    [warning] = caught
    assert "DCORE_JOB_STOR (did you mean DCORE_JOB_STORE?)" in str(warning.message)


def test_under_warnings_as_errors_every_construction_fails(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_STORGE", "memory")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigurationWarning)
        for _ in range(2):
            with pytest.raises(ConfigurationWarning, match="DCORE_STORGE"):
                DcoreSettings()


def test_names_are_matched_regardless_of_case(clean_variables: pytest.MonkeyPatch) -> None:
    clean_variables.setenv("dcore_storage", "memory")  # read by the settings: known
    assert recorded() == []
    clean_variables.setenv("dcore_storge", "memory")
    [message] = recorded()
    assert "dcore_storge (did you mean DCORE_STORAGE?)" in message


@pytest.mark.parametrize("name", sorted(OTHER_VARIABLES))
def test_variables_read_outside_the_settings_do_not_warn(
    clean_variables: pytest.MonkeyPatch, name: str
) -> None:
    clean_variables.setenv(name, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigurationWarning)
        DcoreSettings()


def test_every_setting_variable_is_known() -> None:
    every = {variable(name): "x" for name in DcoreSettings.model_fields}
    assert unknown_variables(every) == frozenset()
    assert unknown_variables({**every, "DCORE_NOPE": "x", "HOME": "/"}) == {"DCORE_NOPE"}


def test_every_dcore_variable_the_code_reads_is_known() -> None:
    """A new ``os.environ.get("DCORE_X")`` anywhere in dcore or dcore_testing must be a
    setting or be added to OTHER_VARIABLES, or every user setting it would be warned."""
    literal = re.compile(r"""["'](DCORE_[A-Z0-9_]*[A-Z0-9])["']""")
    found: dict[str, str] = {}
    for package in (dcore, dcore_testing):
        for path in Path(package.__file__ or "").parent.rglob("*.py"):
            for name in literal.findall(path.read_text()):
                found.setdefault(name, str(path))
    assert {"DCORE_REQUIRE_SERVICES", "DCORE_CHAOS_UPSTREAM_HOST"} <= found.keys()
    assert {name: where for name, where in found.items() if name not in known_variables()} == {}
