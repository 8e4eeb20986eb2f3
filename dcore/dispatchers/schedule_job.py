"""``schedule_job``: the configurable Dispatch — one line of configuration picks the engine.

``DCORE_DISPATCHER`` (or the ``using`` option) names the dispatcher: ``auto`` (the
default) uses ``fastapi`` when the context carries BackgroundTasks and ``thread``
otherwise; ``inline``, ``thread``, ``fastapi`` and ``celery`` pick one explicitly.
"""

from __future__ import annotations

from typing import Any

from dcore._core.environment import Environment
from dcore._core.factory import PluginFactory
from dcore._core.pipeline import Continuation
from dcore._plugins.interfaces import Dispatch
from dcore._plugins.registry import default_registry, register_plugin
from dcore.dispatchers.fastapi import find_background_tasks
from dcore.errors import BackendNotFoundError, PluginNotFoundError

__all__ = ["ScheduleJob"]


@register_plugin("schedule_job", registry=default_registry())
class ScheduleJob(Dispatch[Any]):
    """Delegates to the dispatcher named by ``using`` or ``DCORE_DISPATCHER``."""

    def __init__(self, env: Environment, using: str | None = None) -> None:
        self.using = using or env.settings.dispatcher
        factory = PluginFactory(environment=env)
        self._explicit: Dispatch[Any] | None = None
        self._fastapi: Dispatch[Any] | None = None
        self._thread: Dispatch[Any] | None = None
        if self.using == "auto":
            self._fastapi = factory.create(Dispatch, "fastapi")
            self._thread = factory.create(Dispatch, "thread")
        else:
            try:
                self._explicit = factory.create(Dispatch, self.using)
            except PluginNotFoundError as exc:
                if using or (exc.interface, exc.name) != ("Dispatch", self.using):
                    raise
                raise BackendNotFoundError(  # chosen by DCORE_DISPATCHER: say so
                    env.settings.as_given("dispatcher"), exc.interface, exc.name, exc.registered
                ) from None

    def is_remote(self) -> bool:
        return self._explicit is not None and self._explicit.is_remote()

    def resolve(self, context: Any) -> Dispatch[Any]:
        """The dispatcher that will take ``context``."""
        if self._explicit is not None:
            return self._explicit
        assert self._fastapi is not None
        assert self._thread is not None
        return self._fastapi if find_background_tasks(context) is not None else self._thread

    def dispatch(self, next_fn: Continuation[Any], context: Any) -> Any:
        return self.resolve(context).dispatch(next_fn, context)
