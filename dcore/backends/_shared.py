"""What the memory and Redis backends share, so both accept and reject the same values:
payload and result encoding, stream entry ids, argument checks and error messages."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from pydantic_core import to_jsonable_python

from dcore.errors import JobNotFoundError
from dcore.services.jobs import JobState

__all__ = [
    "DEFAULT_JOB_TTL",
    "at_least",
    "check_end",
    "decode_payload",
    "encode_payload",
    "encode_result",
    "exists_message",
    "lease_lost_message",
    "may_bury",
    "merge_completed",
    "not_found",
    "parse_entry_id",
    "plan_after_failure",
    "positive",
    "states",
]

#: How long a finished (SUCCEEDED or DEAD) job record is kept by default.
DEFAULT_JOB_TTL = 7 * 24 * 3600.0


_PAYLOAD_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def encode_payload(payload: Mapping[str, Any]) -> str:
    """A payload as JSON text; TypeError unless it is a JSON object with string keys."""
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"event payload must be a JSON object (a dict with str keys), got "
            f"{type(payload).__name__}: {payload!r}"
        )
    bad_keys = [k for k in payload if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"event payload keys must be str, got {bad_keys[0]!r}")
    try:
        return _PAYLOAD_ENCODER.encode(dict(payload))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"event payload must contain only JSON values (str, int, float, bool, None, "
            f"list, dict); {exc}. Convert the value first (e.g. str() or .model_dump())"
        ) from None


def decode_payload(raw: str | bytes) -> dict[str, Any]:
    value = json.loads(raw)
    return value if isinstance(value, dict) else {"value": value}


def encode_result(result: Any) -> str:
    """A job result as JSON; values JSON cannot hold are stored as their repr()."""
    return json.dumps(to_jsonable_python(result, fallback=repr, bytes_mode="base64"))


_ENTRY_ID = re.compile(r"^(\d+)-(\d+)$")


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    match = _ENTRY_ID.match(entry_id) if isinstance(entry_id, str) else None
    if match is None:
        raise ValueError(f"bad durable entry id {entry_id!r}; ids look like '1700000000000-0'")
    return int(match[1]), int(match[2])


def not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"no job with id {job_id!r} (never created, deleted or expired)")


def exists_message(job_id: str, current: str) -> str:
    return (
        f"job {job_id} already exists and is {current}; only a FAILED or DEAD job can be "
        "created again (re-scheduled)"
    )


def lease_lost_message(job_id: str, owner: str | None, state: JobState, holder: str | None) -> str:
    now = f"held by delivery {holder}" if holder else f"{state} and held by no delivery"
    return (
        f"job {job_id}: delivery {owner or '(none)'} lost its lease; the job is {now}, so "
        "the move is refused (another delivery took over after the lease ran out)"
    )


def may_bury(owner: str | None, holder: str | None, lease_until: float | None, now: float) -> bool:
    """Whether a delivery ``owner`` (None: no delivery, e.g. a malformed message) may
    dead-letter a RUNNING job held by ``holder``: only its holder may, or anyone once
    the lease has run out."""
    if owner is not None:
        return holder == owner
    return lease_until is None or lease_until <= now


def merge_completed(recorded: list[int], completed: Collection[int]) -> list[int]:
    """Stage indexes (completed, or compensated) with ``completed`` added: sorted, each
    once, as the Redis store keeps them."""
    return sorted(set(recorded) | {int(i) for i in completed})


def plan_after_failure(completed: Collection[int], compensated: Collection[int]) -> str:
    """A FAILED record's plan when no retry follows: "compensate" while some completed
    stage is not compensated yet, else "dead"."""
    return "compensate" if set(completed) - set(compensated) else "dead"


def check_end(to: JobState) -> None:
    if to not in (JobState.SUCCEEDED, JobState.FAILED):
        raise ValueError(f"an attempt ends SUCCEEDED or FAILED, not {to}")


def at_least(
    name: str, value: float | None, minimum: int, *, or_none: bool = False, unit: str = ""
) -> None:
    """ValueError naming ``name`` and the value unless it is >= ``minimum`` (or None, where
    ``or_none``): one check, so memory and Redis refuse the same arguments alike."""
    if value is None:
        if or_none:
            return
        raise TypeError(f"{name} must be a number >= {minimum}, got None")
    if value < minimum:
        bound = f">= {minimum}" + (f" {unit}" if unit else "") + (" or None" if or_none else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")


def states(expect: Collection[JobState] | None) -> frozenset[JobState] | None:
    """``expect`` validated (a bare string would silently become its characters)."""
    if expect is None:
        return None
    if isinstance(expect, str):
        raise TypeError(f"expect must be a collection of JobState, got the string {expect!r}")
    return frozenset(JobState(s) for s in expect)
