"""Client-side exceptions for the Toxiproxy API.

::

    ToxiproxyError                      .status (int | None), .message
     ├── ToxiproxyConnectionError       (also ConnectionError) server unreachable, status None
     ├── BadRequestError                (also ValueError)      400: bad JSON, stream, type, attrs
     ├── NotFoundError                  (also LookupError)     404: no such proxy or toxic
     ├── ConflictError                                         409: proxy or toxic name taken
     └── ServerError                                           5xx: e.g. listen address in use

``message`` is the server's ``error`` text verbatim (``"proxy not found"``), so
callers can match on it; ``str(exc)`` adds the request that failed.
"""

from __future__ import annotations


class ToxiproxyError(Exception):
    """An error answer from a Toxiproxy(-compatible) server, or no answer at all."""

    def __init__(self, message: str, status: int | None, request: str = "") -> None:
        self.message = message
        self.status = status
        self.request = request
        where = f" ({request})" if request else ""
        code = f"{status} " if status is not None else ""
        super().__init__(f"{code}{message}{where}")


class ToxiproxyConnectionError(ToxiproxyError, ConnectionError):
    """The server could not be reached; is it running and is the URL right?"""


class BadRequestError(ToxiproxyError, ValueError):
    """400: the server rejected the request body or a toxic's attributes."""


class NotFoundError(ToxiproxyError, LookupError):
    """404: no proxy or toxic by that name."""


class ConflictError(ToxiproxyError):
    """409: a proxy or toxic of that name already exists."""


class ServerError(ToxiproxyError):
    """5xx: the server failed, e.g. ``bind: address already in use``."""


def error_for_status(status: int, message: str, request: str = "") -> ToxiproxyError:
    """The most specific exception class for ``status``."""
    cls: type[ToxiproxyError] = {
        400: BadRequestError,
        404: NotFoundError,
        409: ConflictError,
    }.get(status, ServerError if status >= 500 else ToxiproxyError)
    return cls(message, status, request)
