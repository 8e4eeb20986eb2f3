"""Observers see every stage enter and exit (the simulator records them as events)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dcore._core.pipeline import Stage

__all__ = ["PipelineObserver"]


class PipelineObserver(Protocol):
    def stage_enter(self, stage: Stage, context: Any) -> None: ...

    def stage_exit(self, stage: Stage, context: Any, error: BaseException | None) -> None: ...
