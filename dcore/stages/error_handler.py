"""``error_handler``: report a failure of the rest of the pipeline, then re-raise or swallow.

The error goes through ``context.error_bus.report(exc)``: it is appended to
``context.errors`` (so ``context.failed`` is True), with the stage that raised it, and
published on the ``errors`` topic of the event bus. With ``reraise=True`` (the default)
the failure then continues up the chain unchanged (same object, same type); with
``reraise=False`` the pipeline returns ``None`` here and the job counts as done, its
errors kept on the context.
"""

from __future__ import annotations

from typing import Any

from dcore._core.environment import Environment
from dcore._core.errorbus import ErrorBus
from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin
from dcore.stages.retry import exception_class

__all__ = ["ErrorHandler"]


@register_plugin("error_handler", registry=default_registry())
class ErrorHandler(Execute[Any]):
    """``catch`` names the exception classes handled (default: any ``Exception``); others
    pass through untouched."""

    shareable = True  # holds only its options and the environment

    def __init__(
        self, env: Environment, reraise: bool = True, catch: list[str] | None = None
    ) -> None:
        self.env = env
        self.reraise = reraise
        self.catch: tuple[type[BaseException], ...] = (Exception,)
        if catch:
            self.catch = tuple(exception_class(n, "error_handler: catch") for n in catch)

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        try:
            return next_fn(context)
        except self.catch as exc:
            ErrorBus(context, self.env).report(exc)
            if self.reraise:
                raise
            return None
