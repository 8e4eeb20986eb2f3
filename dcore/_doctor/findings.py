"""What a check reports: a :class:`Finding` at one of three levels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

__all__ = ["Finding", "Level"]


class Level(StrEnum):
    """``error``: jobs will be lost, run where nobody sees them, or cannot be sent;
    ``warning``: a failure would cost jobs or duplicates, or something could not be
    checked; ``ok``: checked and fine."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One line of ``dcore doctor``: which ``check`` found it, its ``level``, and a
    ``message`` naming the setting or server and, unless it is ok, the fix."""

    check: str
    level: Level
    message: str

    def as_dict(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}


def ok(check: str, message: str) -> Finding:
    return Finding(check, Level.OK, message)


def warning(check: str, message: str) -> Finding:
    return Finding(check, Level.WARNING, message)


def error(check: str, message: str) -> Finding:
    return Finding(check, Level.ERROR, message)
