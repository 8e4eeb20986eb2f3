"""A seed makes every toxic's random draws reproducible (the real server ignores -seed)."""

from __future__ import annotations

import time

from dcore_testing.chaos import Decision, ToxiproxyClient, ToxiproxyServer


def _run_traffic(server: ToxiproxyServer, echo_port: int, net, *, noise: bool) -> list[Decision]:
    with ToxiproxyClient(server.url) as client:
        if noise:  # unrelated proxies and toxics must not shift p's draws
            other = client.create_proxy("other", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
            other.add_toxic("latency", latency=1, jitter=1, toxicity=0.5)
            other.add_toxic("slicer", average_size=2, size_variation=1)
        proxy = client.create_proxy("p", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
        proxy.add_toxic("latency", latency=3, jitter=3, toxicity=0.5)
        for _ in range(8):
            if noise:
                with net.connect(other) as sock:
                    net.round_trip(sock, b"noise!")
            with net.connect(proxy) as sock:
                for _ in range(3):
                    net.round_trip(sock)
        return server.decisions("p", "latency_downstream")


def test_same_seed_gives_identical_toxicity_and_jitter_draws(echo_port: int, net) -> None:
    with ToxiproxyServer(seed=1234) as first:
        a = _run_traffic(first, echo_port, net, noise=False)
    with ToxiproxyServer(seed=1234) as second:
        b = _run_traffic(second, echo_port, net, noise=True)
    with ToxiproxyServer(seed=99) as third:
        c = _run_traffic(third, echo_port, net, noise=False)
    assert a == b
    assert a != c
    rolls = [d.value for d in a if d.kind == "toxicity"]
    jitters = [d.value for d in a if d.kind == "jitter"]
    assert len(rolls) == 8
    assert any(r < 0.5 for r in rolls)
    assert any(r >= 0.5 for r in rolls)  # seed 1234 exercises both outcomes
    assert jitters  # drawn only on connections where the toxic is active
    assert all(-3 <= j < 3 for j in jitters)
    assert len(jitters) == 3 * sum(r < 0.5 for r in rolls)


def test_the_decision_log_matches_what_connections_experienced(echo_port: int, net) -> None:
    with ToxiproxyServer(seed=7) as server, ToxiproxyClient(server.url) as client:
        proxy = client.create_proxy("p", "127.0.0.1:0", f"127.0.0.1:{echo_port}")
        proxy.add_toxic("latency", latency=100, toxicity=0.5)
        delayed = []
        for _ in range(6):
            with net.connect(proxy) as sock:
                start = time.perf_counter()
                net.round_trip(sock)
                delayed.append(time.perf_counter() - start >= 0.09)
        rolls = [d for d in server.decisions("p", "latency_downstream") if d.kind == "toxicity"]
    assert [d.connection for d in rolls] == [1, 2, 3, 4, 5, 6]
    assert delayed == [d.value < 0.5 for d in rolls]
    assert True in delayed
    assert False in delayed
