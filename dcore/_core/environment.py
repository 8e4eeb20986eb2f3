"""The Environment: which implementation serves each service, plus the clock.

Built from ``DCORE_*`` settings; each service is created lazily, on first use, by
looking its backend name up in the plugin registry. ``use_environment(env)`` scopes one
(tests, the simulator); a scoped environment is visible to every thread, so work a
dispatcher runs in the background sees the same services as the request that made it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dcore._core.clock import Clock, SystemClock
from dcore._core.settings import DcoreSettings
from dcore._plugins.registry import PluginRegistry, current_registry
from dcore.errors import BackendNotFoundError, PluginNotFoundError

if TYPE_CHECKING:
    from dcore._core.leases import Heartbeat
    from dcore._core.observe import PipelineObserver
    from dcore._plugins.interfaces import Dispatch
    from dcore.services.events import EventBusInterface
    from dcore.services.jobs import JobStorageInterface
    from dcore.services.locks import LockInterface
    from dcore.services.storage import StorageInterface

__all__ = [
    "Environment",
    "current_environment",
    "reset_default_environment",
    "scoped_environment",
    "use_environment",
]

S = TypeVar("S")

#: Environment attribute → the settings field naming its backend.
_SERVICE_SETTINGS = {
    "storage": "storage",
    "events": "event_bus",
    "jobs": "job_store",
    "locks": "locks",
}


class Environment:
    """Services and settings for pipelines. Pass instances to override a backend."""

    #: True when every process that runs this environment's jobs shares its in-memory
    #: services (the simulator): a remote hand-off over them is then allowed
    memory_services_shared: bool = False
    #: Whether ``await pipeline.arun()`` runs plain stages and the hand-off in a worker
    #: thread (so they never block the caller's loop); the simulator runs them on its
    #: virtual-time loop instead, where a real thread would escape its scheduling
    async_offload: bool = True

    def __init__(
        self,
        settings: DcoreSettings | None = None,
        *,
        clock: Clock | None = None,
        registry: PluginRegistry | None = None,
        storage: StorageInterface | None = None,
        events: EventBusInterface | None = None,
        jobs: JobStorageInterface | None = None,
        locks: LockInterface | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or DcoreSettings()
        self.clock: Clock = clock or SystemClock()
        #: Randomness for behaviour (retry jitter); a simulator passes a seeded one.
        self.random: random.Random = rng or random.Random()
        self._registry = registry
        self._services: dict[str, Any] = {
            k: v
            for k, v in {"storage": storage, "events": events, "jobs": jobs, "locks": locks}.items()
            if v is not None
        }
        self._owned: list[Any] = []
        self._resources: dict[str, Any] = {}
        self._lock = threading.RLock()
        #: Replaces every Dispatch the pipeline builds (the simulator sets this).
        self.dispatch_wrapper: Callable[[Dispatch[Any]], Dispatch[Any]] | None = None
        #: Told of every stage enter/exit (tracing, the simulator's trace).
        self.observers: list[PipelineObserver] = []

    @classmethod
    def from_env(cls, **overrides: Any) -> Environment:
        """An environment from ``DCORE_*`` variables; ``overrides`` replace settings."""
        return cls(DcoreSettings(**overrides))

    @property
    def registry(self) -> PluginRegistry:
        return self._registry or current_registry()

    # -- services -------------------------------------------------------------------
    @property
    def storage(self) -> StorageInterface:
        return cast("StorageInterface", self._service("storage"))

    @property
    def events(self) -> EventBusInterface:
        return cast("EventBusInterface", self._service("events"))

    @property
    def jobs(self) -> JobStorageInterface:
        return cast("JobStorageInterface", self._service("jobs"))

    @property
    def locks(self) -> LockInterface:
        return cast("LockInterface", self._service("locks"))

    def service(self, interface: type[S]) -> S:
        """The instance serving ``interface`` (how the plugin factory injects services)."""
        name = getattr(interface, "service_name", "")
        if name not in _SERVICE_SETTINGS:
            raise LookupError(f"{interface.__name__} is not a service the environment serves")
        return cast(S, self._service(name))

    def _service(self, name: str) -> Any:
        service = self._services.get(name)  # built already: the common case, no lock
        if service is not None:
            return service
        with self._lock:
            if name not in self._services:
                from dcore.services import (
                    EventBusInterface,
                    JobStorageInterface,
                    LockInterface,
                    StorageInterface,
                )

                interface: type[Any] = {
                    "storage": StorageInterface,
                    "events": EventBusInterface,
                    "jobs": JobStorageInterface,
                    "locks": LockInterface,
                }[name]
                field = _SERVICE_SETTINGS[name]
                backend = getattr(self.settings, field)
                try:
                    cls: Any = self.registry.get(interface, backend)
                except PluginNotFoundError as exc:  # name the variable that chose it
                    raise BackendNotFoundError(
                        self.settings.as_given(field), exc.interface, exc.name, exc.registered
                    ) from None
                instance = cls.from_environment(self)
                self._services[name] = instance
                self._owned.append(instance)
            return self._services[name]

    # -- async stages ----------------------------------------------------------------
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A loop for async stages run outside a caller's loop (a background part; each
        worker thread keeps one): the simulator's runs on its virtual clock."""
        return asyncio.new_event_loop()

    async def sleep_async(self, seconds: float) -> None:
        """How an async stage's retries wait: on the loop while the clock is the real
        one; on the environment's own clock otherwise (a test's manual clock moves at
        once, as a plain stage's retries find it), then a yield to the loop."""
        if isinstance(self.clock, SystemClock):
            await asyncio.sleep(seconds)
        else:
            self.clock.sleep(seconds)
            await asyncio.sleep(0)

    # -- deliveries ----------------------------------------------------------------
    def new_delivery_id(self) -> str:
        """A fresh id for one delivery of a job: the owner of the job's lease while it
        runs (the simulator numbers them instead, so runs repeat)."""
        return uuid.uuid4().hex

    def keep_lease(self, job_id: str, owner: str, lease: float) -> Heartbeat:
        """Renew ``owner``'s lease on ``job_id`` while the delivery runs (see
        :mod:`dcore._core.leases`); stop the returned heartbeat when it ends."""
        from dcore._core.leases import LeaseKeeper

        return self.resource("dcore.lease_keeper", lambda: LeaseKeeper(self)).keep(
            job_id, owner, lease
        )

    def resource(self, key: str, factory: Callable[[], S]) -> S:
        """A per-environment singleton (a thread pool, a Celery app), made on first use."""
        with self._lock:
            if key not in self._resources:
                self._resources[key] = factory()
            return cast(S, self._resources[key])

    def close(self) -> None:
        """Close the services and resources this environment created (not ones passed in)."""
        with self._lock:
            owned, self._owned = self._owned, []
            resources, self._resources = self._resources, {}
            for name in [n for n, s in self._services.items() if s in owned]:
                del self._services[name]
        # every closer runs even if one fails (a drain that timed out must not leave the
        # connections open); the first failure is raised at the end
        first: BaseException | None = None
        closers = [
            getattr(r, "close", None) or getattr(r, "shutdown", None) for r in resources.values()
        ]
        for closer in [*closers, *(service.close for service in owned)]:
            if not callable(closer):
                continue
            try:
                closer()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Environment(storage={s.storage!r}, event_bus={s.event_bus!r}, "
            f"job_store={s.job_store!r}, locks={s.locks!r}, dispatcher={s.dispatcher!r})"
        )


_default: Environment | None = None
_stack: list[Environment] = []
_tokens: list[object] = []  # one per entry of _stack: the block that pushed it
_guard = threading.Lock()


def scoped_environment() -> Environment | None:
    """The innermost :func:`use_environment`, or None outside any (the default
    environment is neither built nor returned)."""
    stack = _stack
    try:
        return stack[-1] if stack else None
    except IndexError:  # popped since it was read
        return None


def current_environment() -> Environment:
    """The innermost :func:`use_environment`, else the default one from ``DCORE_*``."""
    global _default
    # read without the lock (every pipeline run asks): indexing a list is atomic, and an
    # environment popped meanwhile is what the locked path would have missed by a moment
    stack = _stack
    if stack:
        try:
            return stack[-1]
        except IndexError:  # popped since: take the locked path
            pass
    elif _default is not None:
        return _default
    with _guard:
        if _stack:
            return _stack[-1]
        if _default is None:
            env = Environment()
            # resolve the storage root now, so a later chdir cannot move it (and before
            # the environment is published: it is read without the lock)
            env.settings.storage_root = Path(env.settings.storage_root).resolve()
            _default = env
        return _default


def reset_default_environment() -> None:
    """Forget (and close) the default environment; the next use rebuilds it."""
    global _default
    with _guard:
        env, _default = _default, None
    if env is not None:
        env.close()


@contextmanager
def use_environment(env: Environment) -> Iterator[Environment]:
    """Make ``env`` current for every thread until the block ends."""
    token = object()
    with _guard:
        _stack.append(env)
        _tokens.append(token)
    try:
        yield env
    finally:
        with _guard:
            # this block's own entry: the same environment may be current in other
            # entries too (a simulation inside its own ``with``, another thread's block),
            # and blocks in different threads may end in any order
            i = _tokens.index(token)
            del _stack[i], _tokens[i]
