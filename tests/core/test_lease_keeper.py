"""The lease keeper: one thread renews the leases of an environment's running deliveries
every third of their lease, and a lease due sooner than the thread's next wake-up wakes
it (a long lease kept first must not delay a short one)."""

from __future__ import annotations

import time

import dcore
from dcore.services.jobs import ClaimStatus


def _claimed(env: dcore.Environment, job_id: str, owner: str, lease: float) -> float:
    env.jobs.create(job_id)
    claim = env.jobs.claim(job_id, attempt=1, owner=owner, lease=lease)
    assert claim.status is ClaimStatus.STARTED
    until = env.jobs.get(job_id).lease_until
    assert until is not None
    return until


def _renewed(env: dcore.Environment, job_id: str, first: float, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        until = env.jobs.get(job_id).lease_until
        if until is not None and until > first:
            return True
        time.sleep(0.01)
    return False


def test_a_short_lease_kept_after_a_long_one_is_renewed_in_time(
    dcore_env: dcore.Environment,
) -> None:
    _claimed(dcore_env, "long", "a", 60.0)
    long_beat = dcore_env.keep_lease("long", "a", 60.0)  # the thread sleeps ~20 s
    time.sleep(0.05)  # let it go to sleep on the long lease
    first = _claimed(dcore_env, "short", "b", 0.3)
    short_beat = dcore_env.keep_lease("short", "b", 0.3)  # due in 0.1 s
    try:
        assert _renewed(dcore_env, "short", first, within=2.0)
    finally:
        short_beat.stop()
        long_beat.stop()


def test_leases_kept_one_after_another_are_each_renewed(dcore_env: dcore.Environment) -> None:
    """A worker's jobs in a row: each later lease is due after the thread's wake-up,
    which then finds it without being woken."""
    firsts = {}
    beats = []
    for i in range(3):
        job_id = f"job-{i}"
        firsts[job_id] = _claimed(dcore_env, job_id, f"o{i}", 0.3)
        beats.append(dcore_env.keep_lease(job_id, f"o{i}", 0.3))
        time.sleep(0.02)
    try:
        for job_id, first in firsts.items():
            assert _renewed(dcore_env, job_id, first, within=2.0), job_id
    finally:
        for beat in beats:
            beat.stop()


def test_a_stopped_lease_is_no_longer_renewed(dcore_env: dcore.Environment) -> None:
    first = _claimed(dcore_env, "job", "a", 0.3)
    dcore_env.keep_lease("job", "a", 0.3).stop()
    assert not _renewed(dcore_env, "job", first, within=0.4)
