"""``logging``: log entry, outcome and duration of the rest of the pipeline."""

from __future__ import annotations

import logging
from typing import Any, Literal

from dcore._core.environment import Environment
from dcore._plugins.interfaces import Execute, NextFn
from dcore._plugins.registry import default_registry, register_plugin

__all__ = ["LoggingStage"]

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@register_plugin("logging", registry=default_registry())
class LoggingStage(Execute[Any]):
    """Logs on the ``dcore.pipeline`` logger (or ``logger``); durations use env.clock."""

    shareable = True  # holds only its logger, level and clock

    def __init__(self, env: Environment, level: Level = "INFO", logger: str = "dcore.pipeline"):
        self.clock = env.clock
        self.level = logging.getLevelName(level)
        self.log = logging.getLogger(logger)

    def execute(self, next_fn: NextFn[Any], context: Any) -> Any:
        name = type(context).__name__
        self.log.log(self.level, "job %s (%s): start", context.job_id, name)
        started = self.clock.monotonic()
        try:
            result = next_fn(context)
        except Exception as exc:
            self.log.log(
                logging.ERROR,
                "job %s (%s): failed after %.3fs: %s: %s",
                context.job_id,
                name,
                self.clock.monotonic() - started,
                type(exc).__name__,
                exc,
            )
            raise
        self.log.log(
            self.level,
            "job %s (%s): done in %.3fs",
            context.job_id,
            name,
            self.clock.monotonic() - started,
        )
        return result
