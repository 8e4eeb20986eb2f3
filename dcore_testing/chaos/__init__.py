"""Network fault injection: an embedded Toxiproxy-compatible server and a typed client.

The client (:class:`ToxiproxyClient`) speaks the Toxiproxy HTTP API to the real
server (``TOXIPROXY_URL``) or to :class:`ToxiproxyServer`, an asyncio
reimplementation that runs in-process (or as ``python -m dcore_testing.chaos``).
Where the real server crashes or ignores its seed, the embedded one validates
and is reproducible; every difference is listed in ``DIFFERENCES.md``.
"""

from .client import Proxy, ProxyConfig, Toxic, ToxicConfig, ToxiproxyClient
from .errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ServerError,
    ToxiproxyConnectionError,
    ToxiproxyError,
)
from .http import HttpLimits
from .plan import ChaosPlan, LogEntry, ManualPlanClock, PlanRun, Step
from .server import ToxiproxyServer
from .toxics import Decision

__all__ = [
    "BadRequestError",
    "ChaosPlan",
    "ConflictError",
    "Decision",
    "HttpLimits",
    "LogEntry",
    "ManualPlanClock",
    "NotFoundError",
    "PlanRun",
    "Proxy",
    "ProxyConfig",
    "ServerError",
    "Step",
    "Toxic",
    "ToxicConfig",
    "ToxiproxyClient",
    "ToxiproxyConnectionError",
    "ToxiproxyError",
    "ToxiproxyServer",
]
