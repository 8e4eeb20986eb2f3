"""Checks of a deployment that dcore cannot enforce on its own: ``dcore doctor``.

A Celery deployment loses jobs silently when its Redis keeps nothing across a restart
or evicts keys, when its workers record jobs in their own memory, or when nothing
re-sends a lost delivery; it delivers messages twice when countdowns outlast the
broker's visibility timeout. Each check returns :class:`Finding` s (``error``,
``warning`` or ``ok``, one line naming the setting or server and the fix):

==============  ============================================  ======================
check           what it reads                                 module
==============  ============================================  ======================
settings        unknown ``DCORE_*`` variables                 :mod:`.config`
dispatch        Celery with memory job store, bus or locks    :mod:`.config`
recovery        ``DCORE_RECOVERY_INTERVAL=0`` with Celery      :mod:`.config`
visibility      visibility timeout vs retry delays and lease  :mod:`.config`
broker          ``DCORE_CELERY_BROKER_URL``: parse and reach   :mod:`.servers`
redis           each Redis server: reachable                  :mod:`.servers`
persistence     ``appendonly``, ``save``, ``INFO persistence``  :mod:`.servers`
eviction        ``maxmemory-policy``                          :mod:`.servers`
==============  ============================================  ======================

The Celery checks (recovery, visibility, broker) run for ``DCORE_DISPATCHER=celery``
or when asked (a Celery worker runs them all once at start, see :mod:`dcore.celery`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Protocol

from dcore._core.settings import DcoreSettings
from dcore._doctor.config import check_dispatch, check_recovery, check_settings, check_visibility
from dcore._doctor.findings import Finding, Level, error, ok
from dcore._doctor.servers import check_broker, check_redis_servers, redis_servers
from dcore.errors import ConfigurationError, ConfigurationWarning

__all__ = ["DEFAULT_TIMEOUT", "Finding", "Level", "Log", "log_findings", "run_checks"]

#: seconds each server may take to answer
DEFAULT_TIMEOUT = 2.0


def run_checks(
    settings: DcoreSettings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    celery: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Finding]:
    """Every check against ``settings`` (default: read from ``environ``, default
    ``os.environ``). ``celery`` runs the Celery checks (default: when
    ``DCORE_DISPATCHER=celery``). Never raises for what it finds: settings that do not
    load are an error finding, and the checks that need them are skipped."""
    environ = os.environ if environ is None else environ
    findings = check_settings(environ)
    if settings is None:
        with warnings.catch_warnings():  # the settings check reports unknown variables
            warnings.simplefilter("ignore", ConfigurationWarning)
            try:
                settings = DcoreSettings()
            except ConfigurationError as exc:
                return [*findings, error("settings", f"{exc}".replace("\n", "; "))]
    if celery is None:
        celery = settings.dispatcher == "celery"
    findings += check_dispatch(settings, celery=celery)
    findings += check_recovery(settings, celery=celery)
    findings += check_visibility(settings, celery=celery)
    broker_urls: list[str] = []
    if celery:
        broker, broker_urls = check_broker(settings, timeout=timeout)
        findings += broker
    else:
        findings.append(
            ok(
                "broker",
                (
                    f"no Celery ({settings.as_given('dispatcher')}): its checks are skipped "
                    "(`dcore doctor --celery` runs them)"
                ),
            )
        )
    servers, unparsed = redis_servers(settings, broker_urls)
    findings += unparsed
    findings += check_redis_servers(servers, timeout=timeout)
    return findings


_LOG_LEVELS = {Level.OK: logging.INFO, Level.WARNING: logging.WARNING, Level.ERROR: logging.ERROR}


class Log(Protocol):
    """Where findings are logged: a :class:`logging.Logger` or anything with its ``log``."""

    def log(self, level: int, msg: str, /, *args: object) -> None: ...


def log_findings(findings: list[Finding], log: Log) -> None:
    """Log each finding at its level (ok at INFO), as a worker does once at start."""
    for finding in findings:
        log.log(_LOG_LEVELS[finding.level], "dcore doctor: %s: %s", finding.check, finding.message)
