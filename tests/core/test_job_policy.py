"""Which re-delivery policy a job gets: what the Dispatch stage declares, else DCORE_JOB_*."""

from __future__ import annotations

from typing import Any, ClassVar

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
