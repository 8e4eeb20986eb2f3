"""Keeping running deliveries' leases alive while they run.

A delivery holds its job's lease for ``DCORE_LEASE_TTL`` seconds and renews it every
third of that while it runs, so another delivery of the job (a duplicate, or the broker
re-sending it) waits instead of running it a second time, and takes over only once the
renewals stop: the first delivery's worker is then presumed dead. A renewal that finds
the lease gone (another delivery took over) is logged; that delivery's later moves are
refused by the job store (fencing), so it can no longer change the record.

One daemon thread per :class:`~dcore._core.environment.Environment` renews every lease
of the process; it is started by the first delivery and stopped when the environment
closes. The simulator keeps leases on virtual time instead (its environment overrides
``Environment.keep_lease``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["Heartbeat", "LeaseKeeper"]

_log = logging.getLogger("dcore.leases")


class Heartbeat(Protocol):
    def stop(self) -> None:
        """Stop renewing (the delivery ended); idempotent."""
        ...


class _Kept:
    __slots__ = ("due", "job_id", "keeper", "lease", "owner")

    def __init__(self, keeper: LeaseKeeper, job_id: str, owner: str, lease: float,
                 due: float) -> None:  # fmt: skip
        self.keeper = keeper
        self.job_id = job_id
        self.owner = owner
        self.lease = lease
        self.due = due

    def stop(self) -> None:
        self.keeper._forget(self)


class LeaseKeeper:
    """Renews the leases of this environment's running deliveries on one thread."""

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._cond = threading.Condition()
        self._kept: dict[int, _Kept] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        # when the thread wakes up next (monotonic); a lease due later needs no wake-up
        self._wake_at = float("-inf")

    def keep(self, job_id: str, owner: str, lease: float) -> Heartbeat:
        """Renew ``owner``'s lease on ``job_id`` every ``lease / 3`` seconds until the
        returned heartbeat is stopped.

        The thread is woken only when this lease falls due before it would wake anyway:
        on a busy worker, where each job's lease is due later than the one before, a
        job then costs no thread switch."""
        kept = _Kept(self, job_id, owner, lease, self._env.clock.monotonic() + lease / 3)
        with self._cond:
            self._kept[id(kept)] = kept
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="dcore-lease-keeper", daemon=True
                )
                self._thread.start()
            if kept.due < self._wake_at:
                self._wake_at = kept.due
                self._cond.notify()
        return kept

    def _forget(self, kept: _Kept) -> None:
        with self._cond:
            self._kept.pop(id(kept), None)

    def _run(self) -> None:
        clock = self._env.clock
        while True:
            with self._cond:
                if self._closed:
                    return
                now = clock.monotonic()
                due = [k for k in self._kept.values() if k.due <= now]
                if not due:
                    soonest = min((k.due for k in self._kept.values()), default=now + 60)
                    self._wake_at = soonest
                    self._cond.wait(timeout=max(soonest - now, 0.01))
                    continue
                for kept in due:
                    kept.due = now + kept.lease / 3
            for kept in due:
                self._renew(kept)

    def _renew(self, kept: _Kept) -> None:
        try:
            renewed = self._env.jobs.renew(kept.job_id, owner=kept.owner, lease=kept.lease)
        except Exception as exc:  # the store is unreachable: try again next round
            _log.warning("could not renew the lease of job %s: %s", kept.job_id, exc)
            return
        if not renewed:
            _log.warning(
                "job %s: delivery %s lost its lease (another delivery took over); its "
                "moves will be refused",
                kept.job_id,
                kept.owner,
            )
            kept.stop()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._kept.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
