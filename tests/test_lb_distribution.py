"""Every policy's share of picks follows the host weights (Hypothesis over
weight lists), and least_request's `active_request_bias` (Envoy's
weight / (active + 1) ^ bias) changes how much load lowers a host's share.

Draws use seeded rngs and keys, so a run is reproducible; tolerances are
several standard deviations wide for the random policies, exact for the
deterministic schedules.
"""

from __future__ import annotations

import random
from collections import Counter

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.upstream.lb import BALANCERS, LeastRequest

WEIGHTS = st.lists(st.integers(1, 8), min_size=1, max_size=6)


@attrs.define(eq=False)
class FakeHost:
    address: str
    weight: int = 1
    active_requests: int = 0


def hosts(weights: list[int], active: list[int] | None = None) -> list[FakeHost]:
    return [
        FakeHost(f"10.1.0.{i}:80", w, active[i] if active else 0) for i, w in enumerate(weights)
    ]


def shares(policy: str, weights: list[int], n: int) -> list[float]:
    hs = hosts(weights)
    lb = BALANCERS[policy](hs, rng=random.Random(99), choice_count=2)
    keys = random.Random(7)
    c: Counter[int] = Counter()
    for _ in range(n):
        h = lb.choose(keys.getrandbits(64))
        c[hs.index(h)] += 1  # type: ignore[arg-type]
    return [c[i] / n for i in range(len(hs))]


@settings(max_examples=30, deadline=None)
@given(WEIGHTS)
def test_round_robin_and_weighted_least_request_are_exact(weights: list[int]) -> None:
    total = sum(weights)
    got = shares("round_robin", weights, 20 * total)
    assert got == [w / total for w in weights], (weights, got)
    if len(set(weights)) > 1:  # equal weights use P2C: random, checked below
        got = shares("least_request", weights, 20 * total)
        assert got == [w / total for w in weights], (weights, got)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(1, 6))
def test_idle_least_request_with_equal_weights_is_uniform(weight: int, n: int) -> None:
    draws = 6_000
    p = 1 / n
    sd = (p * (1 - p) / draws) ** 0.5
    for got in shares("least_request", [weight] * n, draws):
        assert abs(got - p) <= 5 * sd + 1e-9, (n, got)


@settings(max_examples=20, deadline=None)
@given(WEIGHTS)
def test_random_follows_weights(weights: list[int]) -> None:
    total = sum(weights)
    n = 8_000
    for got, w in zip(shares("random", weights, n), weights, strict=True):
        p = w / total
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(got - p) <= 5 * sd + 1e-9, (weights, got, p)


@settings(max_examples=10, deadline=None)
@given(WEIGHTS)
def test_hash_policies_follow_weights(weights: list[int]) -> None:
    total = sum(weights)
    for policy, tolerance in (("maglev", 0.03), ("ring_hash", 0.3)):
        for got, w in zip(shares(policy, weights, 6_000), weights, strict=True):
            p = w / total
            # Maglev's table is within a slot or so of the weights; the ring's
            # arcs vary with the number of points per host (>= ~170 here).
            assert abs(got - p) <= tolerance * p + 0.03, (policy, weights, got, p)


# --------------------------------------------------------------------------- bias


def _lr_shares(bias: float, weights: list[int], active: list[int], n: int = 600) -> list[float]:
    lb = LeastRequest(hosts(weights, active), rng=random.Random(0), active_request_bias=bias)
    c = Counter(lb.choose().address for _ in range(n))  # type: ignore[union-attr]
    return [c[f"10.1.0.{i}:80"] / n for i in range(len(weights))]


def test_bias_one_is_weight_over_active_plus_one() -> None:
    # 4 / (3 + 1) = 1 vs 1 / 1 = 1: equal shares.
    assert _lr_shares(1.0, [4, 1], [3, 0]) == [0.5, 0.5]


def test_bias_zero_ignores_load() -> None:
    # Only the weights count: 4 to 1 however busy the heavy host is.
    assert _lr_shares(0.0, [4, 1], [3, 0]) == [0.8, 0.2]


def test_bias_two_punishes_load_harder() -> None:
    # 4 / (1 + 1)^2 = 1 vs 1: equal; with bias 1 it would be 2 to 1.
    assert _lr_shares(2.0, [4, 1], [1, 0]) == [0.5, 0.5]
    got = _lr_shares(1.0, [4, 1], [1, 0])
    assert abs(got[0] - 2 / 3) < 0.01
