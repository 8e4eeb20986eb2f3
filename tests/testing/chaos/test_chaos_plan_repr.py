"""A ChaosPlan's repr lists its steps the way they were built, short and the same in
every run, so a failing property test reports the plan it drew."""

from __future__ import annotations

import re

import pytest

from dcore_testing.chaos import ChaosPlan, Proxy, ToxiproxyClient


@pytest.fixture
def proxies(dcore_toxiproxy: ToxiproxyClient) -> list[Proxy]:
    return [dcore_toxiproxy.create_proxy(n, "127.0.0.1:0", "127.0.0.1:1") for n in ("redis", "s3")]


def test_a_built_plan_reads_like_its_steps(proxies: list[Proxy]) -> None:
    redis, s3 = proxies
    plan = ChaosPlan(seed=7)
    plan.at(1.0).latency(redis, 100, for_=3.0)
    plan.at(2.0).partition(s3)
    plan.at(2.5).one_way_partition(redis, "upstream", for_=1.0)
    assert repr(plan) == (
        "ChaosPlan(seed=7, steps=[Step(1.0, 'latency', 'redis', for_=3.0, jitter=0, "
        "latency=100), Step(2.0, 'partition', 's3'), Step(2.5, 'one_way_partition', 'redis', "
        "for_=1.0, stream='upstream')])"
    )
    assert repr(ChaosPlan()) == "ChaosPlan(seed=None, steps=[])"


def test_a_long_random_plan_shows_its_first_steps_and_the_count(proxies: list[Proxy]) -> None:
    plan = ChaosPlan.random(proxies, duration=60, seed=3)
    assert len(plan.steps) > ChaosPlan.REPR_STEPS
    text = repr(plan)
    assert text.startswith("ChaosPlan(seed=3, steps=[Step(")
    assert text.endswith(f", ... {len(plan.steps) - ChaosPlan.REPR_STEPS} more])")
    assert text.count("Step(") == ChaosPlan.REPR_STEPS
    assert text == repr(ChaosPlan.random(proxies, duration=60, seed=3))
    assert not re.search(r"0x[0-9a-f]+|Proxy", text)
