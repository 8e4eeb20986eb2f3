"""``thread``: run the background part on a bounded pool of worker threads.

The pool belongs to the Environment (one per environment, made on first dispatch, not
at import). ``shutdown(timeout)`` stops taking work, drains what is queued and raises
``DispatcherShutdownTimeout`` if that takes longer than ``timeout``. Each delivery goes
through :func:`dcore._core.lifecycle.deliver`; this engine only carries out its outcome: a
retry (after the job policy's backoff), a deferred or requeued delivery is submitted
again after its delay, on a timer on the environment's clock. The wait happens on its
own timer thread, never on a worker, so failing jobs cannot starve the pool; a delivery
already promised is made even while the pool shuts down (drain waits for it).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dcore._core.delivery import Action
from dcore._core.environment import Environment, current_environment
from dcore._core.handle import JobHandle
from dcore._core.pipeline import Continuation
from dcore._plugins.interfaces import Dispatch
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import DispatchError, DispatcherShutdownTimeout

__all__ = ["ThreadDispatcher", "WorkerPool"]

_log = logging.getLogger("dcore.dispatch.thread")
#: outcomes (see dcore._core.delivery) after which this engine delivers the job again
_DELIVER_AGAIN = frozenset({Action.RETRY, Action.DEFER, Action.REQUEUE})


class WorkerPool:
    """A bounded thread pool that counts in-flight jobs so shutdown can drain with a
    deadline (``ThreadPoolExecutor.shutdown`` cannot time out)."""

    def __init__(self, workers: int, env: Environment) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dcore")
        self._env = env
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def submit(self, fn: Any, *args: Any, delay: float = 0.0) -> None:
        """Run ``fn(*args)`` on a worker (after ``delay`` seconds of the clock)."""
        with self._cond:
            if self._closed:
                raise DispatchError("the thread dispatcher is shut down; no new jobs accepted")
            self._in_flight += 1
        self._schedule(fn, args, delay)

    def resubmit(self, fn: Any, *args: Any, delay: float = 0.0) -> None:
        """Like :meth:`submit` for a retry of a job already accepted: allowed while
        shutting down, so draining never drops a job between two attempts."""
        with self._cond:
            self._in_flight += 1
        self._schedule(fn, args, delay)

    def _schedule(self, fn: Any, args: tuple[Any, ...], delay: float) -> None:
        def task() -> None:
            try:
                fn(*args)
            except Exception:
                _log.exception("background job failed")
            finally:
                self._done()

        if delay <= 0:
            self._start(task)
            return

        def timer() -> None:
            self._env.clock.sleep(delay)
            self._start(task)

        threading.Thread(target=timer, name="dcore-retry-timer", daemon=True).start()

    def _start(self, task: Any) -> None:
        try:
            self._executor.submit(task)
        except RuntimeError:  # the executor was stopped after a drain timed out
            _log.error("background job dropped: the thread pool was already stopped")
            self._done()

    def _done(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until no job is queued or running (including scheduled retries)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_flight == 0, timeout):
                raise DispatcherShutdownTimeout(
                    f"{self._in_flight} background job(s) still running after {timeout}s"
                )

    def shutdown(self, timeout: float | None = None) -> None:
        with self._cond:
            self._closed = True
        try:
            self.drain(timeout)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=False)

    def close(self) -> None:
        """Shut down when the environment closes; a stuck job cannot hang it forever."""
        self.shutdown(timeout=30.0)


def worker_pool(env: Environment) -> WorkerPool:
    return env.resource("dcore.thread_pool", lambda: WorkerPool(env.settings.thread_workers, env))


@register_plugin("thread", registry=default_registry())
class ThreadDispatcher(Dispatch[Any]):
    """Hands the remainder to the environment's worker threads."""

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> JobHandle:
        env = next_fn.environment
        pool = worker_pool(env)

        def attempt(n: int) -> None:
            delivered = next_fn.deliver(context, attempt=n)
            outcome = delivered.outcome
            if delivered.error is not None:
                _log.error("background job %s failed on attempt %d (%s)", context.job_id, n,
                           outcome.action, exc_info=delivered.error)  # fmt: skip
            if outcome.action in _DELIVER_AGAIN:
                pool.resubmit(attempt, outcome.attempt, delay=outcome.delay)

        pool.submit(attempt, 1)
        return JobHandle(job_id=context.job_id, status="scheduled")

    @staticmethod
    def shutdown(timeout: float | None = None, environment: Environment | None = None) -> None:
        """Drain the environment's worker threads and stop them."""
        env = environment or current_environment()
        worker_pool(env).shutdown(timeout)

    @staticmethod
    def drain(timeout: float | None = None, environment: Environment | None = None) -> None:
        """Wait for the environment's background jobs (and their retries) to finish."""
        env = environment or current_environment()
        worker_pool(env).drain(timeout)
