"""The load balancers in `trioproxy.upstream.lb`, driven directly.

- round_robin: nginx's smooth weighted round robin (exact proportions over
  every window of sum(weights) picks, interleaved); equal weights rotate
  from a random start.
- random: weighted, checked statistically with a seeded rng.
- least_request, as Envoy: equal weights use power-of-`choice_count` choices
  over active requests; unequal weights use an EDF schedule on
  weight / (active + 1).

Statistical checks use a seeded `random.Random`, so they are deterministic;
their bounds are still several standard deviations wide so that a change of
seed or of draw order does not break them, while a wrong algorithm does.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import attrs
import pytest

from trioproxy.config import Cluster, Endpoint, SocketAddress
from trioproxy.net.network import TrioNetwork
from trioproxy.observe.stats import StatsStore
from trioproxy.upstream.cluster_manager import ClusterRuntime
from trioproxy.upstream.lb import BALANCERS, LeastRequest, LoadBalancer, Random, RoundRobin


@attrs.define
class FakeHost:
    name: str
    weight: int = 1
    active_requests: int = 0

    def __repr__(self) -> str:
        return self.name


def hosts(*weights: int, active: Sequence[int] = ()) -> list[FakeHost]:
    names = "abcdefghijklmnopqrstuvwxyz"
    return [FakeHost(names[i], w, active[i] if active else 0) for i, w in enumerate(weights)]


def picks(lb: LoadBalancer, n: int) -> str:
    out = []
    for _ in range(n):
        h = lb.choose()
        assert h is not None
        out.append(h.name)  # type: ignore[attr-defined]
    return "".join(out)


def shares(seq: str) -> dict[str, float]:
    c = Counter(seq)
    return {k: v / len(seq) for k, v in sorted(c.items())}


class ScriptedRng(random.Random):
    """An rng whose `randrange` answers from a script (to pin tie-breaking)."""

    def __init__(self, script: Sequence[int]) -> None:
        super().__init__(0)
        self._script = list(script)

    def randrange(self, *args: object, **kw: object) -> int:
        return self._script.pop(0)


# --------------------------------------------------------------------------- registry


def test_registry_has_the_three_policies() -> None:
    assert set(BALANCERS) >= {"round_robin", "random", "least_request"}
    assert BALANCERS["round_robin"] is RoundRobin
    assert BALANCERS["random"] is Random
    assert BALANCERS["least_request"] is LeastRequest


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request"])
def test_no_hosts_gives_none(policy: str) -> None:
    lb = BALANCERS[policy]([], rng=random.Random(1), choice_count=2)
    assert lb.choose() is None
    assert lb.choose() is None


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request"])
@pytest.mark.parametrize("weight", [1, 7])
def test_one_host_is_always_chosen(policy: str, weight: int) -> None:
    only = FakeHost("a", weight, active_requests=5)
    lb = BALANCERS[policy]([only], rng=random.Random(1), choice_count=2)
    assert all(lb.choose() is only for _ in range(50))


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request"])
def test_balancer_copies_the_host_list(policy: str) -> None:
    hs = hosts(1, 1)
    lb = BALANCERS[policy](hs, rng=random.Random(1), choice_count=2)
    hs.append(FakeHost("z"))
    assert "z" not in picks(lb, 100)


# --------------------------------------------------------------------------- round robin


def test_round_robin_smooth_weighted_5_1_1_is_nginx_sequence() -> None:
    # nginx's documented example: weights 5, 1, 1 give a a b a c a a.
    lb = RoundRobin(hosts(5, 1, 1), rng=random.Random(0))
    assert picks(lb, 21) == "aabacaa" * 3


@pytest.mark.parametrize(
    ("weights", "expected_cycle"),
    [
        ((3, 2), "ababa"),
        ((2, 1), "aba"),
        ((4, 2, 1), "abacaba"),
        ((1, 2), "bab"),
    ],
)
def test_round_robin_smooth_weighted_sequences(
    weights: tuple[int, ...], expected_cycle: str
) -> None:
    lb = RoundRobin(hosts(*weights), rng=random.Random(0))
    assert picks(lb, 4 * len(expected_cycle)) == expected_cycle * 4


@pytest.mark.parametrize(
    "weights",
    [(5, 1, 1), (3, 2), (1, 2, 3, 4), (10, 1), (7, 7, 1), (2, 3, 5, 7, 11)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_robin_exact_proportions_in_every_window(weights: tuple[int, ...], seed: int) -> None:
    total = sum(weights)
    lb = RoundRobin(hosts(*weights), rng=random.Random(seed))
    seq = picks(lb, 5 * total)
    expected = {h.name: h.weight for h in hosts(*weights)}
    # Every window of sum(weights) consecutive picks, not only aligned cycles.
    for start in range(len(seq) - total + 1):
        assert Counter(seq[start : start + total]) == expected, (start, seq)


def test_round_robin_weighted_spreads_a_light_host_out() -> None:
    # Weights 1, 1, 8: the two light hosts are not picked back to back, and the
    # heavy host's eight picks are split around them, not one burst per cycle.
    lb = RoundRobin(hosts(1, 1, 8), rng=random.Random(0))
    cycle = picks(lb, 10)
    assert Counter(cycle) == {"a": 1, "b": 1, "c": 8}
    assert "ab" not in cycle and "ba" not in cycle
    assert "cccccccc" not in cycle * 2  # not one burst per cycle


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("weight", [1, 3])
def test_round_robin_uniform_weights_rotate(n: int, weight: int) -> None:
    hs = hosts(*([weight] * n))
    names = "".join(h.name for h in hs)
    for seed in range(10):
        seq = picks(RoundRobin(hs, rng=random.Random(seed)), 4 * n)
        start = names.index(seq[0])
        assert seq == (names[start:] + names[:start]) * 4


def test_round_robin_uniform_start_is_random() -> None:
    # Envoy starts each worker's rotation at a random host.
    firsts = {picks(RoundRobin(hosts(1, 1, 1, 1), rng=random.Random(s)), 1) for s in range(40)}
    assert firsts == {"a", "b", "c", "d"}


# --------------------------------------------------------------------------- random


def test_random_respects_weights() -> None:
    lb = Random(hosts(3, 1), rng=random.Random(12345))
    s = shares(picks(lb, 10_000))
    # expected 0.75 / 0.25; one standard deviation is about 0.0043
    assert 0.72 < s["a"] < 0.78
    assert 0.22 < s["b"] < 0.28


def test_random_equal_weights_is_uniform() -> None:
    lb = Random(hosts(1, 1, 1, 1), rng=random.Random(7))
    s = shares(picks(lb, 8_000))
    assert set(s) == {"a", "b", "c", "d"}
    assert all(0.22 < v < 0.28 for v in s.values()), s


def test_random_heavy_weights_still_reach_light_hosts() -> None:
    lb = Random(hosts(98, 1, 1), rng=random.Random(3))
    s = shares(picks(lb, 20_000))
    assert 0.97 < s["a"] < 0.99
    assert 0.005 < s["b"] < 0.015 and 0.005 < s["c"] < 0.015


def test_random_is_not_a_rotation() -> None:
    seq = picks(Random(hosts(1, 1), rng=random.Random(99)), 200)
    assert "aa" in seq and "bb" in seq


def test_random_is_reproducible_from_the_seed() -> None:
    a = picks(Random(hosts(5, 2, 1), rng=random.Random(42)), 100)
    b = picks(Random(hosts(5, 2, 1), rng=random.Random(42)), 100)
    c = picks(Random(hosts(5, 2, 1), rng=random.Random(43)), 100)
    assert a == b
    assert a != c


# --------------------------------------------------------------------------- least request


def test_least_request_p2c_prefers_the_idle_host() -> None:
    # Equal weights: two uniform draws, the one with fewer active requests.
    # Host b (0 active) wins unless both draws miss it: 1 - (3/4)^2 = 7/16.
    lb = LeastRequest(hosts(1, 1, 1, 1, active=[5, 0, 5, 5]), rng=random.Random(1))
    s = shares(picks(lb, 8_000))
    assert 0.40 < s["b"] < 0.475
    for other in "acd":
        assert 0.16 < s[other] < 0.22


def test_least_request_p2c_distribution_follows_load_order() -> None:
    # Active 0 < 1 < 2 < 3: the chosen host is the least loaded of two draws,
    # so P(i) = ((4-i)^2 - (3-i)^2) / 16 = 7/16, 5/16, 3/16, 1/16.
    lb = LeastRequest(hosts(1, 1, 1, 1, active=[0, 1, 2, 3]), rng=random.Random(2))
    s = shares(picks(lb, 16_000))
    for name, expected in zip("abcd", (7 / 16, 5 / 16, 3 / 16, 1 / 16), strict=True):
        assert abs(s[name] - expected) < 0.02, (name, s)


def test_least_request_one_choice_ignores_load() -> None:
    lb = LeastRequest(hosts(1, 1, 1, 1, active=[5, 0, 5, 5]), rng=random.Random(1), choice_count=1)
    s = shares(picks(lb, 8_000))
    assert all(0.22 < v < 0.28 for v in s.values()), s


def test_least_request_many_choices_almost_always_least_loaded() -> None:
    lb = LeastRequest(hosts(1, 1, 1, 1, active=[5, 0, 5, 5]), rng=random.Random(1), choice_count=40)
    s = shares(picks(lb, 2_000))
    assert s["b"] > 0.99


def test_least_request_sees_active_counts_change() -> None:
    hs = hosts(1, 1, 1)
    lb = LeastRequest(hs, rng=random.Random(5), choice_count=10)
    hs[0].active_requests = 50
    hs[1].active_requests = 50
    assert shares(picks(lb, 200)).get("c", 0) > 0.95
    hs[2].active_requests = 100
    s = shares(picks(lb, 200))
    assert s.get("c", 0) < 0.05


def test_least_request_tie_keeps_the_first_draw() -> None:
    # Envoy replaces the candidate only on strictly fewer active requests.
    hs = hosts(1, 1, 1, active=[2, 2, 0])
    assert LeastRequest(hs, rng=ScriptedRng([0, 1])).choose() is hs[0]
    assert LeastRequest(hs, rng=ScriptedRng([1, 0])).choose() is hs[1]
    assert LeastRequest(hs, rng=ScriptedRng([0, 2])).choose() is hs[2]
    assert LeastRequest(hs, rng=ScriptedRng([2, 0])).choose() is hs[2]
    lb = LeastRequest(hs, rng=ScriptedRng([1, 0, 0]), choice_count=3)
    assert lb.choose() is hs[1]


def test_least_request_idle_equal_weights_is_uniform() -> None:
    lb = LeastRequest(hosts(2, 2, 2), rng=random.Random(11))
    s = shares(picks(lb, 9_000))
    assert all(0.30 < v < 0.37 for v in s.values()), s


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 1), (1, 2, 3, 4), (10, 1), (2, 3, 5)])
def test_least_request_weighted_idle_gives_exact_proportions(weights: tuple[int, ...]) -> None:
    # Unequal weights: EDF on weight / (active + 1). With no load this is a
    # weighted round robin: exact proportions, every host reached.
    total = sum(weights)
    lb = LeastRequest(hosts(*weights), rng=random.Random(0))
    seq = picks(lb, 100 * total)
    c = Counter(seq)
    for h in hosts(*weights):
        assert abs(c[h.name] - 100 * h.weight) <= 1, (c, weights)
    # ...and interleaved: the lightest host shows up in every cycle-sized window.
    lightest = hosts(*weights)[weights.index(min(weights))].name
    for start in range(0, len(seq) - total, total):
        assert lightest in seq[start : start + total + 1]


@pytest.mark.parametrize(
    ("weights", "active", "expected"),
    [
        # effective weight = weight / (active + 1)
        ((2, 1), (3, 0), {"a": 1, "b": 2}),  # 0.5 vs 1
        ((4, 1), (1, 0), {"a": 2, "b": 1}),  # 2 vs 1
        ((4, 1), (3, 0), {"a": 1, "b": 1}),  # 1 vs 1
        ((3, 2, 1), (2, 1, 0), {"a": 1, "b": 1, "c": 1}),
        ((10, 1), (9, 0), {"a": 1, "b": 1}),
    ],
)
def test_least_request_weighted_load_lowers_share(
    weights: tuple[int, ...], active: tuple[int, ...], expected: dict[str, int]
) -> None:
    lb = LeastRequest(hosts(*weights, active=active), rng=random.Random(0))
    unit = 120
    n = unit * sum(expected.values())
    c = Counter(picks(lb, n))
    for name, share in expected.items():
        assert abs(c[name] - unit * share) <= 2, (c, expected)


def test_least_request_weighted_reweighs_a_host_when_it_is_picked() -> None:
    # A host that became busy is rescheduled with its new (lower) weight the
    # next time it is picked: after a is picked and gets 99 active requests,
    # its next turn is 100/3 time units away, so b takes the next picks.
    hs = hosts(3, 1)
    lb = LeastRequest(hs, rng=random.Random(0))
    first = lb.choose()
    assert first is hs[0]
    hs[0].active_requests = 99
    # a's turn already scheduled (with weight 3) is kept; it is then
    # rescheduled with weight 3 / 100, so b takes every one of the next picks.
    assert picks(lb, 1) == "a"
    assert picks(lb, 30) == "b" * 30


def test_least_request_weighted_with_choice_count_still_weighted() -> None:
    # choice_count only applies to equal weights (Envoy); weights are honoured.
    lb = LeastRequest(hosts(9, 1), rng=random.Random(0), choice_count=5)
    c = Counter(picks(lb, 1000))
    assert abs(c["a"] - 900) <= 1 and abs(c["b"] - 100) <= 1


# --------------------------------------------------------------------------- cluster manager


def runtime(lb_policy: str, *weights: int, panic: float = 50.0) -> ClusterRuntime:
    eps = tuple(
        Endpoint(address=SocketAddress(host="127.0.0.1", port=9000 + i), weight=w)
        for i, w in enumerate(weights)
    )
    config = Cluster(
        name="svc",
        endpoints=eps,
        lb_policy=lb_policy,  # type: ignore[arg-type]
        healthy_panic_threshold=panic,
    )
    return ClusterRuntime(config, TrioNetwork(), StatsStore(), random.Random(4))


def test_cluster_runtime_round_robin_over_real_hosts() -> None:
    c = runtime("round_robin", 5, 1, 1)
    seq = [c.choose_host() for _ in range(7)]
    assert [h.address[-1] if h else None for h in seq] == list("0010200")


def test_cluster_runtime_least_request_uses_request_accounting() -> None:
    c = runtime("least_request", 1, 1)
    a, b = c.hosts
    for _ in range(5):
        c.on_request_start(a)
    # b has 0 active and a has 5: b wins unless both draws are a (1/4).
    chosen = Counter(c.choose_host() for _ in range(2_000))
    assert 0.70 < chosen[b] / 2_000 < 0.80
    for _ in range(5):
        c.on_request_end(a)
    assert a.active_requests == 0
    chosen = Counter(c.choose_host() for _ in range(2_000))
    assert 0.45 < chosen[b] / 2_000 < 0.55


def test_cluster_runtime_rebuild_drops_unhealthy_hosts() -> None:
    # With panic disabled (threshold 0), no healthy host means no host.
    c = runtime("round_robin", 1, 1, 1, panic=0)
    c.hosts[1].healthy = False
    c.rebuild()
    assert {c.choose_host() for _ in range(30)} == {c.hosts[0], c.hosts[2]}
    for h in c.hosts:
        h.healthy = False
    c.rebuild()
    assert c.choose_host() is None
    assert c.cx_none_healthy.value == 1


def test_cluster_runtime_all_unhealthy_panics_by_default() -> None:
    # Envoy's default panic threshold (50 %): with every host unhealthy the
    # balancer uses all of them, counting lb_healthy_panic per choice.
    c = runtime("round_robin", 1, 1, 1)
    for h in c.hosts:
        h.healthy = False
    c.rebuild()
    assert {c.choose_host() for _ in range(30)} == set(c.hosts)
    assert c.cx_none_healthy.value == 0
    assert c.lb_healthy_panic.value == 30
