"""ChaosPlan: reproducible random plans and ordered application on a fake clock."""

from __future__ import annotations

import threading

import pytest

from dcore_testing.chaos import ChaosPlan, ManualPlanClock, Proxy, ToxiproxyClient


@pytest.fixture
def proxies(dcore_toxiproxy: ToxiproxyClient) -> list[Proxy]:
    return [dcore_toxiproxy.create_proxy(n, "127.0.0.1:0", "127.0.0.1:1") for n in ("a", "b", "c")]


class Observer:
    """A wait() for ManualPlanClock that snapshots server state before each time jump."""

    def __init__(self, clock: ManualPlanClock, toxiproxy: ToxiproxyClient) -> None:
        self.clock = clock
        self.toxiproxy = toxiproxy
        self.snapshots: list[tuple[float, dict[str, tuple[bool, list[str]]]]] = []

    def state(self) -> dict[str, tuple[bool, list[str]]]:
        return {
            name: (p.enabled, [t.type for t in p.toxics()])
            for name, p in self.toxiproxy.proxies().items()
        }

    def wait(self, timeout: float) -> bool:
        self.snapshots.append((self.clock.now, self.state()))
        return self.clock.wait(timeout)


def test_same_seed_gives_the_same_random_plan(proxies: list[Proxy]) -> None:
    first = ChaosPlan.random(proxies, duration=30, seed=5)
    again = ChaosPlan.random(proxies, duration=30, seed=5)
    other = ChaosPlan.random(proxies, duration=30, seed=6)
    assert first.steps == again.steps
    assert first.steps != other.steps
    assert len(first.steps) >= 10
    assert {s.action for s in first.steps} <= {
        "latency",
        "bandwidth",
        "partition",
        "one_way_partition",
    }
    assert all(
        0 <= s.start < 30 and s.duration and s.start + s.duration <= 30.001 for s in first.steps
    )
    assert {s.proxy_name for s in first.steps} == {"a", "b", "c"}


def test_random_plan_respects_chosen_actions(proxies: list[Proxy]) -> None:
    plan = ChaosPlan.random(proxies[:1], duration=20, seed=1, actions=["latency"], mean_gap=0.5)
    assert {s.action for s in plan.steps} == {"latency"}
    with pytest.raises(ValueError, match="cannot draw"):
        ChaosPlan.random(proxies, duration=5, seed=1, actions=["meteor"])


def test_plan_applies_and_reverts_in_time_order(
    dcore_toxiproxy: ToxiproxyClient, proxies: list[Proxy]
) -> None:
    a, b, _ = proxies
    plan = ChaosPlan(seed=1)
    plan.at(2.0).partition(a, for_=5.0)
    plan.at(1.0).latency(b, 100, for_=3.0)
    plan.at(3.0).bandwidth(a, 50, for_=1.0)
    clock = ManualPlanClock()
    observer = Observer(clock, dcore_toxiproxy)
    log = plan.run(clock=clock, wait=observer.wait)

    assert [(e.at, e.event, e.action, e.proxy) for e in log] == [
        (1.0, "apply", "latency", "b"),
        (2.0, "apply", "partition", "a"),
        (3.0, "apply", "bandwidth", "a"),
        (4.0, "revert", "latency", "b"),  # ties: reverts first, then in the order added
        (4.0, "revert", "bandwidth", "a"),
        (7.0, "revert", "partition", "a"),
    ]
    assert all(e.error is None for e in log)
    states = dict(observer.snapshots)
    assert states[0.0]["b"] == (True, [])
    assert states[1.0]["b"] == (True, ["latency"])
    assert states[2.0]["a"] == (False, [])
    assert states[3.0]["a"] == (False, ["bandwidth"])
    assert states[4.0] == {"a": (False, []), "b": (True, []), "c": (True, [])}
    assert observer.state() == {"a": (True, []), "b": (True, []), "c": (True, [])}


def test_overlapping_partitions_keep_the_proxy_down_until_the_last_ends(
    dcore_toxiproxy: ToxiproxyClient, proxies: list[Proxy]
) -> None:
    a = proxies[0]
    plan = ChaosPlan().at(0.0).partition(a, for_=2.0).at(1.0).partition(a, for_=3.0)
    clock = ManualPlanClock()
    observer = Observer(clock, dcore_toxiproxy)
    plan.run(clock=clock, wait=observer.wait)
    states = {t: s["a"][0] for t, s in observer.snapshots}
    assert states == {0.0: False, 1.0: False, 2.0: False}
    assert dcore_toxiproxy.get_proxy("a").enabled is True


def test_background_run_with_fake_clock_logs_everything(proxies: list[Proxy]) -> None:
    plan = ChaosPlan.random(proxies, duration=10, seed=3)
    clock = ManualPlanClock()
    run = plan.run_in_background(clock=clock, wait=clock.wait)
    run.join(timeout=30)
    assert run.done
    applied = [e for e in run.log if e.event == "apply"]
    assert len(applied) == len(plan.steps)
    assert [e.at for e in run.log] == sorted(e.at for e in run.log)
    assert all(e.error is None for e in run.log)


def test_stop_reverts_what_is_applied(
    dcore_toxiproxy: ToxiproxyClient, proxies: list[Proxy]
) -> None:
    a = proxies[0]
    plan = ChaosPlan().at(0.0).latency(a, 10).at(0.0).partition(a).at(50.0).bandwidth(a, 1)
    waiting = threading.Event()
    release = threading.Event()

    def wait(timeout: float) -> bool:
        waiting.set()
        return release.wait(timeout)

    run = plan.run_in_background(wait=wait)
    assert waiting.wait(10)
    assert dcore_toxiproxy.get_proxy("a").enabled is False
    assert [t.type for t in a.toxics()] == ["latency"]
    release.set()
    run.stop()
    assert [(e.event, e.action) for e in run.log] == [
        ("apply", "latency"),
        ("apply", "partition"),
        ("revert", "partition"),
        ("revert", "latency"),
    ]
    assert dcore_toxiproxy.get_proxy("a").enabled is True
    assert a.toxics() == []


def test_stop_interrupts_the_default_wait(proxies: list[Proxy]) -> None:
    run = ChaosPlan().at(3600.0).partition(proxies[0]).run_in_background()
    run.stop(timeout=10)
    assert run.done
    assert run.log == []


def test_a_failing_step_is_logged_and_the_plan_goes_on(proxies: list[Proxy]) -> None:
    a, b, _ = proxies
    plan = ChaosPlan().at(1.0).latency(a, 10, for_=1.0).at(2.0).latency(b, 10, for_=1.0)
    a.delete()
    clock = ManualPlanClock()
    log = plan.run(clock=clock, wait=clock.wait)
    assert [(e.proxy, e.event, e.error is None) for e in log] == [
        ("a", "apply", False),
        ("b", "apply", True),
        ("b", "revert", True),
    ]
    assert log[0].error is not None
    assert "proxy not found" in log[0].error


def test_invalid_steps_are_rejected(proxies: list[Proxy]) -> None:
    with pytest.raises(ValueError, match="for_"):
        ChaosPlan().at(1.0).partition(proxies[0], for_=0)
    with pytest.raises(ValueError, match="before the plan"):
        ChaosPlan().at(-1.0)
    with pytest.raises(ValueError, match="unknown toxic type"):
        ChaosPlan().at(0).toxic(proxies[0], "meteor")
