"""The public surface of dcore_testing.chaos is exactly ``__all__``."""

from __future__ import annotations

import dcore_testing.chaos as chaos


def test_exported_names() -> None:
    assert sorted(chaos.__all__) == [
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
    for name in chaos.__all__:
        assert getattr(chaos, name).__module__.startswith("dcore_testing.chaos")


def test_error_classes_subclass_matching_builtins() -> None:
    assert issubclass(chaos.NotFoundError, LookupError)
    assert issubclass(chaos.BadRequestError, ValueError)
    assert issubclass(chaos.ToxiproxyConnectionError, ConnectionError)
    for name in ("BadRequestError", "ConflictError", "NotFoundError", "ServerError"):
        assert issubclass(getattr(chaos, name), chaos.ToxiproxyError)
