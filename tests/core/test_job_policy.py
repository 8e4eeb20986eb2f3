"""Which re-delivery policy a job gets: what the Dispatch stage declares, else DCORE_JOB_*."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from dcore import DcoreSettings, Dispatch, RetryPolicy
from dcore._core.retry import declared_policy, job_policy

SETTINGS = DcoreSettings(job_attempts=4, job_backoff=3.0, job_initial_delay=2.0)


class Plain(Dispatch[Any]):
    def dispatch(self, next_fn: Any, context: Any) -> Any:
        return None


class Stubborn(Plain):
    retry_policy: ClassVar[RetryPolicy | None] = RetryPolicy(attempts=7)


def test_nothing_declared_falls_back_to_the_environment() -> None:
    policy = job_policy(declared_policy(None, Plain), SETTINGS)

    assert (policy.attempts, policy.backoff, policy.initial) == (4, 3.0, 2.0)


def test_a_declared_single_attempt_is_not_overridden_by_the_environment() -> None:
    policy = job_policy(declared_policy(RetryPolicy(attempts=1), Plain), SETTINGS)

    assert policy.attempts == 1


def test_chain_retry_beats_the_plugin_attribute_which_beats_the_environment() -> None:
    assert job_policy(declared_policy(None, Stubborn), SETTINGS).attempts == 7
    assert job_policy(declared_policy(RetryPolicy(attempts=2), Stubborn), SETTINGS).attempts == 2


def test_the_environment_policy_follows_settings_changed_after_a_first_job() -> None:
    """The policy built from DCORE_JOB_* is reused while the values stay the same, and a
    changed value (settings edited in place) gives a policy with that value."""
    settings = DcoreSettings(job_attempts=4, job_backoff=3.0)
    first = job_policy(None, settings)
    assert job_policy(None, settings) is first

    settings.job_attempts = 6
    settings.job_max_delay = 9.0
    changed = job_policy(None, settings)

    assert (changed.attempts, changed.backoff, changed.max_delay) == (6, 3.0, 9.0)
    assert job_policy(None, DcoreSettings(job_attempts=4, job_backoff=3.0)) == first


def test_an_invalid_environment_policy_is_refused_every_time() -> None:
    settings = DcoreSettings()
    settings.job_attempts = 0  # set without validation
    for _ in range(2):
        with pytest.raises(ValidationError):
            job_policy(None, settings)
