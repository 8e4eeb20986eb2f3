"""One pipeline for the differential table: run in the simulator and on a real Celery
worker (which imports this module by name, ``DCORE_IMPORTS=dcore_it_conformance``).

The same stage and core function run on both sides; only the faults differ in kind. In
the simulator they come from a FaultPlan; on the real worker from real means, fired at
the same point by this module: a SIGKILL of the worker process, a cut of the proxy the
worker reaches its job store through (the embedded Toxiproxy), a message published
twice, a bus on a server that is down. Each fault fires once per job (a marker in
Redis), as a FaultPlan fault fires ``times=1``.

Effects are kept per job in the order they happened: in the simulator as trace effects,
on the worker in a Redis list, so the table compares how often each step ran and in
which order the compensations ran.

The compensation cases chain ``conf_step`` stages (which can be undone) before
``conf_work``; the others leave them out, so their jobs have nothing to compensate.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import redis

from dcore import (
    Execute,
    NextFn,
    PipelineContext,
    RetryPolicy,
    core_function,
    current_environment,
    register_plugin,
)
from dcore._core.lifecycle import give_up
from dcore._plugins.registry import default_registry
from dcore.backends.redis_events import RedisEventBus
from dcore.backends.redis_jobs import RedisJobStore
from dcore.services.storage import StorageInterface
from dcore_testing.sim import SimEnvironment, effect

#: set in the worker's environment by the test: the Redis this module keeps its markers
#: and counters in (direct, never through the proxy), the Toxiproxy API and proxy name
REDIS_URL = "CONF_REDIS_URL"
TOXIPROXY_URL = "CONF_TOXIPROXY_URL"
PROXY = "CONF_PROXY"


class CaseContext(PipelineContext):
    case: str
    work_seconds: float = 0.0
    #: "", "runtime" (RuntimeError), "value" (ValueError), "give_up" (RuntimeError, given up)
    fail: str = ""
    #: the worker kills itself: "enter" (before the stage's work) or "exit" (after the
    #: rest of the pipeline returned, before the stage returns)
    kill: str = ""
    #: the stage stores a marker mid-way (a service call the simulator can crash after)
    midway: bool = False
    #: the ``conf_step`` whose compensation fails every time ("": none)
    undo_fails: str = ""


def in_sim() -> bool:
    return isinstance(current_environment(), SimEnvironment)


def _redis() -> redis.Redis[Any]:
    return redis.Redis.from_url(os.environ[REDIS_URL])


def _key(*parts: str) -> str:
    return ":".join((current_environment().settings.key_prefix, "conf", *parts))


def once(job_id: str, name: str) -> bool:
    """True the first time ``name`` happens for ``job_id`` (on the real worker)."""
    client = _redis()
    try:
        return bool(client.set(_key("once", job_id, name), 1, nx=True))
    finally:
        client.close()


def record(job_id: str, name: str) -> None:
    if in_sim():
        effect(name)
        return
    client = _redis()
    try:
        client.rpush(_key("effects", job_id), name)
    finally:
        client.close()


def effects(job_id: str) -> list[str]:
    """The steps that ran for ``job_id`` on the real worker, in order."""
    client = _redis()
    try:
        names = client.lrange(_key("effects", job_id), 0, -1)
    finally:
        client.close()
    return [name.decode() for name in names]


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@register_plugin("conf_work", registry=default_registry(), replace=True)
class Work(Execute[CaseContext]):
    def __init__(self, storage: StorageInterface) -> None:
        self.storage = storage

    def execute(self, next_fn: NextFn[CaseContext], context: CaseContext) -> Any:
        job = context.job_id
        if context.kill == "enter" and not in_sim() and once(job, "kill-enter"):
            kill_self()
        record(job, "work")
        if context.midway:
            self.storage.put(f"midway/{job}", b"1")
        if context.work_seconds:
            current_environment().clock.sleep(context.work_seconds)
        if context.fail:
            error: Exception = (ValueError if context.fail == "value" else RuntimeError)(
                f"case {context.case} fails"
            )
            raise give_up(error) if context.fail == "give_up" else error
        result = next_fn(context)
        if context.kill == "exit" and not in_sim() and once(job, "kill-exit"):
            kill_self()
        return result


@register_plugin("conf_step", registry=default_registry(), replace=True)
class Step(Execute[CaseContext]):
    """A step that can be undone: runs as ``name``, compensates as ``undo <name>``
    (failing every time if the case says so)."""

    #: a failing undo is tried twice, 0.2 s apart (the default waits seconds)
    compensation_retry = RetryPolicy(attempts=2, initial=0.2)

    def __init__(self, name: str) -> None:
        self.name = name

    def execute(self, next_fn: NextFn[CaseContext], context: CaseContext) -> Any:
        record(context.job_id, self.name)
        return next_fn(context)

    def compensate(self, context: CaseContext, error: BaseException) -> None:
        record(context.job_id, f"undo {self.name}")
        if context.undo_fails == self.name:
            raise ConnectionError(f"undo {self.name} fails in case {context.case}")


@core_function
def finish(context: CaseContext) -> str:
    record(context.job_id, "core")
    return context.case


# -- the real worker's job store: the same Redis store, with a hook at each step --------
def set_plan(settings_prefix: str, job_id: str, plan: str) -> None:
    """What the worker's job store does around one of its calls for ``job_id``:
    ``"kill-after:bury"``, ``"kill-before:mark_compensated"`` or
    ``"cut-before:end_attempt:1.0"`` (cut the proxy for 1 s)."""
    client = _redis()
    try:
        client.set(f"{settings_prefix}:conf:plan:{job_id}", plan)
    finally:
        client.close()


def fired(settings_prefix: str, job_id: str, plan: str) -> bool:
    """Whether the worker carried out ``plan`` for ``job_id`` (it fires once per job)."""
    client = _redis()
    try:
        return bool(client.exists(f"{settings_prefix}:conf:once:{job_id}:{plan}"))
    finally:
        client.close()


def _plan(job_id: str) -> str | None:
    client = _redis()
    try:
        raw = client.get(_key("plan", job_id))
    finally:
        client.close()
    return raw.decode() if raw else None


def cut_proxy(seconds: float) -> None:
    """Disable the worker's job-store proxy now and enable it again after ``seconds``."""
    from dcore_testing.chaos import ToxiproxyClient

    client = ToxiproxyClient(os.environ[TOXIPROXY_URL])
    proxy = client.get_proxy(os.environ[PROXY])
    proxy.disable()

    def heal() -> None:
        proxy.enable()
        client.close()

    threading.Timer(seconds, heal).start()


@register_plugin("conf_redis", registry=default_registry(), replace=True)
class HookedRedisJobStore(RedisJobStore):
    """The Redis job store, firing the job's plan around ``claim``, ``end_attempt``,
    ``bury``, ``compensate`` and ``mark_compensated``: a real SIGKILL right before a call
    or right after it returned, or a real cut of the network path to Redis right before
    a call."""

    def _around(self, op: str, job_id: str, call: Any) -> Any:
        plan = _plan(job_id)
        if plan and plan.startswith(f"cut-before:{op}:") and once(job_id, plan):
            cut_proxy(float(plan.rsplit(":", 1)[1]))
        if plan == f"kill-before:{op}" and once(job_id, plan):
            kill_self()
        result = call()
        if plan == f"kill-after:{op}" and once(job_id, plan):
            kill_self()
        return result

    def claim(self, job_id: str, **kwargs: Any) -> Any:
        return self._around(
            "claim", job_id, lambda: super(HookedRedisJobStore, self).claim(job_id, **kwargs)
        )

    def end_attempt(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        self._around(
            "end_attempt",
            job_id,
            lambda: super(HookedRedisJobStore, self).end_attempt(job_id, *args, **kwargs),
        )

    def bury(self, job_id: str, **kwargs: Any) -> Any:
        return self._around(
            "bury", job_id, lambda: super(HookedRedisJobStore, self).bury(job_id, **kwargs)
        )

    def compensate(self, job_id: str, **kwargs: Any) -> Any:
        return self._around(
            "compensate",
            job_id,
            lambda: super(HookedRedisJobStore, self).compensate(job_id, **kwargs),
        )

    def mark_compensated(self, job_id: str, **kwargs: Any) -> None:
        self._around(
            "mark_compensated",
            job_id,
            lambda: super(HookedRedisJobStore, self).mark_compensated(job_id, **kwargs),
        )


@register_plugin("conf_down_bus", registry=default_registry(), replace=True)
class DownBus(RedisEventBus):
    """A Redis event bus on a server that is down (``CONF_BUS_URL``: a closed port)."""

    @classmethod
    def from_environment(cls, env: Any, **options: Any) -> DownBus:
        return cls(url=os.environ["CONF_BUS_URL"], prefix=env.settings.key_prefix)
