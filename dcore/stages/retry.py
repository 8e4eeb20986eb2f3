"""``retry``: retry everything after this stage (later stages and core) as one unit.

A stage's own ``retry=`` (``chain(..., retry=RetryPolicy(...))``) covers only that
stage's body: a failure raised further down the chain is never retried by it, so retries
cannot multiply. Use this stage when the suffix as a whole is what should be tried again
— e.g. "fetch, transform, store" where a store failure means fetching afresh::

    pipeline.chain(Execute("retry", attempts=3, initial=0.5, retry_on=["ConnectionError"]))

Each attempt re-runs the whole rest of the pipeline on the same context object, so the
stages after it must be safe to repeat (and see what the previous attempt changed on
the context). A later stage's own ``retry=`` still applies inside every attempt: the
counts multiply here, by request. Put it after the Dispatch: before it, a retry would
hand the job off again.

Options are plain values so the stage can cross a remote hand-off; ``retry_on`` names
exception classes: builtins (``"TimeoutError"``) or ``"pkg.mod:Class"`` from a module
already imported (a message never makes a worker import anything).
"""

from __future__ import annotations

from typing import Any

from dcore._core.environment import Environment
from dcore._core.resolve import exception_class as resolve_exception_class
from dcore._core.retry import RetryPolicy, call_with_retry
from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin
from dcore.errors import PluginOptionsError

__all__ = ["RetryStage", "exception_class"]


def exception_class(name: str, where: str = "retry: retry_on") -> type[BaseException]:
    """An exception class from a builtin name or ``pkg.mod:Class`` of an imported module
    (see :mod:`dcore._core.resolve`); PluginOptionsError naming ``where`` otherwise."""
    try:
        return resolve_exception_class(name)
    except ValueError as exc:
        raise PluginOptionsError(f"{where} entry {exc}") from None


@register_plugin("retry", registry=default_registry())
class RetryStage(Execute[Any]):
    """Calls ``next_fn`` under a :class:`RetryPolicy`, sleeping on the environment's clock."""

    shareable = True  # holds only its (immutable) policy and the environment

    def __init__(
        self,
        env: Environment,
        attempts: int = 3,
        backoff: float = 2.0,
        initial: float = 0.1,
        max_delay: float = 60.0,
        jitter: float = 0.0,
        retry_on: list[str] | None = None,
    ) -> None:
        kinds = tuple(exception_class(n) for n in retry_on) if retry_on else (Exception,)
        try:
            self.policy = RetryPolicy(
                attempts=attempts,
                backoff=backoff,
                initial=initial,
                max_delay=max_delay,
                jitter=jitter,
                retry_on=kinds,
            )
        except ValueError as exc:
            raise PluginOptionsError(f"retry: bad policy options: {exc}") from None
        self.env = env

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        return call_with_retry(
            lambda: next_fn(context), self.policy, self.env.clock, rng=self.env.random
        )
