"""The checks that read only the settings: unknown variables, Celery with process-local
services, recovery turned off, and the visibility timeout against retry delays and the
lease."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcore import DcoreSettings, RetryPolicy
from dcore._doctor import Finding, Level, run_checks
from dcore._doctor.config import (
    check_dispatch,
    check_recovery,
    check_settings,
    check_visibility,
    longest_job_delay,
)


def levels(findings: list[Finding]) -> list[str]:
    return [str(f.level) for f in findings]


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def redis_services(**overrides: Any) -> DcoreSettings:
    return DcoreSettings(
        **{
            "dispatcher": "celery",
            "job_store": "redis",
            "event_bus": "redis",
            "locks": "redis",
            **overrides,
        }
    )


# -- settings ----------------------------------------------------------------------------
def test_an_unknown_variable_is_a_warning_with_the_setting_it_probably_meant() -> None:
    finding = only(check_settings({"DCORE_STORGE": "minio", "PATH": "/bin"}))

    assert finding.level is Level.WARNING
    assert "DCORE_STORGE is not a dcore setting" in finding.message
    assert "did you mean DCORE_STORAGE?" in finding.message


def test_known_variables_only_is_ok() -> None:
    assert levels(check_settings({"DCORE_STORAGE": "minio", "DCORE_REQUIRE_SERVICES": "1"})) == [
        "ok"
    ]


def test_settings_that_do_not_load_are_an_error_finding_not_an_exception(
    clean_variables: pytest.MonkeyPatch,
) -> None:
    clean_variables.setenv("DCORE_THREAD_WORKERS", "abc")

    findings = run_checks()

    assert [(f.check, f.level) for f in findings] == [
        ("settings", Level.OK),
        ("settings", Level.ERROR),
    ]
    assert "DCORE_THREAD_WORKERS='abc' is not valid: expected an integer" in findings[1].message


# -- dispatch ----------------------------------------------------------------------------
def test_celery_with_the_memory_job_store_is_an_error_naming_the_fix() -> None:
    finding = only(check_dispatch(redis_services(job_store="memory"), celery=True))

    assert finding.level is Level.ERROR
    assert "DcoreSettings(job_store='memory')" in finding.message
    assert "PENDING for ever" in finding.message
    assert "Fix: DCORE_JOB_STORE=redis" in finding.message


def test_celery_with_the_memory_event_bus_is_an_error_naming_the_dead_letters() -> None:
    finding = only(check_dispatch(redis_services(event_bus="memory"), celery=True))

    assert finding.level is Level.ERROR
    assert "dead letters" in finding.message
    assert "Fix: DCORE_EVENT_BUS=redis" in finding.message


def test_celery_with_memory_locks_is_a_warning() -> None:
    finding = only(check_dispatch(redis_services(locks="memory"), celery=True))

    assert finding.level is Level.WARNING
    assert "Fix: DCORE_LOCKS=redis" in finding.message


def test_a_worker_names_itself_when_the_dispatcher_setting_is_not_celery() -> None:
    finding = only(check_dispatch(redis_services(dispatcher="auto", job_store="memory"),
                                  celery=True))  # fmt: skip

    assert finding.message.startswith("a Celery worker with DcoreSettings(job_store='memory')")


def test_celery_with_shared_services_and_in_process_dispatch_with_memory_are_ok() -> None:
    assert levels(check_dispatch(redis_services(), celery=True)) == ["ok"]
    assert levels(check_dispatch(DcoreSettings(dispatcher="thread"), celery=False)) == ["ok"]


# -- recovery ----------------------------------------------------------------------------
def test_recovery_turned_off_under_celery_is_a_warning_naming_what_is_lost() -> None:
    finding = only(check_recovery(redis_services(recovery_interval=0), celery=True))

    assert finding.level is Level.WARNING
    assert "DcoreSettings(recovery_interval=0.0)" in finding.message
    assert "PENDING for ever" in finding.message
    assert "dcore jobs resend-stale" in finding.message


def test_recovery_running_says_when_a_dead_workers_jobs_come_back() -> None:
    finding = only(check_recovery(redis_services(recovery_interval=5, lease_ttl=10),
                                  celery=True))  # fmt: skip

    assert finding.level is Level.OK
    assert "within about 15 s" in finding.message


def test_without_celery_recovery_and_visibility_are_not_checked() -> None:
    settings = DcoreSettings(recovery_interval=0, celery_visibility_timeout=1)
    assert check_recovery(settings, celery=False) == []
    assert check_visibility(settings, celery=False) == []


# -- visibility --------------------------------------------------------------------------
def test_a_retry_countdown_longer_than_the_visibility_timeout_is_a_warning() -> None:
    settings = redis_services(job_attempts=5, job_initial_delay=100, job_backoff=2,
                              job_max_delay=1000, celery_visibility_timeout=300)  # fmt: skip

    finding = only(check_visibility(settings, celery=True))

    assert finding.level is Level.WARNING
    assert "longest retry delay of the DCORE_JOB_* policy (800 s" in finding.message
    assert "DCORE_CELERY_VISIBILITY_TIMEOUT above 800" in finding.message
    assert "DCORE_JOB_MAX_DELAY" in finding.message


def test_a_visibility_timeout_not_longer_than_the_lease_is_a_warning() -> None:
    finding = only(
        check_visibility(redis_services(celery_visibility_timeout=15, lease_ttl=15), celery=True)
    )

    assert finding.level is Level.WARNING
    assert "not longer than the lease (DcoreSettings(lease_ttl=15.0))" in finding.message
    assert "DCORE_CELERY_VISIBILITY_TIMEOUT above 15" in finding.message


def test_the_default_settings_pass_the_visibility_check() -> None:
    assert levels(check_visibility(DcoreSettings(), celery=True)) == ["ok"]


@given(
    attempts=st.integers(1, 8),
    initial=st.floats(0, 500),
    backoff=st.floats(1, 4),
    max_delay=st.floats(0, 2000),
    visibility=st.floats(0.5, 2000),
)
def test_the_delay_warning_appears_exactly_when_some_retry_waits_as_long_as_the_timeout(
    attempts: int, initial: float, backoff: float, max_delay: float, visibility: float
) -> None:
    settings = DcoreSettings(job_attempts=attempts, job_initial_delay=initial,
                             job_backoff=backoff, job_max_delay=max_delay,
                             celery_visibility_timeout=visibility, lease_ttl=0.1)  # fmt: skip
    policy = RetryPolicy(attempts=attempts, initial=initial, backoff=backoff,
                         max_delay=max_delay)  # fmt: skip
    outlasted = any(policy.delay(n) >= visibility for n in range(1, attempts))

    warned = [f for f in check_visibility(settings, celery=True) if f.level is Level.WARNING]

    assert bool(warned) == outlasted
    assert longest_job_delay(settings) == max(policy.delays(), default=0.0)
