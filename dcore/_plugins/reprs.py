"""Short, deterministic reprs for option values (stage reprs, Hypothesis reports)."""

from __future__ import annotations

import re
import reprlib
from typing import Any

__all__ = ["short_repr"]


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


class _ShortRepr(reprlib.Repr):
    """reprlib's cut-down repr, minus memory addresses: ``<app.Gateway object at
    0x7f...>`` is shown as ``<app.Gateway>``, the same in every run."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 40
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 6
        self.maxlevel = 1  # a nested container shows as [...]

    def repr_instance(self, obj: Any, level: int) -> str:
        text = _ADDRESS.sub("", repr(obj))
        if len(text) <= self.maxother:
            return text
        head = (self.maxother - 3) // 2
        return text[:head] + "..." + text[len(text) - (self.maxother - 3 - head) :]


_REPR = _ShortRepr()


def short_repr(value: Any) -> str:
    """A short, deterministic repr for option values in reprs (Hypothesis reports print
    them): long strings and containers are cut with ``...``; a class or function shows
    as ``module:qualname``, never ``<function f at 0x...>``."""
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    return _REPR.repr(value)
