"""Priority levels and the panic threshold: `priority_loads` against the
examples of Envoy's documentation, then `PriorityBalancer` and
`ClusterRuntime` choosing hosts as health changes."""

from __future__ import annotations

import random
from collections import Counter

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.config import Cluster, Endpoint, SocketAddress
from trioproxy.net.network import TrioNetwork
from trioproxy.observe.stats import StatsStore
from trioproxy.upstream.cluster_manager import ClusterRuntime, Host
from trioproxy.upstream.lb import BALANCERS, PriorityBalancer, priority_loads


@attrs.define(eq=False)
class FakeHost:
    address: str
    weight: int = 1
    active_requests: int = 0


# --------------------------------------------------------------------------- loads


@pytest.mark.parametrize(
    ("healthy_p0", "loads"),
    [
        # Envoy's docs (priority levels): P0 healthy % -> P0 / P1 load with
        # a fully healthy P1. 1.4 x 72 = 100.8, still all on P0.
        (100, [100, 0]),
        (72, [100, 0]),
        (71, [99, 1]),
        (50, [70, 30]),
        (25, [35, 65]),
        (0, [0, 100]),
    ],
)
def test_two_levels_spill_as_envoy_documents(healthy_p0: int, loads: list[int]) -> None:
    assert priority_loads([(healthy_p0, 100), (100, 100)], 50) == (loads, [False, False])


@pytest.mark.parametrize(
    ("levels", "loads"),
    [
        # Envoy's docs, three levels: 20 % / 20 % / 100 % healthy.
        ([(20, 100), (20, 100), (100, 100)], [28, 28, 44]),
        ([(20, 100), (30, 100), (100, 100)], [28, 42, 30]),
        ([(100, 100), (100, 100), (100, 100)], [100, 0, 0]),
        # Both in panic (20 % < 50 %): the load follows the host counts.
        ([(20, 100), (20, 100)], [50, 50]),
        # Normalised: health 70 + 14 = 84 < 100, scaled by 100 / 84 (not
        # 70 and 14 with the rest on P0); the rounding leftover goes to P0.
        ([(50, 100), (10, 100)], [84, 16]),
    ],
)
def test_loads_follow_envoy(levels: list[tuple[int, int]], loads: list[int]) -> None:
    assert priority_loads(levels, 50)[0] == loads


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=1, max_size=5))
def test_loads_always_sum_to_100(raw: list[tuple[int, int]]) -> None:
    levels = [(min(h, t), t) for h, t in raw]
    loads, panic = priority_loads(levels, 50)
    assert sum(loads) == 100
    assert all(0 <= x <= 100 for x in loads)
    assert len(panic) == len(levels)
    if not any(panic):
        # Without panic a level with no healthy host gets nothing.
        assert all(load == 0 for load, (h, _) in zip(loads, levels, strict=True) if h == 0)


def test_panic_below_the_threshold_only() -> None:
    # One level: 2 of 4 healthy is 50 %, not below 50: no panic.
    assert priority_loads([(2, 4)], 50) == ([100], [False])
    assert priority_loads([(1, 4)], 50) == ([100], [True])
    # Threshold 0 disables panic.
    assert priority_loads([(0, 4)], 0) == ([100], [False])
    # Short of 100 % in all: only the level below the threshold panics.
    assert priority_loads([(50, 100), (10, 100)], 50)[1] == [False, True]
    # No panic anywhere while the levels together reach 100 % health.
    assert priority_loads([(3, 10), (10, 10)], 50) == ([42, 58], [False, False])


def test_total_panic_spreads_load_by_host_count() -> None:
    # Every level in panic: load follows the number of hosts per level.
    loads, panic = priority_loads([(1, 4), (0, 12)], 50)
    assert panic == [True, True]
    assert loads == [25, 75]


# --------------------------------------------------------------------------- choosing


def _balancer(
    levels: list[tuple[list[FakeHost], list[FakeHost]]], policy: str = "round_robin", **kw: object
) -> tuple[PriorityBalancer, list[int]]:
    panics = [0]

    def on_panic() -> None:
        panics[0] += 1

    lb = PriorityBalancer(levels, BALANCERS[policy], rng=random.Random(3), on_panic=on_panic, **kw)  # type: ignore[arg-type]
    return lb, panics


def test_healthy_priority_zero_takes_everything() -> None:
    p0 = [FakeHost("a"), FakeHost("b")]
    p1 = [FakeHost("c")]
    lb, panics = _balancer([(p0, p0), (p1, p1)])
    assert {lb.choose().address for _ in range(200)} == {"a", "b"}  # type: ignore[union-attr]
    assert panics == [0]


def test_failover_to_priority_one_when_priority_zero_is_down() -> None:
    p0 = [FakeHost("a"), FakeHost("b")]
    p1 = [FakeHost("c"), FakeHost("d")]
    lb, panics = _balancer([(p0, []), (p1, p1)])
    assert {lb.choose().address for _ in range(200)} == {"c", "d"}  # type: ignore[union-attr]
    assert panics == [0]


def test_partial_health_spills_by_load() -> None:
    # P0: 1 of 2 healthy -> health 70, P1 takes 30 %.
    p0 = [FakeHost("a"), FakeHost("b")]
    p1 = [FakeHost("c")]
    lb, _ = _balancer([(p0, p0[:1]), (p1, p1)], "random")
    c = Counter(lb.choose().address for _ in range(10_000))  # type: ignore[union-attr]
    assert c["b"] == 0
    assert 0.67 < c["a"] / 10_000 < 0.73
    assert 0.27 < c["c"] / 10_000 < 0.33


def test_panic_uses_every_host_and_counts() -> None:
    hs = [FakeHost(x) for x in "abcd"]
    lb, panics = _balancer([(hs, hs[:1])])
    assert {lb.choose().address for _ in range(100)} == set("abcd")  # type: ignore[union-attr]
    assert panics == [100]


def test_panic_threshold_zero_keeps_to_healthy_hosts() -> None:
    hs = [FakeHost(x) for x in "abcd"]
    lb, panics = _balancer([(hs, hs[:1])], panic_threshold=0)
    assert {lb.choose().address for _ in range(100)} == {"a"}  # type: ignore[union-attr]
    lb, _ = _balancer([(hs, [])], panic_threshold=0)
    assert lb.choose() is None
    assert panics == [0]


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_picks_the_priority_and_the_host(policy: str) -> None:
    p0 = [FakeHost("10.0.0.1:1"), FakeHost("10.0.0.2:1")]
    p1 = [FakeHost("10.0.1.1:1"), FakeHost("10.0.1.2:1")]
    lb, _ = _balancer([(p0, p0[:1]), (p1, p1)], policy)  # P0 load 70, P1 30
    for key in range(0, 10_000, 37):
        host = lb.choose(key)
        assert host is lb.choose(key)  # sticky, priority included
        assert (host in p0) == (key % 100 < 70)


# --------------------------------------------------------------------------- cluster runtime


def _runtime(priorities: list[int], **kw: object) -> ClusterRuntime:
    eps = tuple(
        Endpoint(address=SocketAddress(host="127.0.0.1", port=9000 + i), priority=p)
        for i, p in enumerate(priorities)
    )
    config = Cluster(name="svc", endpoints=eps, **kw)  # type: ignore[arg-type]
    return ClusterRuntime(config, TrioNetwork(), StatsStore(), random.Random(7))


def _ports(hosts: set[Host | None]) -> set[int]:
    return {int(h.address.rsplit(":", 1)[1]) - 9000 for h in hosts if h is not None}


def test_cluster_runtime_fails_over_and_back() -> None:
    c = _runtime([0, 0, 1, 1])
    assert _ports({c.choose_host() for _ in range(50)}) == {0, 1}
    c.hosts[0].healthy = c.hosts[1].healthy = False
    c.rebuild()
    assert _ports({c.choose_host() for _ in range(50)}) == {2, 3}
    c.hosts[0].healthy = True
    c.rebuild()  # P0 at 50 %: 70 % of the load back on host 0
    chosen = Counter(_ports({c.choose_host()}).pop() for _ in range(2_000))
    assert 0.64 < chosen[0] / 2_000 < 0.76
    assert chosen[1] == 0
    assert c.lb_healthy_panic.value == 0


def test_cluster_runtime_panic_counter_and_threshold() -> None:
    c = _runtime([0, 0, 0, 0])
    for h in c.hosts[1:]:
        h.healthy = False
    c.rebuild()
    assert _ports({c.choose_host() for _ in range(100)}) == {0, 1, 2, 3}
    assert c.lb_healthy_panic.value == 100
    c = _runtime([0, 0, 0, 0], healthy_panic_threshold=10.0)  # 25 % is above 10 %
    for h in c.hosts[1:]:
        h.healthy = False
    c.rebuild()
    assert _ports({c.choose_host() for _ in range(100)}) == {0}
    assert c.lb_healthy_panic.value == 0


def test_cluster_runtime_gaps_in_priorities_are_empty_levels() -> None:
    c = _runtime([2, 2])
    assert _ports({c.choose_host() for _ in range(20)}) == {0, 1}


def test_empty_cluster_gives_none_without_counting_panic() -> None:
    c = _runtime([])
    assert c.choose_host() is None
    assert c.cx_none_healthy.value == 1
    assert c.lb_healthy_panic.value == 0
    lb, panics = _balancer([])
    assert lb.choose() is None and lb.choose(5) is None
    assert panics == [0]
