"""``dcore jobs show JOB_ID | list [--state S] | resend-stale [--older-than S]``: job records,
their state history, and re-sending Celery jobs whose message the broker lost.

Reads the configured job store (``DCORE_JOB_STORE=redis DCORE_REDIS_URL=...`` to see
what the workers recorded). Timestamps are printed in UTC.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from dcore.cli.common import fail, finite_float, note_process_local, positive_int, print_help

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("jobs", help="show job records and their state history")
    parser.set_defaults(handler=print_help(parser))
    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION")

    show = actions.add_parser("show", help="a job's state, attempts, error and history")
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(handler=run_show)

    listing = actions.add_parser("list", help="recent jobs, newest first")
    listing.add_argument(
        "--state",
        type=str.upper,
        default=None,
        help="only jobs in this state (PENDING, RUNNING, SUCCEEDED, ...)",
    )
    listing.add_argument("--limit", type=positive_int, default=20)
    listing.set_defaults(handler=run_list)

    stale = actions.add_parser(
        "resend-stale",
        help="send again Celery jobs whose delivery was lost (workers also "
        "do this every DCORE_RECOVERY_INTERVAL seconds)",
    )
    stale.add_argument(
        "--older-than",
        type=finite_float,
        default=None,
        metavar="SECONDS",
        help="a PENDING job counts as lost after this long with its queue "
        "empty (default: DCORE_RECOVERY_PENDING_AFTER)",
    )
    stale.add_argument("--limit", type=positive_int, default=1000)
    stale.add_argument("--dry-run", action="store_true", help="list them, send nothing")
    stale.set_defaults(handler=run_resend_stale)


def _env() -> Any:
    """The configured environment; a note on stderr if its job store is process-local."""
    from dcore._core.environment import current_environment

    env = current_environment()
    note_process_local(env, "jobs")
    return env


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def run_show(args: argparse.Namespace) -> int:
    from dcore.errors import JobNotFoundError

    env = _env()
    try:
        record = env.jobs.get(args.job_id)
    except JobNotFoundError as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return 0
    print(f"job       {record.job_id}")
    print(f"state     {record.state}")
    print(f"attempts  {record.attempts}")
    print(f"created   {_when(record.created_at)}")
    print(f"updated   {_when(record.updated_at)}")
    if record.error:
        print(f"error     {record.error}")
    if record.result is not None:
        print(f"result    {json.dumps(record.result)[:200]}")
    print("history")
    for t in record.history:
        note = f"  {t.note}" if t.note else ""
        print(f"  {_when(t.at)}  {t.state:<9}  attempt {t.attempt}{note}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from dcore.services.jobs import JobState

    state = None
    if args.state is not None:
        try:
            state = JobState(args.state)
        except ValueError:
            return fail(f"unknown state {args.state!r}; one of: {', '.join(JobState)}")
    records = _env().jobs.list(state, limit=args.limit)
    if not records:
        print("no jobs" + (f" in state {state}" if state else ""))
        return 0
    for r in records:
        print(
            f"{r.job_id:<32}  {r.state:<9}  attempts {r.attempts:<3}  {_when(r.updated_at)}"
            + (f"  {r.error}" if r.error else "")
        )
    return 0


def run_resend_stale(args: argparse.Namespace) -> int:
    try:
        from dcore.celery import resend_stale
    except ImportError as exc:
        return fail(f"resend-stale needs Celery (pip install 'distributed-core[celery]'): {exc}")
    try:
        sent = resend_stale(
            _env(), older_than=args.older_than, limit=args.limit, dry_run=args.dry_run
        )
    except ValueError as exc:
        return fail(str(exc))
    verb = "would re-send" if args.dry_run else "re-sent"
    print(f"{verb} {len(sent)} lost job(s)")
    for job_id in sent:
        print(f"  {job_id}")
    return 0
