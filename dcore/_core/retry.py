"""Retry policies for stages (and jobs), run with tenacity on the environment's clock.

Resolution order for a stage: ``chain(..., retry=...)`` > the plugin class's
``retry_policy`` > the interface's ``retry_policy`` > :data:`NO_RETRY` (one attempt:
retrying a non-idempotent stage must be opt-in).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import tenacity
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from dcore._core.clock import Clock
from dcore._core.resolve import exception_class
from dcore._core.settings import DcoreSettings

__all__ = [
    "NO_RETRY",
    "RetryPolicy",
    "acall_with_retry",
    "call_with_retry",
    "declared_policy",
    "job_policy",
    "resolve_policy",
]

T = TypeVar("T")


class RetryPolicy(BaseModel):
    """``attempts`` tries in all; waits ``initial * backoff**n`` capped at ``max_delay``,
    plus a random extra of up to ``jitter`` times that delay. ``retry_on`` names the exception
    types worth retrying (default: any ``Exception``)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    attempts: int = Field(default=3, ge=1)
    backoff: float = Field(default=2.0, ge=1.0)
    initial: float = Field(default=0.1, ge=0.0)
    max_delay: float = Field(default=60.0, ge=0.0)
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    @field_validator("retry_on", mode="before")
    @classmethod
    def _as_tuple(cls, value: Any) -> Any:
        if isinstance(value, type | str):
            value = (value,)
        if isinstance(value, list | tuple):
            return tuple(_exception_class(v) if isinstance(v, str) else v for v in value)
        return value

    @field_serializer("retry_on", when_used="json")
    def _names(self, kinds: tuple[type[BaseException], ...]) -> list[str]:
        """``pkg.mod:Class`` names, so a policy shipped in a JobMessage keeps them."""
        return [f"{k.__module__}:{k.__qualname__}" for k in kinds]

    @model_validator(mode="after")
    def _check_types(self) -> RetryPolicy:
        for kind in self.retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ValueError(f"retry_on must hold exception classes, got {kind!r}")
        return self

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry_number`` (1 = after the first failure)."""
        base = min(self.initial * self.backoff ** (retry_number - 1), self.max_delay)
        if self.jitter and rng is not None:
            base += rng.uniform(0, self.jitter * base)
        return base

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Every wait the policy allows, in order (``attempts - 1`` of them)."""
        for n in range(1, self.attempts):
            yield self.delay(n, rng)

    def should_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on)


def _exception_class(name: str) -> type[BaseException]:
    try:
        return exception_class(name)
    except ValueError as exc:
        raise ValueError(f"retry_on names {exc}") from None


NO_RETRY = RetryPolicy(attempts=1)


def declared_policy(explicit: RetryPolicy | None, plugin_cls: type) -> RetryPolicy | None:
    """``chain(retry=)`` > plugin attribute > interface attribute, or None if none says."""
    if explicit is not None:
        return explicit
    # the attribute lookup finds the nearest definition: the answer whenever it is a policy
    found = getattr(plugin_cls, "retry_policy", None)
    if isinstance(found, RetryPolicy):
        return found
    # a nearer None does not hide a policy further up (a plugin cannot un-declare one)
    for klass in plugin_cls.__mro__:
        policy = vars(klass).get("retry_policy")
        if isinstance(policy, RetryPolicy):
            return policy
    return None


def resolve_policy(
    explicit: RetryPolicy | None, plugin_cls: type, default: RetryPolicy = NO_RETRY
) -> RetryPolicy:
    """The declared policy, else ``default``."""
    declared = declared_policy(explicit, plugin_cls)
    return default if declared is None else declared


def job_policy(declared: RetryPolicy | None, settings: DcoreSettings) -> RetryPolicy:
    """A job's re-delivery policy: the Dispatch stage's declared one (even a declared
    single attempt), else the environment's ``DCORE_JOB_*``."""
    if declared is not None:
        return declared
    return _settings_policy(
        settings.job_attempts,
        settings.job_backoff,
        settings.job_initial_delay,
        settings.job_max_delay,
    )


def _retrying_options(
    policy: RetryPolicy,
    retry_if: Callable[[BaseException], bool] | None,
    before_sleep: Callable[[int, BaseException, float], None] | None,
    rng: random.Random | None,
) -> dict[str, Any]:
    """What tenacity's Retrying and AsyncRetrying both take for ``policy``."""

    def should(exc: BaseException) -> bool:
        return policy.should_retry(exc) and (retry_if is None or retry_if(exc))

    def wait(state: tenacity.RetryCallState) -> float:
        return policy.delay(state.attempt_number, rng)

    def notify(state: tenacity.RetryCallState) -> None:
        if before_sleep is not None and state.outcome is not None and state.next_action:
            exc = state.outcome.exception()
            assert exc is not None
            before_sleep(state.attempt_number, exc, state.next_action.sleep)

    return {
        "stop": tenacity.stop_after_attempt(policy.attempts),
        "wait": wait,
        "retry": tenacity.retry_if_exception(should),
        "before_sleep": notify,
        "reraise": True,
    }


@functools.lru_cache(maxsize=64, typed=True)
def _settings_policy(
    attempts: int, backoff: float, initial: float, max_delay: float
) -> RetryPolicy:
    """The policy of ``DCORE_JOB_*`` values, built once per distinct values (a frozen
    model, so one instance serves every job; settings changed later give a new key)."""
    return RetryPolicy(attempts=attempts, backoff=backoff, initial=initial, max_delay=max_delay)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    clock: Clock,
    *,
    retry_if: Callable[[BaseException], bool] | None = None,
    before_sleep: Callable[[int, BaseException, float], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` under ``policy``, sleeping through ``clock``; the last error is re-raised
    with its own type. ``retry_if`` narrows which failures count (e.g. only the stage's
    own, not those raised further down the chain)."""
    if policy.attempts == 1:
        return fn()
    options = _retrying_options(policy, retry_if, before_sleep, rng)
    return tenacity.Retrying(sleep=clock.sleep, **options)(fn)


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_if: Callable[[BaseException], bool] | None = None,
    before_sleep: Callable[[int, BaseException, float], None] | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """:func:`call_with_retry` for a coroutine function: the waits are awaited with
    ``sleep`` (an environment's ``sleep_async``: on the loop, or on a test's clock), so
    a waiting stage never blocks the loop."""
    if policy.attempts == 1:
        return await fn()
    options = _retrying_options(policy, retry_if, before_sleep, rng)
    retrying: tenacity.AsyncRetrying = tenacity.AsyncRetrying(sleep=sleep, **options)
    return await retrying(fn)
