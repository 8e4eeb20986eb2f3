"""``dcore dlq list | show ID | replay ID|--all | purge [--yes]``: the dead-letter queue.

The queue is the durable topic ``DCORE_DLQ_TOPIC`` on the configured event bus, and jobs
live in the configured job store, so point the command at the same services as the
workers: ``DCORE_EVENT_BUS=redis DCORE_JOB_STORE=redis DCORE_REDIS_URL=redis://...``.
``DCORE_IMPORTS`` lists the modules holding the context classes, core functions and
plugins a replay needs (the current directory is importable).

Replay keeps the job id and runs the message's remainder again in this process as a new
attempt (``dcore.run_message``): the job record goes ``DEAD → PENDING → RUNNING``.
On success the entry is removed. On failure the job is dead-lettered again (a fresh entry
with the new error and full history) and only then is the old entry removed, so the job
is on the queue exactly once and nothing is ever dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from dcore.cli.common import fail, note_process_local, print_help

__all__ = ["register", "replay_entry"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dlq", help="list, show, replay or purge dead-lettered jobs")
    parser.set_defaults(handler=print_help(parser))
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION")

    listing = actions.add_parser("list", help="one line per dead-lettered job")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="an entry's error, history and message")
    show.add_argument("entry_id", metavar="ID")
    show.set_defaults(handler=run_show)

    replay = actions.add_parser("replay", help="run dead-lettered jobs again")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("entry_id", metavar="ID", nargs="?")
    which.add_argument("--all", action="store_true", help="replay every entry, oldest first")
    replay.set_defaults(handler=run_replay)

    purge = actions.add_parser("purge", help="delete every entry (asks unless --yes)")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=run_purge)


def _env(*services: str) -> Any:
    """The configured environment; a note on stderr if ``services`` are process-local."""
    from dcore._core.environment import current_environment

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    env = current_environment()
    note_process_local(env, *services)
    return env


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _one_line(text: Any, width: int = 70) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def run_list(args: argparse.Namespace) -> int:
    env = _env("events")
    topic = env.settings.dlq_topic
    entries = env.events.entries(topic)
    if args.json:
        for e in entries:
            print(json.dumps({"id": e.id, **e.payload}))
        return 0
    if not entries:
        print(f"the dead-letter queue ({topic}) is empty")
        return 0
    print(f"{'ID':<17}  {'JOB':<32}  {'ATTEMPT':>7}  {'AT':<29}  ERROR")
    for e in entries:
        p = e.payload
        attempt = "-" if p.get("attempt") is None else str(p["attempt"])
        print(
            f"{e.id:<17}  {p.get('job_id', '?')!s:<32}  {attempt:>7}  {_when(p.get('at')):<29}"
            f"  {_one_line(p.get('error'))}"
        )
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {topic}")
    return 0


def _entry(env: Any, entry_id: str) -> Any:
    topic = env.settings.dlq_topic
    try:
        event = env.events.entry(topic, entry_id)
    except ValueError as exc:
        raise LookupError(str(exc)) from None
    if event is None:
        raise LookupError(
            f"no entry {entry_id!r} in the dead-letter queue {topic}; "
            "`dcore dlq list` shows the ids"
        )
    return event


def run_show(args: argparse.Namespace) -> int:
    env = _env("events")
    try:
        event = _entry(env, args.entry_id)
    except LookupError as exc:
        return fail(str(exc))
    payload = dict(event.payload)
    raw = payload.get("message")
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):  # a malformed one is shown as it was
            payload["message"] = json.loads(raw)
    for item in payload.get("history") or []:
        if isinstance(item, dict) and "at" in item:
            item["at_utc"] = _when(item["at"])
    payload["at_utc"] = _when(payload.get("at"))
    print(json.dumps({"id": event.id, **payload}, indent=2, default=str))
    return 0


def replay_entry(env: Any, event: Any) -> tuple[bool, str]:
    """Replay one DLQ entry in-process; ``(succeeded, what happened)``. Never drops it:
    the entry goes only after success, or once the job is back on the queue."""
    from dcore._core.lifecycle import schedule
    from dcore._core.message import JobMessage
    from dcore._worker import run_message
    from dcore.errors import IllegalTransitionError, JobNotFoundError, MessageError
    from dcore.services.jobs import JobState

    topic = env.settings.dlq_topic
    payload = event.payload
    job_id = payload.get("job_id")
    raw = payload.get("message")
    where = f"entry {event.id} (job {job_id})"
    if not raw:
        return False, (
            f"{where} has no message to replay: its continuation could not be serialized "
            "(an in-process dispatcher carrying a closure) or it was dead-lettered before "
            f"any Dispatch; inspect it with `dcore dlq show {event.id}`"
        )
    try:
        message = JobMessage.parse(raw)
    except MessageError as exc:
        return False, f"{where}: {exc}; it cannot be replayed, inspect it with `dcore dlq show`"
    try:
        record = env.jobs.get(message.job_id)
    except JobNotFoundError:
        record = None
    if record is not None and record.state is JobState.SUCCEEDED:
        env.events.remove(topic, event.id)
        return True, f"{where}: the job already SUCCEEDED; stale entry removed"
    attempt = (
        record.attempts + 1
        if record is not None
        else max(int(payload.get("attempt") or 0), message.attempt) + 1
    )

    def entries_of_job() -> list[str]:
        return [
            e.id for e in env.events.entries(topic) if e.payload.get("job_id") == message.job_id
        ]

    earlier = set(entries_of_job())  # older entries of the job are not its fresh failure
    try:
        schedule(env, message.job_id, message=raw if isinstance(raw, str) else None)
    except IllegalTransitionError as exc:
        return False, f"{where}: not replayed, {exc} (is it being replayed already?)"
    try:
        run_message(message.with_attempt(attempt), environment=env, final=True)
    except Exception as exc:
        newer = [i for i in entries_of_job() if i not in earlier]
        if newer:  # back on the queue with the fresh error: the old entry is superseded
            env.events.remove(topic, event.id)
            return False, (
                f"{where}: attempt {attempt} failed again ({type(exc).__name__}: "
                f"{exc}); back on the dead-letter queue as {newer[-1]}"
            )
        return False, f"{where}: attempt {attempt} failed ({type(exc).__name__}: {exc})"
    env.events.remove(topic, event.id)
    return True, f"{where}: SUCCEEDED on attempt {attempt}; entry removed"


def run_replay(args: argparse.Namespace) -> int:
    env = _env("events", "jobs")
    if args.all:
        events = env.events.entries(env.settings.dlq_topic)
        if not events:
            print(f"the dead-letter queue ({env.settings.dlq_topic}) is empty")
            return 0
    else:
        try:
            events = [_entry(env, args.entry_id)]
        except LookupError as exc:
            return fail(str(exc))
    failures = 0
    for event in events:
        ok, text = replay_entry(env, event)
        print(text, file=sys.stdout if ok else sys.stderr)
        failures += not ok
    if len(events) > 1:
        print(f"replayed {len(events) - failures} of {len(events)}")
    return 1 if failures else 0


def run_purge(args: argparse.Namespace) -> int:
    env = _env("events")
    topic = env.settings.dlq_topic
    ids = [e.id for e in env.events.entries(topic)]
    if not ids:
        print(f"the dead-letter queue ({topic}) is empty")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            return fail(
                f"purge deletes {len(ids)} entries from {topic} for good; pass --yes to confirm"
            )
        answer = input(f"delete {len(ids)} entries from {topic} for good? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing deleted")
            return 1
    removed = env.events.remove(topic, *ids)
    print(f"purged {removed} entr{'y' if removed == 1 else 'ies'} from {topic}")
    return 0
