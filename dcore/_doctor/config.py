"""Checks that read only the settings: nothing here connects to anything.

- ``settings``: ``DCORE_*`` variables nothing reads (a misspelling is silently ignored).
- ``dispatch``: Celery with a process-local job store or event bus (an error: each
  worker records its jobs and dead letters in its own memory) or process-local locks.
- ``recovery``: ``DCORE_RECOVERY_INTERVAL=0`` with Celery: no worker re-sends lost jobs.
- ``visibility``: a broker visibility timeout that a retry's countdown or a deferral
  behind a lease outlasts, so the broker delivers the message a second time.
"""

from __future__ import annotations

from collections.abc import Mapping

from dcore._core.retry import job_policy
from dcore._core.settings import DcoreSettings, suggestion, unknown_variables
from dcore._doctor.findings import Finding, error, ok, warning

__all__ = ["check_dispatch", "check_recovery", "check_settings", "check_visibility"]


def check_settings(environ: Mapping[str, str]) -> list[Finding]:
    """A warning for each ``DCORE_*`` variable in ``environ`` that nothing reads."""
    findings = []
    for name in sorted(unknown_variables(environ)):
        close = suggestion(name)
        hint = f" (did you mean {close}?)" if close else ""
        findings.append(
            warning(
                "settings",
                f"{name} is not a dcore setting and is ignored{hint}. Fix the name, or unset it",
            )
        )
    return findings or [ok("settings", "every DCORE_* variable set is a known setting")]


def _celery(settings: DcoreSettings) -> str:
    """How the Celery setup is named: the variable that chose it, or the worker itself."""
    if settings.dispatcher == "celery":
        return settings.as_given("dispatcher")
    return "a Celery worker"


def check_dispatch(settings: DcoreSettings, *, celery: bool) -> list[Finding]:
    """Services a Celery deployment must share between its processes."""
    if not celery:
        return [
            ok(
                "dispatch",
                f"{settings.as_given('dispatcher')} runs jobs in the calling "
                "process: in-memory services are fine",
            )
        ]
    who = _celery(settings)
    findings = []
    if settings.job_store == "memory":
        findings.append(
            error(
                "dispatch",
                (
                    f"{who} with {settings.as_given('job_store')}: each worker records its jobs in "
                    "its own memory, so the caller sees them PENDING for ever (and a pipeline "
                    "refuses to hand off). Fix: DCORE_JOB_STORE=redis"
                ),
            )
        )
    if settings.event_bus == "memory":
        findings.append(
            error(
                "dispatch",
                (
                    f"{who} with {settings.as_given('event_bus')}: dead letters and job events "
                    "stay in each worker's memory, where `dcore dlq` and subscribers never see "
                    "them. Fix: DCORE_EVENT_BUS=redis"
                ),
            )
        )
    if settings.locks == "memory":
        findings.append(
            warning(
                "dispatch",
                (
                    f"{who} with {settings.as_given('locks')}: a lock excludes only within one "
                    "worker process, and every worker runs its own recovery sweep. Fix: "
                    "DCORE_LOCKS=redis"
                ),
            )
        )
    return findings or [
        ok(
            "dispatch",
            (
                f"{who} with a shared job store, event bus and locks "
                f"({settings.as_given('job_store')}, {settings.as_given('event_bus')}, "
                f"{settings.as_given('locks')})"
            ),
        )
    ]


def check_recovery(settings: DcoreSettings, *, celery: bool) -> list[Finding]:
    """Whether Celery workers look for jobs whose delivery was lost."""
    if not celery:
        return []
    interval = settings.recovery_interval
    if interval == 0:
        return [
            warning(
                "recovery",
                (
                    f"{settings.as_given('recovery_interval')}: no worker looks for lost jobs. A "
                    "job whose worker was killed stays RUNNING until the broker gives its message "
                    f"back ({settings.as_given('celery_visibility_timeout')} seconds later), a "
                    "message the broker lost leaves its job PENDING for ever, and a lost retry "
                    "never comes. Fix: unset it (every 10 s by default), or run `dcore jobs "
                    "resend-stale` on a schedule"
                ),
            )
        ]
    comeback = settings.lease_ttl + interval
    return [
        ok(
            "recovery",
            (
                f"workers look for lost jobs every {interval:g} s "
                f"({settings.as_given('recovery_interval')}): a dead worker's jobs come back "
                f"within about {comeback:g} s"
            ),
        )
    ]


def longest_job_delay(settings: DcoreSettings) -> float:
    """The longest countdown the ``DCORE_JOB_*`` policy puts before a retry (0: none)."""
    return max(job_policy(None, settings).delays(), default=0.0)


def check_visibility(settings: DcoreSettings, *, celery: bool) -> list[Finding]:
    """Countdowns a worker holds unacknowledged must end before the visibility timeout.

    A worker holds a countdown message (a retry after its delay, a delivery deferred
    until another one's lease runs out) unacknowledged until it is due; once the
    visibility timeout passes the broker delivers it again. The job's lease makes the
    copy harmless, so this is a warning, not an error."""
    if not celery:
        return []
    visibility = settings.celery_visibility_timeout
    longest = longest_job_delay(settings)
    lease = settings.lease_ttl
    timeout = settings.as_given("celery_visibility_timeout")
    findings = []
    if longest >= visibility:
        findings.append(
            warning(
                "visibility",
                (
                    f"{timeout} is not longer than the longest retry delay of the DCORE_JOB_* "
                    f"policy ({longest:g} s, from {settings.as_given('job_attempts')}, "
                    f"{settings.as_given('job_initial_delay')}, "
                    f"{settings.as_given('job_backoff')}, "
                    f"{settings.as_given('job_max_delay')}): the broker delivers a retry's "
                    "countdown message a second time while it waits (the lease skips the copy). "
                    f"Fix: DCORE_CELERY_VISIBILITY_TIMEOUT above {longest:g}, or a lower "
                    "DCORE_JOB_MAX_DELAY"
                ),
            )
        )
    if visibility <= lease:
        findings.append(
            warning(
                "visibility",
                (
                    f"{timeout} is not longer than the lease ({settings.as_given('lease_ttl')}): a "
                    "delivery deferred behind a running one waits up to a lease, and the broker "
                    "delivers its message a second time while it waits. Fix: "
                    f"DCORE_CELERY_VISIBILITY_TIMEOUT above {lease:g}"
                ),
            )
        )
    return findings or [
        ok(
            "visibility",
            (
                f"{timeout} outlasts the longest DCORE_JOB_* retry delay ({longest:g} s) and the "
                f"lease ({lease:g} s); a pipeline's own retry= on its Dispatch must stay under it "
                "too"
            ),
        )
    ]
