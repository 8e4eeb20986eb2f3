"""Each simulation's settings: built once per distinct overrides and DCORE_* variables,
then copied, so one simulation that edits its settings edits no other's, and a changed
variable or override is seen by the next simulation."""

from __future__ import annotations

import pytest

from dcore_testing.sim import SimEnvironment


def test_simulations_with_the_same_options_get_equal_settings_of_their_own() -> None:
    first, second = SimEnvironment(seed=1, job_attempts=3), SimEnvironment(seed=2, job_attempts=3)

    assert first.settings == second.settings
    assert first.settings is not second.settings
    assert first.settings.imports is not second.settings.imports


def test_editing_one_simulations_settings_leaves_the_next_ones_alone() -> None:
    edited = SimEnvironment(seed=1, job_attempts=3)
    edited.settings.imports.append("app.tasks")
    edited.settings.job_backoff = 7.0

    fresh = SimEnvironment(seed=1, job_attempts=3)

    assert fresh.settings.imports == []
    assert fresh.settings.job_backoff == 2.0
    assert fresh.settings.job_attempts == 3


def test_a_changed_dcore_variable_or_override_reaches_the_next_simulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SimEnvironment(seed=1).settings.lease_ttl == 15.0

    monkeypatch.setenv("DCORE_LEASE_TTL", "40")
    assert SimEnvironment(seed=1).settings.lease_ttl == 40.0
    assert SimEnvironment(seed=1, lease_ttl=5.0).settings.lease_ttl == 5.0

    monkeypatch.delenv("DCORE_LEASE_TTL")
    assert SimEnvironment(seed=1).settings.lease_ttl == 15.0


def test_the_in_memory_services_stay_the_default_whatever_the_variables_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DCORE_JOB_STORE", "redis")
    assert SimEnvironment(seed=1).settings.job_store == "memory"
