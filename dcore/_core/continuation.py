"""``Continuation``: the rest of a pipeline after its Dispatch, callable or shippable.

It holds the pipeline's :class:`~dcore._core.chain.BoundChain` (the frozen chain with the
pipeline's plugin instances and core function) and the stage to resume at, never the
Pipeline object itself."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic

from dcore._core.delivery import Action
from dcore._core.environment import Environment
from dcore._core.lifecycle import Delivered, deliver
from dcore._core.message import (
    ContextEnvelope,
    JobMessage,
    core_function_name,
    trace_propagator,
)
from dcore._core.retry import RetryPolicy, job_policy
from dcore._plugins.interfaces import ContextT

if TYPE_CHECKING:
    from dcore._core.chain import BoundChain

__all__ = ["Continuation"]


class Continuation(Generic[ContextT]):
    """The rest of a pipeline after its Dispatch: call it here, or ship it as a message.

    ``next_fn(ctx)`` runs the remainder in this process as the job's one and final
    attempt (recorded in the job store; a failure is recorded, dead-lettered and
    re-raised). Dispatchers that re-deliver call :meth:`run` with the attempt number.
    """

    def __init__(
        self,
        chain: BoundChain,
        resume_at: int,
        policy: RetryPolicy | None,
        trace: dict[str, str] | None = None,
    ) -> None:
        #: the frozen chain this is the rest of (stages ``resume_at..n``, then core)
        self.chain = chain
        self.resume_at = resume_at
        #: the job-level retry policy the Dispatch stage declared (None: the environment's)
        self.policy = policy
        #: trace context captured at the hand-off (see :meth:`bind`)
        self.trace: dict[str, str] = trace or {}
        # the message of one hand-off, built once for the job record, the dispatcher
        # and the dead letter alike (a 16 KiB context is not serialized three times)
        self._message: tuple[object, JobMessage | None] | None = None
        # ... and its JSON text, for attempt 1 (the record's and the dispatcher's)
        self._json: tuple[object, str] | None = None

    def bind(self, trace: dict[str, str]) -> Continuation[ContextT]:
        """A continuation for one hand-off, carrying ``trace``: :meth:`run` continues
        that trace in whatever thread it runs, and :meth:`to_message` ships it."""
        return Continuation(self.chain, self.resume_at, self.policy, trace)

    @property
    def environment(self) -> Environment:
        return self.chain.env

    def __call__(self, context: ContextT) -> Any:
        return self.run(context)

    def job_policy(self) -> RetryPolicy:
        """The job's re-delivery policy: the Dispatch stage's declared one, else the
        environment's ``DCORE_JOB_*``."""
        return job_policy(self.policy, self.environment.settings)

    def deliver(
        self,
        context: ContextT,
        *,
        attempt: int = 1,
        final: bool = False,
        message: str | Callable[[], str | None] | None = None,
    ) -> Delivered:
        """One delivery of the remainder as attempt ``attempt`` (see
        :func:`dcore._core.lifecycle.deliver`): claimed, run, recorded; the report says
        what the engine does next. ``final``: no delivery will follow a failure, so it
        is dead-lettered whatever the job policy says. ``message`` is the job's message
        JSON (or a function making it) when the caller has it (a worker); else it is
        built only if needed (a dead letter)."""
        env = self.environment
        policy = self.job_policy()
        if final:
            policy = policy.model_copy(update={"attempts": attempt})
        scope = trace_propagator().extract(self.trace) if self.trace else contextlib.nullcontext()
        with scope:
            return deliver(
                env,
                context.job_id,
                lambda: self.chain.run_from(self.resume_at, context),
                attempt=attempt,
                policy=policy,
                message=message if message is not None else lambda: self.to_json_or_none(context),
                saga=self.chain.saga(context, before=max(self.resume_at - 1, 0)),
            )

    def run(
        self,
        context: ContextT,
        *,
        attempt: int = 1,
        final: bool = True,
        message: str | Callable[[], str | None] | None = None,
    ) -> Any:
        """:meth:`deliver` once and return core_fn's value; a failure is recorded (and
        dead-lettered when ``final`` or out of attempts) and re-raised."""
        delivered = self.deliver(context, attempt=attempt, final=final, message=message)
        return delivered.value(context.job_id)

    def deliver_in_place(self, context: ContextT) -> Delivered:
        """Deliver until the job is done, carrying out retries, deferrals and requeues
        here (waiting on the environment's clock): for engines without a broker to hand
        the next delivery to, such as FastAPI's BackgroundTasks."""
        clock = self.environment.clock
        attempt = 1
        while True:
            delivered = self.deliver(context, attempt=attempt)
            outcome = delivered.outcome
            if outcome.action not in (Action.RETRY, Action.DEFER, Action.REQUEUE):
                return delivered
            clock.sleep(outcome.delay)
            attempt = outcome.attempt

    def run_unrecorded(self, context: ContextT) -> Any:
        """Run the remainder without touching the job store (for tests and tools)."""
        return self.chain.run_from(self.resume_at, context)

    def to_message(self, context: ContextT, *, attempt: int = 1) -> JobMessage:
        """The remainder as a JobMessage; ContextSerializationError names what cannot go."""
        cached = self._message
        if cached is not None and cached[0] is context and cached[1] is not None:
            message = cached[1]
            return message if attempt == message.attempt else message.with_attempt(attempt)
        message = self._build_message(context, attempt)
        self._message = (context, message)
        return message

    def _build_message(self, context: ContextT, attempt: int) -> JobMessage:
        return JobMessage(
            job_id=context.job_id,
            attempt=attempt,
            spec=self.chain.spec(),
            resume_at=self.resume_at,
            core_fn=core_function_name(self.chain.core_fn),
            context=ContextEnvelope.model_validate(context.to_envelope()),
            trace=self.trace or trace_propagator().inject(),
            shard=context.shard_key,
        )

    def to_json(self, context: ContextT) -> str:
        """:meth:`to_message`'s JSON text for the first attempt, serialized once per
        hand-off (the job record and the dispatcher send the same text)."""
        cached = self._json
        if cached is not None and cached[0] is context:
            return cached[1]
        text = self.to_message(context).to_json()
        self._json = (context, text)
        return text

    def to_json_or_none(self, context: ContextT) -> str | None:
        """The message JSON when the remainder can be shipped (for the job record and the
        DLQ), else None: in-process dispatchers may carry closures."""
        cached = self._message
        if cached is not None and cached[0] is context and cached[1] is None:
            return None
        try:
            return self.to_json(context)
        except Exception:
            self._message = (context, None)
            return None
