"""Stage interfaces: ``Execute``, ``Dispatch`` and the plugin base class.

A documented alias of ``dcore._plugins.interfaces``, kept for the first release's import
paths. ``from dcore import ...`` is the shorter way to the same objects.
"""

from dcore._plugins.interfaces import (
    AsyncNextFn,
    ContextT,
    Dispatch,
    Execute,
    InterfaceMeta,
    NextFn,
    PluginInterface,
    StageRef,
    constructor,
)

__all__ = [
    "AsyncNextFn",
    "ContextT",
    "Dispatch",
    "Execute",
    "InterfaceMeta",
    "NextFn",
    "PluginInterface",
    "StageRef",
    "constructor",
]
