"""What every service interface shares: the name of its slot in the Environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

from dcore._plugins.interfaces import PluginInterface

if TYPE_CHECKING:
    from dcore._core.environment import Environment

__all__ = ["ServiceInterface"]


class ServiceInterface(PluginInterface):
    """A backend service. ``service_name`` is the Environment attribute serving it, which
    is how the plugin factory injects a constructor parameter annotated with the interface."""

    service_name: ClassVar[str] = ""
    #: True for a backend whose data lives in this process only (the in-memory ones):
    #: another process (a worker) sees none of it
    process_local: ClassVar[bool] = False

    @classmethod
    def from_environment(cls, env: Environment, **options: Any) -> Self:
        """Build the backend from the environment's settings. Backends with settings
        (a Redis URL, an S3 endpoint) override this; the default takes none."""
        return cls(**options)

    def close(self) -> None:
        """Release connections and threads. Idempotent."""
