"""Invariants over a simulated run: each raises :class:`InvariantViolation` (an
``AssertionError``) naming what broke and carrying the offending events.

They read the run's :class:`~dcore_testing.sim.Trace` (and, for final job states, the
simulation's job store), so they work the same on a live run and on a loaded trace::

    sim.run_until_idle()
    invariants.no_job_lost(sim)
    invariants.exactly_once(sim, "charge")
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcore_testing.sim.environment import SimEnvironment
    from dcore_testing.sim.trace import Trace

__all__ = [
    "InvariantViolation",
    "RunSummary",
    "all_or_nothing",
    "all_succeeded",
    "at_least_once",
    "check_all",
    "complete_or_absent",
    "dlq_exactly_once",
    "exactly_once",
    "expect_states",
    "lock_mutual_exclusion",
    "max_rate",
    "no_concurrent_runs",
    "no_job_lost",
    "per_key_order",
    "retry_bounds",
    "stage_order",
    "sync_before_return",
]

Event = dict[str, Any]
_SHOWN = 25


class InvariantViolation(AssertionError):
    """An invariant does not hold; ``events`` are the trace events that show why."""

    def __init__(self, message: str, events: Iterable[Event] = ()) -> None:
        self.events = list(events)
        self.message = message
        text = message
        if self.events:
            shown = [json.dumps(e, default=str) for e in self.events[:_SHOWN]]
            more = len(self.events) - _SHOWN
            text += "\nevents:\n  " + "\n  ".join(shown)
            if more > 0:
                text += f"\n  … and {more} more"
        super().__init__(text)


def _trace(run: SimEnvironment | Trace) -> Trace:
    trace = getattr(run, "trace", run)
    if not hasattr(trace, "events"):
        raise TypeError(f"expected a SimEnvironment or a Trace, got {type(run).__name__}")
    return trace  # type: ignore[return-value]


def _sim(run: Any, invariant: str) -> SimEnvironment:
    if not hasattr(run, "broker"):
        raise TypeError(
            f"{invariant}() needs the SimEnvironment (it reads final job states), "
            f"got {type(run).__name__}"
        )
    return run  # type: ignore[no-any-return]


def _dispatched(trace: Trace) -> list[str]:
    return [e["job"] for e in trace.events if e["ev"] == "dispatch"]


def _by_job(trace: Trace) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in trace.events:
        job = e.get("job")
        if job is not None:
            out[job].append(e)
    return out


def _final_states(sim: SimEnvironment) -> dict[str, str | None]:
    return {job: None if state is None else str(state) for job, state in sim.job_states().items()}


# -- jobs ---------------------------------------------------------------------------------
def no_job_lost(run: SimEnvironment) -> None:
    """Every dispatched job ended SUCCEEDED or DEAD (none PENDING, RUNNING, FAILED)."""
    sim = _sim(run, "no_job_lost")
    states = _final_states(sim)
    lost = {job: state for job, state in states.items() if state not in ("SUCCEEDED", "DEAD")}
    if lost:
        listed = ", ".join(f"{job} is {state or 'missing'}" for job, state in lost.items())
        by_job = _by_job(sim.trace)
        raise InvariantViolation(
            f"job lost: {listed}; every scheduled job must end SUCCEEDED or DEAD",
            [e for job in lost for e in by_job[job]],
        )


def retry_bounds(run: SimEnvironment | Trace, attempts: int | None = None) -> None:
    """No job was attempted more often than its policy allows (``attempts`` overrides
    the policy the dispatcher recorded). Redeliveries after a crash and duplicate
    deliveries repeat an attempt; they do not count as new ones."""
    trace = _trace(run)
    allowed = {
        e["job"]: attempts or e.get("attempts", 1) for e in trace.events if e["ev"] == "dispatch"
    }
    for job, events in _by_job(trace).items():
        tried = {e["attempt"] for e in events if e["ev"] == "deliver"}
        if tried and max(tried) > allowed.get(job, max(tried)):
            raise InvariantViolation(
                f"retry bound broken: {job} reached attempt {max(tried)} but at most "
                f"{allowed[job]} are allowed",
                [e for e in events if e["ev"] in ("deliver", "failed", "retry")],
            )


def dlq_exactly_once(run: SimEnvironment) -> None:
    """Each DEAD job has exactly one dead letter; a job that succeeded has none. Counts
    the entries on the dead-letter queue itself (an idempotent append that added
    nothing is not a second letter)."""
    sim = _sim(run, "dlq_exactly_once")
    letters: Counter[str] = Counter()
    for payload in sim.dlq_entries():
        job_id = payload.get("job_id")
        letters[sim.alias(job_id) if isinstance(job_id, str) else "?"] += 1
    for job, state in _final_states(sim).items():
        got = letters.get(job, 0)
        want = 1 if state == "DEAD" else 0
        if got != want:
            raise InvariantViolation(
                f"dead letters: {job} is {state} and has {got} DLQ entries; expected {want}",
                [
                    e
                    for e in sim.trace.events
                    if e.get("job") == job
                    and e["ev"] in ("deliver", "failed", "crash", "redeliver", "dlq", "job.dead")
                ],
            )


# -- effects ------------------------------------------------------------------------------
def _effects(trace: Trace, name: str) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in trace.events:
        if e["ev"] == "effect" and e.get("name") == name:
            out[e.get("job") or "?"].append(e)
    return out


def _context(trace: Trace, job: str, effects: list[Event]) -> list[Event]:
    shown = {"deliver", "crash", "redeliver", "fault", "effect", "skip", "failed", "retry"}
    return [e for e in trace.events if e.get("job") == job and e["ev"] in shown] or effects


def exactly_once(run: SimEnvironment | Trace, effect: str) -> None:
    """Every job that succeeded performed ``effect`` exactly once (a DEAD job at most
    once). A crash + redelivery or a duplicate delivery through a non-idempotent stage
    shows up here."""
    trace = _trace(run)
    done = {e["job"] for e in trace.events if e["ev"] == "job.succeeded"}
    for job, effects in _effects(trace, effect).items():
        if len(effects) > 1:
            raise InvariantViolation(
                f"exactly-once broken: {job} performed {effect!r} {len(effects)} times",
                _context(trace, job, effects),
            )
    for job in _dispatched(trace):
        if job in done and not _effects(trace, effect).get(job):
            raise InvariantViolation(
                f"exactly-once broken: {job} succeeded without performing {effect!r}",
                _context(trace, job, []),
            )


def at_least_once(run: SimEnvironment | Trace, effect: str) -> None:
    """Every job that succeeded performed ``effect`` at least once."""
    trace = _trace(run)
    effects = _effects(trace, effect)
    for e in trace.events:
        if e["ev"] == "job.succeeded" and not effects.get(e["job"]):
            job = e["job"]
            raise InvariantViolation(
                f"at-least-once broken: {job} succeeded without performing {effect!r}",
                _context(trace, job, []),
            )


def max_rate(run: SimEnvironment | Trace, effect: str, *, per: float, limit: int) -> None:
    """No ``per`` seconds of virtual time saw ``effect`` more than ``limit`` times (over
    all jobs): a rate limit towards a third party kept, whatever retries and redeliveries
    do."""
    if per <= 0 or limit < 0:
        raise ValueError(
            f"max_rate() needs per > 0 and limit >= 0, got per={per!r}, limit={limit!r}"
        )
    trace = _trace(run)
    hits = [e for e in trace.events if e["ev"] == "effect" and e.get("name") == effect]
    start = 0
    for end, e in enumerate(hits):
        while hits[start]["t"] <= e["t"] - per:
            start += 1
        if end - start + 1 > limit:
            raise InvariantViolation(
                f"rate broken: {effect!r} happened {end - start + 1} times within {per:g} s "
                f"(from t={hits[start]['t']:g} to t={e['t']:g}); at most {limit} allowed",
                hits[start : end + 1],
            )


def per_key_order(run: SimEnvironment | Trace, effect: str, *, key: str) -> None:
    """For every value of the effect's ``key`` field (an account, a user), ``effect``
    happened in the order the jobs were dispatched: job N's before job N+1's. Shards
    routed to one queue with one worker keep it; jobs of one key spread over queues or
    workers do not."""
    trace = _trace(run)
    order = {job: i for i, job in enumerate(_dispatched(trace))}
    last: dict[Any, Event] = {}
    for e in trace.events:
        if e["ev"] != "effect" or e.get("name") != effect or key not in e:
            continue
        value = e[key]
        prev = last.get(value)
        if prev is not None and order.get(str(e.get("job")), -1) < order.get(
            str(prev.get("job")), -1
        ):
            raise InvariantViolation(
                f"per-key order broken: {effect!r} for {key}={value!r} ran for {e.get('job')} "
                f"after {prev.get('job')}, which was dispatched later",
                [prev, e],
            )
        last[value] = e


def complete_or_absent(
    run: SimEnvironment, prefix: str, *, complete: Callable[[str, bytes], bool]
) -> None:
    """Every stored object under ``prefix`` is complete (``complete(key, data)``) or
    absent: a crash half-way through writing one must never leave a partial object a
    reader would take for the real one. Reads the backend, adding no trace events."""
    sim = _sim(run, "complete_or_absent")
    storage = getattr(sim.storage, "inner", sim.storage)
    for info in storage.list(prefix):
        key = info.key
        data = storage.get(key)
        if not complete(key, data):
            raise InvariantViolation(
                f"complete-or-absent broken: {key!r} is stored but incomplete ({len(data)} bytes)",
                [e for e in sim.trace.events if e.get("key") == key],
            )


def all_or_nothing(
    run: SimEnvironment, *, effects: Sequence[str], compensations: Mapping[str, str]
) -> None:
    """Every job is all or nothing: a job that SUCCEEDED performed each of ``effects``
    and undid none; a job that is DEAD undid every compensable effect it performed,
    exactly as often as it performed it (``compensations`` maps an effect to the effect
    that undoes it: ``{"charge": "refund"}``). A missing compensation, or one that runs
    twice (not idempotent), breaks it.

    An effect recorded with a ``key`` field stands for a call with an idempotency key
    (as payment APIs take): its repeats with one key count once."""
    sim = _sim(run, "all_or_nothing")
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    seen: set[tuple[str, str, Any]] = set()
    for e in sim.trace.events:
        if e["ev"] == "effect" and e.get("job") is not None:
            if "key" in e:
                if (e["job"], e["name"], e["key"]) in seen:
                    continue
                seen.add((e["job"], e["name"], e["key"]))
            counts[e["job"]][e["name"]] += 1
    undoing = set(compensations.values())
    for job, state in _final_states(sim).items():
        done = counts.get(job, Counter())
        problem = None
        if state == "SUCCEEDED":
            missing = [name for name in effects if not done[name]]
            undone = sorted(name for name in undoing if done[name])
            if missing or undone:
                problem = f"{job} SUCCEEDED but " + ", ".join(
                    filter(
                        None,
                        [
                            f"never performed {missing}" if missing else "",
                            f"undid {undone}" if undone else "",
                        ],
                    )
                )
        elif state == "DEAD":
            wrong = {
                name: (done[name], done[undo])
                for name, undo in compensations.items()
                if done[name] != done[undo]
            }
            if wrong:
                problem = f"{job} is DEAD but " + ", ".join(
                    f"{name!r} happened {n} times and {compensations[name]!r} {m}"
                    for name, (n, m) in wrong.items()
                )
        if problem is not None:
            raise InvariantViolation(
                f"all-or-nothing broken: {problem}",
                [
                    e
                    for e in sim.trace.events
                    if e.get("job") == job
                    and e["ev"]
                    in (
                        "effect",
                        "crash",
                        "deliver",
                        "failed",
                        "job.compensating",
                        "job.compensated",
                        "stage.compensated",
                        "dlq",
                    )
                ],
            )


# -- stages -------------------------------------------------------------------------------
def stage_order(run: SimEnvironment | Trace, expected: Sequence[str] | None = None) -> None:
    """Stages run top to bottom: within each delivery (and in the caller's sync part) a
    stage is entered only by the stage before it (stage ``i`` while stage ``i - 1`` is
    still running: it called ``next_fn``), or as the first stage of a run. A stage that
    runs the rest of the pipeline again (the ``retry`` stage) enters its successor again
    while it is still running, which is in order. With ``expected`` (the pipeline's stage
    labels in order), stage ``i`` is ``expected[i]``."""
    trace = _trace(run)
    running: dict[tuple[str, str], list[Event]] = {}
    for e in trace.events:
        ev = e["ev"]
        if ev == "deliver":
            running.pop((e.get("job", ""), e["lane"]), None)
        elif ev == "crash":  # a dead process: its stages never exit
            for key in [k for k in running if k[1] == e["lane"]]:
                del running[key]
        elif ev == "stage.enter":
            stack = running.setdefault((e["job"], e["lane"]), [])
            i = e["index"]
            if expected is not None and (i >= len(expected) or expected[i] != e["stage"]):
                want = expected[i] if i < len(expected) else "nothing (past the end)"
                raise InvariantViolation(
                    f"stage order broken: {e['job']} entered {e['stage']!r} as stage {i}, "
                    f"expected {want!r}",
                    [e],
                )
            if stack and i != stack[-1]["index"] + 1:
                top = stack[-1]
                raise InvariantViolation(
                    f"stage order broken: {e['job']} entered stage {i} ({e['stage']!r}) "
                    f"from stage {top['index']} ({top['stage']!r})",
                    [top, e],
                )
            stack.append(e)
        elif ev == "stage.exit":
            stack = running.get((e["job"], e["lane"]), [])
            while stack and stack.pop()["index"] != e["index"]:
                pass
    return None


_RUN_ENDS = frozenset(
    {"ack", "failed", "retry", "dead", "crash", "skip", "deferred", "defer", "requeue", "lost"}
)


def no_concurrent_runs(run: SimEnvironment | Trace) -> None:
    """No two deliveries of one job ran its stages at the same time: a duplicate waits
    while the running delivery holds the job's lease. (A worker that outlives its lease,
    e.g. cut off from the job store for longer than ``DCORE_LEASE_TTL``, is taken over
    while it still runs; that shows up here as the concurrency it is.)"""
    trace = _trace(run)
    running: dict[str, Event] = {}  # job → the stage entry of the delivery running it
    for e in trace.events:
        ev, job = e["ev"], e.get("job")
        if job is None:
            continue
        if ev == "stage.enter" and e["lane"].startswith("w"):
            current = running.get(job)
            if current is not None and current["lane"] != e["lane"]:
                raise InvariantViolation(
                    f"concurrent runs: {job} ran on {e['lane']} while {current['lane']} "
                    "was still running it",
                    [current, e],
                )
            running.setdefault(job, e)
        elif ev in _RUN_ENDS and running.get(job, {}).get("lane") == e["lane"]:
            del running[job]


def sync_before_return(run: SimEnvironment | Trace) -> None:
    """The stages before the Dispatch ran in the caller, all entered before the hand-off,
    and no background stage of a job started before its Dispatch."""
    trace = _trace(run)
    dispatched: dict[str, Event] = {}
    for e in trace.events:
        ev = e["ev"]
        if ev == "dispatch":
            dispatched[e["job"]] = e
        elif ev == "stage.enter":
            d = dispatched.get(e["job"])
            background = e["lane"].startswith("w")
            if background and d is None:
                raise InvariantViolation(
                    f"sync-before-return broken: background stage {e['stage']!r} of "
                    f"{e['job']} started before the job was dispatched",
                    [e],
                )
            if not background and d is not None and d["lane"] == e["lane"]:
                raise InvariantViolation(
                    f"sync-before-return broken: {e['job']} entered {e['stage']!r} in the "
                    f"caller after the Dispatch handed the job off",
                    [d, e],
                )


# -- locks --------------------------------------------------------------------------------
def lock_mutual_exclusion(run: SimEnvironment | Trace) -> None:
    """No lock was held by two live holders at once. A holder whose worker crashed is
    dead (its lock passes on when the TTL runs out); a live holder whose TTL ran out
    while another took the lock is a violation."""
    trace = _trace(run)
    holders: dict[str, Event] = {}
    for e in trace.events:
        ev = e["ev"]
        if ev == "lock.acquired":
            held = holders.get(e["name"])
            if held is not None:
                raise InvariantViolation(
                    f"mutual exclusion broken: {e['lane']} acquired lock {e['name']!r} "
                    f"while {held['lane']} still held it (its TTL ran out while it worked)",
                    [held, e],
                )
            holders[e["name"]] = e
        elif ev in ("lock.release", "lock.lost"):
            held = holders.get(e["name"])
            if held is not None and held["lane"] == e["lane"]:
                del holders[e["name"]]
        elif ev == "crash":
            for name in [n for n, h in holders.items() if h["lane"] == e["lane"]]:
                del holders[name]


def all_succeeded(run: SimEnvironment) -> None:
    """Every dispatched job ended SUCCEEDED (a run where jobs die is not a passing run)."""
    sim = _sim(run, "all_succeeded")
    others = {job: state for job, state in _final_states(sim).items() if state != "SUCCEEDED"}
    if others:
        by_job = _by_job(sim.trace)
        listed = ", ".join(f"{job} is {state or 'missing'}" for job, state in others.items())
        raise InvariantViolation(
            f"not every job succeeded: {listed}", [e for job in others for e in by_job[job]]
        )


def expect_states(run: SimEnvironment, expected: Mapping[str, str]) -> None:
    """The jobs (by alias) ended in the states given: ``{"j1": "SUCCEEDED", "j2": "DEAD"}``."""
    sim = _sim(run, "expect_states")
    states = _final_states(sim)
    wrong = {
        job: (states.get(job), str(want))
        for job, want in expected.items()
        if states.get(job) != str(want)
    }
    if wrong:
        listed = ", ".join(
            f"{job} is {got or 'missing'}, expected {want}" for job, (got, want) in wrong.items()
        )
        by_job = _by_job(sim.trace)
        raise InvariantViolation(
            f"unexpected job states: {listed}", [e for job in wrong for e in by_job.get(job, [])]
        )


@dataclass(frozen=True)
class RunSummary:
    """How the jobs of a checked run ended: ``states`` counts them by final state."""

    states: Mapping[str, int]

    @property
    def dead(self) -> int:
        return self.states.get("DEAD", 0)

    def __str__(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items()))


def check_all(
    run: SimEnvironment, *, exactly_once_effects: Sequence[str] = (), allow_dead: bool = True
) -> RunSummary:
    """The invariants every run must keep, plus exactly-once for the named effects.

    Returns how the jobs ended, so a test can see that its run did something: a run in
    which every job died keeps every invariant. ``allow_dead=False`` makes a DEAD job a
    violation."""
    no_job_lost(run)
    retry_bounds(run)
    dlq_exactly_once(run)
    stage_order(run)
    sync_before_return(run)
    no_concurrent_runs(run)
    lock_mutual_exclusion(run)
    for effect in exactly_once_effects:
        exactly_once(run, effect)
    summary = RunSummary(dict(Counter(str(s) for s in _final_states(run).values())))
    if not allow_dead and summary.dead:
        all_succeeded(run)
    return summary
