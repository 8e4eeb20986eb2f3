"""Resolving the names a message carries, without trusting it.

A message may name only things a worker has on purpose: registered context types,
registered plugins, registered core functions (see :mod:`dcore._plugins.registry`), and
exception classes for ``retry_on`` / ``catch``. Those are looked up here: a builtin
exception by name, or ``pkg.mod:Class`` in a module that is **already imported**, walking
only through module and class namespaces (``vars()``: no ``getattr``, so no property,
descriptor or module ``__getattr__`` runs) and never through a dunder name. The result
must be an exception class, which is only ever used in ``isinstance`` checks.
"""

from __future__ import annotations

import builtins
import sys
import types
from typing import Any

__all__ = ["exception_class"]


def _lookup(namespace: Any, part: str) -> Any:
    if part.startswith("__") or not part.isidentifier():
        return None
    if isinstance(namespace, types.ModuleType):
        return vars(namespace).get(part)
    if isinstance(namespace, type):
        for klass in namespace.__mro__:
            if part in vars(klass):
                return vars(klass)[part]
    return None


def exception_class(name: str) -> type[BaseException]:
    """A builtin exception (``"TimeoutError"``) or ``pkg.mod:Class`` from an imported
    module; ValueError naming ``name`` and the accepted forms otherwise."""
    if not isinstance(name, str) or len(name) > 300:
        raise ValueError(f"an exception class name must be a short string, got {name!r:.80}")
    module_name, sep, qualname = name.partition(":")
    if sep:
        target: Any = sys.modules.get(module_name)
        if target is None:
            raise ValueError(
                f"{name!r}: module {module_name!r} is not imported; import it first "
                "(workers: list it in DCORE_IMPORTS)"
            )
        for part in qualname.split("."):
            target = _lookup(target, part)
    else:
        target = _lookup(builtins, name)
    if not (isinstance(target, type) and issubclass(target, BaseException)):
        raise ValueError(
            f"{name!r} is not an exception class (a BaseException subclass); use a builtin "
            "name such as 'ConnectionError' or 'pkg.module:ErrorClass' from an imported module"
        )
    return target
