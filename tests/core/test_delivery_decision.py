"""The one delivery decision (dcore._core.delivery): what follows a claim and an attempt.

Table-driven for the named cases, property-based for the rules that must hold for every
policy and attempt, and a check that no engine decides on its own."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dcore
from dcore import RetryPolicy
from dcore._core.delivery import (
    MAX_LOST_DELIVERIES,
    REQUEUE_DELAY,
    Action,
    LeaseLost,
    Malformed,
    Raised,
    StoreUnreachable,
    Succeeded,
    after_attempt,
    after_claim,
)
from dcore.services.jobs import Claim, ClaimStatus, JobState


def raised(exc: BaseException, given_up: bool = False) -> Raised:
    return Raised(exc, f"{type(exc).__name__}: {exc}", given_up)


POLICY = RetryPolicy(attempts=3, initial=2.0, backoff=3.0, retry_on=(ConnectionError,))

AFTER_ATTEMPT = [
    # (attempt, how it ended, action, next attempt, delay)
    (1, Succeeded(), Action.ACK, 1, 0.0),
    (1, raised(ConnectionError("x")), Action.RETRY, 2, 2.0),
    (2, raised(ConnectionError("x")), Action.RETRY, 3, 6.0),
    (3, raised(ConnectionError("x")), Action.DEAD, 3, 0.0),  # retries exhausted
    (1, raised(ConnectionError("x"), given_up=True), Action.DEAD, 1, 0.0),  # give_up()
    (1, raised(ValueError("x")), Action.DEAD, 1, 0.0),  # not in retry_on
    (1, Malformed("bad JSON"), Action.DEAD, 1, 0.0),
    (2, StoreUnreachable("down"), Action.REQUEUE, 2, REQUEUE_DELAY),
    (2, LeaseLost("taken over"), Action.SKIP, 2, 0.0),
]


@pytest.mark.parametrize(("attempt", "ended", "action", "next_attempt", "delay"), AFTER_ATTEMPT)
def test_what_follows_an_attempt(
    attempt: int, ended: object, action: Action, next_attempt: int, delay: float
) -> None:
    outcome = after_attempt(POLICY, attempt, ended)  # type: ignore[arg-type]
    assert (outcome.action, outcome.attempt, outcome.delay) == (action, next_attempt, delay)


AFTER_CLAIM = [
    (Claim(ClaimStatus.STARTED, JobState.RUNNING, 1), Action.RUN),
    (Claim(ClaimStatus.STARTED, JobState.RUNNING, 1, lost=MAX_LOST_DELIVERIES - 1), Action.RUN),
    (Claim(ClaimStatus.STARTED, JobState.RUNNING, 1, lost=MAX_LOST_DELIVERIES), Action.DEAD),
    (Claim(ClaimStatus.BUSY, JobState.RUNNING, 1, retry_in=4.5), Action.DEFER),
    (Claim(ClaimStatus.FINISHED, JobState.SUCCEEDED, 1), Action.SKIP),
    (Claim(ClaimStatus.FINISHED, JobState.DEAD, 1), Action.SKIP),
    (Claim(ClaimStatus.ENDED, JobState.FAILED, 1, plan="retry"), Action.SKIP),
    (Claim(ClaimStatus.ENDED, JobState.RUNNING, 2), Action.SKIP),  # an older attempt
    (Claim(ClaimStatus.ENDED, JobState.FAILED, 1, plan="dead"), Action.DEAD),  # finish it
    # failed for good, its worker died before undoing the completed stages: undo them
    (Claim(ClaimStatus.ENDED, JobState.FAILED, 1, plan="compensate"), Action.COMPENSATE),
    (Claim(ClaimStatus.COMPENSATING, JobState.COMPENSATING, 1), Action.COMPENSATE),
    (StoreUnreachable("down"), Action.REQUEUE),
]


@pytest.mark.parametrize(("claim", "action"), AFTER_CLAIM)
def test_what_follows_a_claim(claim: Claim | StoreUnreachable, action: Action) -> None:
    outcome = after_claim(1, claim)
    assert outcome.action is action
    assert outcome.attempt == 1
    if action is Action.DEFER:
        assert outcome.delay == 4.5
    if action is Action.DEAD and isinstance(claim, Claim) and claim.lost:
        assert f"died {MAX_LOST_DELIVERIES} times" in (outcome.reason or "")


policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 6),
    initial=st.floats(0, 10),
    backoff=st.floats(1, 4),
    jitter=st.floats(0, 1),
    retry_on=st.sampled_from([(Exception,), (ConnectionError,)]),
)
errors = st.sampled_from([ConnectionError("c"), ValueError("v"), TimeoutError("t")])


@given(
    policy=policies,
    attempt=st.integers(1, 8),
    error=errors,
    given_up=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_failure_is_retried_exactly_when_the_policy_allows(
    policy: RetryPolicy, attempt: int, error: Exception, given_up: bool, seed: int
) -> None:
    outcome = after_attempt(policy, attempt, raised(error, given_up), random.Random(seed))
    allowed = not given_up and policy.should_retry(error) and attempt < policy.attempts
    if allowed:
        assert outcome.action is Action.RETRY
        assert outcome.attempt == attempt + 1
        assert outcome.delay == policy.delay(attempt, random.Random(seed))
    else:
        assert outcome.action is Action.DEAD
        assert outcome.attempt == attempt
    assert outcome.reason is not None
    assert type(error).__name__ in outcome.reason


@given(
    policy=policies,
    attempt=st.integers(1, 8),
    lost=st.integers(0, 10),
    status=st.sampled_from(list(ClaimStatus)),
    retry_in=st.floats(0, 60),
)
def test_a_delivery_runs_only_when_its_claim_started_and_never_adds_an_attempt(
    policy: RetryPolicy, attempt: int, lost: int, status: ClaimStatus, retry_in: float
) -> None:
    claim = Claim(status, JobState.RUNNING, attempt, lost=lost, retry_in=retry_in)
    outcome = after_claim(attempt, claim)
    assert outcome.attempt == attempt  # a claim never moves to another attempt
    assert (outcome.action is Action.RUN) == (
        status is ClaimStatus.STARTED and lost < MAX_LOST_DELIVERIES
    )
    if outcome.action is Action.DEFER:
        assert outcome.delay == retry_in


ENGINES = [
    "dcore/dispatchers/thread.py",
    "dcore/celery.py",
    "dcore/dispatchers/fastapi.py",
    "dcore_testing/sim/dispatcher.py",
]
#: what only the decision (and the lifecycle carrying out its records) may consult
DECIDING = re.compile(
    r"\b(should_retry|is_given_up|dead_letter|MAX_LOST_DELIVERIES|"
    r"\.attempts\s*[<>]=?|final\s*=\s*(?!d\.attempt))"
)


@pytest.mark.parametrize("path", ENGINES)
def test_no_engine_decides_on_its_own(path: str) -> None:
    root = Path(dcore.__file__).resolve().parent.parent
    source = (root / path).read_text()
    assert "dcore._core.delivery" in source or "deliver" in source
    found = DECIDING.findall(source)
    assert found == [], f"{path} decides what follows a delivery itself: {found}"
