"""The dcore pytest plugin (entry point ``pytest11``): options, markers and fixtures.

It imports almost nothing at start-up: fixture modules are registered as plugins and
import dcore, redis, boto3 and friends only inside the fixtures a test uses.
"""

from __future__ import annotations

import importlib

import pytest

FIXTURE_MODULES = [
    "dcore_testing.fixtures.core",
    "dcore_testing.fixtures.redis",
    "dcore_testing.fixtures.s3",
    "dcore_testing.fixtures.celery",
    "dcore_testing.fixtures.sim",
    "dcore_testing.fixtures.golden",
    "dcore_testing.chaos.fixtures",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dcore", "distributed-core testing")
    group.addoption(
        "--dcore-seed",
        type=int,
        default=None,
        help="seed for simulated tests (default: derived from the test's name)",
    )
    group.addoption(
        "--dcore-replay",
        metavar="PATH",
        default=None,
        help="replay a saved simulator trace instead of exploring",
    )
    group.addoption(
        "--dcore-trace-dir",
        metavar="DIR",
        default="dcore-traces",
        help="where traces of failing simulated tests are saved (default: dcore-traces)",
    )
    group.addoption(
        "--dcore-services",
        choices=("fake", "real"),
        default="fake",
        help="run service fixtures against in-memory fakes or real Redis/S3",
    )
    group.addoption(
        "--dcore-update-golden",
        action="store_true",
        default=False,
        help="record the current version's golden message where it is missing "
        "(existing files are never overwritten)",
    )
    group.addoption(
        "--dcore-check-determinism",
        action="store_true",
        default=False,
        help="run each simulated test's seed twice and fail if the traces differ",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in {
        "sim": "runs under the deterministic simulator",
        "chaos": "network fault injection through a Toxiproxy-compatible proxy",
        "integration": "needs a real service (Redis, S3 endpoint, Celery worker)",
    }.items():
        config.addinivalue_line("markers", f"{marker}: {text}")
    for name in FIXTURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, name=name)
