"""Plugin registries, ``register_plugin`` and ``core_function``.

A documented alias of ``dcore._plugins.registry``, kept for the first release's import
paths. ``from dcore import ...`` is the shorter way to the same objects.
"""

from dcore._plugins.registry import (
    CORE_NAME_MAX,
    ENTRY_POINT_GROUP,
    PluginRegistry,
    core_function,
    core_function_name,
    current_registry,
    default_registry,
    define_interface,
    interface_by_name,
    interfaces_of,
    is_interface,
    register_core_function,
    register_plugin,
    registered_core_function,
    registered_core_functions,
    use_registry,
)

__all__ = [
    "CORE_NAME_MAX",
    "ENTRY_POINT_GROUP",
    "PluginRegistry",
    "core_function",
    "core_function_name",
    "current_registry",
    "default_registry",
    "define_interface",
    "interface_by_name",
    "interfaces_of",
    "is_interface",
    "register_core_function",
    "register_plugin",
    "registered_core_function",
    "registered_core_functions",
    "use_registry",
]
