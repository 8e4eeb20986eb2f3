"""The in-memory job store's state machine: PENDING → RUNNING → SUCCEEDED / FAILED,
illegal moves rejected with the allowed ones named."""

from __future__ import annotations

import pytest

from dcore import Environment, JobState
from dcore.errors import IllegalTransitionError, JobNotFoundError


def test_success_path_counts_attempt_and_keeps_history(dcore_env: Environment) -> None:
    jobs = dcore_env.jobs
    assert jobs.create("j1").state is JobState.PENDING
    running = jobs.transition("j1", JobState.RUNNING)
    assert running.attempts == 1
    done = jobs.transition("j1", JobState.SUCCEEDED, result={"n": 1})

    assert done.state is JobState.SUCCEEDED
    assert done.result == {"n": 1}
    assert [t.state for t in done.history] == [
        JobState.PENDING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]


def test_failure_path_records_error_and_can_retry(dcore_env: Environment) -> None:
    jobs = dcore_env.jobs
    jobs.create("j2")
    jobs.transition("j2", JobState.RUNNING)
    failed = jobs.transition("j2", JobState.FAILED, error="ValueError: bad")
    assert (failed.state, failed.error) == (JobState.FAILED, "ValueError: bad")
    assert jobs.transition("j2", JobState.RUNNING).attempts == 2


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], JobState.SUCCEEDED),
        ([], JobState.FAILED),
        ([JobState.RUNNING, JobState.SUCCEEDED], JobState.RUNNING),
        ([JobState.RUNNING, JobState.SUCCEEDED], JobState.FAILED),
        ([JobState.RUNNING], JobState.PENDING),
    ],
)
def test_illegal_transition_is_rejected_naming_job_states_and_allowed(
    dcore_env: Environment, path: list[JobState], illegal: JobState
) -> None:
    jobs = dcore_env.jobs
    jobs.create("j3")
    for state in path:
        jobs.transition("j3", state)
    current = jobs.get("j3").state

    with pytest.raises(IllegalTransitionError) as info:
        jobs.transition("j3", illegal)

    assert f"job j3 cannot go from {current} to {illegal}" in str(info.value)
    assert jobs.get("j3").state is current  # unchanged


def test_expect_makes_transition_compare_and_set(dcore_env: Environment) -> None:
    jobs = dcore_env.jobs
    jobs.create("j4")
    jobs.transition("j4", JobState.RUNNING, expect={JobState.PENDING})
    with pytest.raises(IllegalTransitionError, match="job j4 is RUNNING, expected PENDING"):
        jobs.transition("j4", JobState.RUNNING, expect={JobState.PENDING})


def test_unknown_job_names_its_id(dcore_env: Environment) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        dcore_env.jobs.get("nope")


def test_creating_an_existing_live_job_is_rejected(dcore_env: Environment) -> None:
    dcore_env.jobs.create("j5")
    with pytest.raises(IllegalTransitionError, match="j5"):
        dcore_env.jobs.create("j5")
