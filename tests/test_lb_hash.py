"""The hash-based balancers (ring_hash, maglev) in `trioproxy.upstream.lb`,
driven directly: ring and table construction as Envoy builds them, weights,
stickiness, and how many keys move when a host joins or leaves.

Shares of the key space are measured exactly where possible (the arcs of
the ring, the slots of the Maglev table) and otherwise over a fixed set of
64-bit keys from a seeded rng, so every check is deterministic.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.upstream.lb import (
    BALANCERS,
    DEFAULT_MAGLEV_TABLE_SIZE,
    Maglev,
    RingHash,
    build_maglev,
    build_ring,
    hash64,
)

_KEY_RNG = random.Random(2024)
KEYS = [_KEY_RNG.getrandbits(64) for _ in range(20_000)]


@attrs.define(eq=False)
class FakeHost:
    address: str
    weight: int = 1
    active_requests: int = 0

    def __repr__(self) -> str:
        return self.address


def hosts(*weights: int) -> list[FakeHost]:
    return [FakeHost(f"10.0.{i // 250}.{i % 250}:8080", w) for i, w in enumerate(weights)]


def ring_shares(members: list[tuple[str, int]], minimum: int = 1024) -> list[float]:
    """The exact share of the 64-bit key space each host owns on the ring."""
    points, owners = build_ring(members, minimum, 8 * 1024 * 1024)
    share = [0] * len(members)
    prev = points[-1] - (1 << 64)  # the first point owns the wrap-around arc
    for p, o in zip(points, owners, strict=True):
        share[o] += p - prev
        prev = p
    return [s / (1 << 64) for s in share]


def assignment(lb: RingHash | Maglev) -> list[str]:
    return [lb.choose(k).address for k in KEYS]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the hash


def test_hash64_is_stable_across_processes() -> None:
    # Never Python's salted hash(): another process with another seed agrees.
    code = "from trioproxy.upstream.lb import hash64; print(hash64(b'user-42'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == hash64(b"user-42")
    assert hash64(b"abc") == 6455300059550759896  # pinned: changing it moves every key
    assert 0 <= hash64(b"") < 1 << 64


def test_registered() -> None:
    assert BALANCERS["ring_hash"] is RingHash
    assert BALANCERS["maglev"] is Maglev
    assert RingHash.hash_based and Maglev.hash_based
    assert not BALANCERS["round_robin"].hash_based  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- ring construction


@pytest.mark.parametrize(
    ("weights", "points"),
    [
        # Envoy: scale = ceil(min_w * 1024) / min_w with normalised weights.
        ((1,) * 10, [103] * 10),  # ceil(102.4) = 103 each, 1030 in all
        ((1, 1, 1, 1), [256] * 4),
        ((1, 2), [342, 684]),  # min_w = 1/3: ceil(341.3) = 342
        ((1, 3), [256, 768]),
        ((5,), [1024]),
    ],
)
def test_ring_points_per_host_follow_envoy(weights: tuple[int, ...], points: list[int]) -> None:
    members = [(h.address, h.weight) for h in hosts(*weights)]
    ring, owners = build_ring(members, 1024, 8 * 1024 * 1024)
    assert len(ring) == sum(points)
    assert list(ring) == sorted(ring)
    assert [Counter(owners)[i] for i in range(len(weights))] == points


def test_ring_points_are_hashes_of_address_underscore_index() -> None:
    ring, _ = build_ring([("127.0.0.1:8081", 1)], 4, 100)
    assert sorted(ring) == sorted(hash64(f"127.0.0.1:8081_{i}".encode()) for i in range(4))


def test_ring_is_capped_by_maximum_ring_size() -> None:
    members = [(h.address, h.weight) for h in hosts(1, 1000)]
    ring, _ = build_ring(members, 1024, 1500)
    assert len(ring) == 1500
    assert len(build_ring(members, 1024, 8 * 1024 * 1024)[0]) == 2 * 1001


def test_empty_hash_balancers_give_none() -> None:
    for cls in (RingHash, Maglev):
        lb = cls([], rng=random.Random(0))
        assert lb.choose(123) is None
        assert lb.choose(None) is None


# --------------------------------------------------------------------------- weights


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_ring_hash_shares_follow_weights(weights: list[int]) -> None:
    total = sum(weights)
    members = [(h.address, h.weight) for h in hosts(*weights)]
    for share, w in zip(ring_shares(members), weights, strict=True):
        # Each host has >= ~170 points: its arcs sum to its weight share
        # within a few standard deviations (~1/sqrt(points) relative).
        assert abs(share - w / total) < 0.3 * w / total + 0.01, (weights, share)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_maglev_table_follows_weights(weights: list[int]) -> None:
    total = sum(weights)
    members = [(h.address, h.weight) for h in hosts(*weights)]
    table = build_maglev(members, DEFAULT_MAGLEV_TABLE_SIZE)
    counts = Counter(table)
    for i, w in enumerate(weights):
        assert abs(counts[i] / DEFAULT_MAGLEV_TABLE_SIZE - w / total) < 0.01, (weights, counts)


def test_maglev_equal_weights_split_the_table_evenly() -> None:
    table = build_maglev([(h.address, 1) for h in hosts(1, 1, 1, 1, 1, 1, 1)], 65537)
    counts = Counter(table).values()
    assert max(counts) - min(counts) <= 1


def test_request_keys_land_by_weight() -> None:
    # Through choose(): a host of weight 3 gets about three times the keys.
    for cls in (RingHash, Maglev):
        c = Counter(assignment(cls(hosts(3, 1), rng=random.Random(0))))
        share = c[hosts(3, 1)[0].address] / len(KEYS)
        assert 0.70 < share < 0.80, (cls, share)


# --------------------------------------------------------------------------- stickiness


@settings(max_examples=50, deadline=None)
@given(
    key=st.integers(0, (1 << 64) - 1), weights=st.lists(st.integers(1, 4), min_size=1, max_size=5)
)
def test_same_key_same_host(key: int, weights: list[int]) -> None:
    for cls in (RingHash, Maglev):
        a = cls(hosts(*weights), rng=random.Random(1))
        b = cls(hosts(*weights), rng=random.Random(2))  # another worker
        first = a.choose(key)
        assert first is not None
        assert all(a.choose(key) is first for _ in range(3))
        assert b.choose(key).address == first.address  # type: ignore[union-attr, attr-defined]


def test_ring_lookup_takes_the_first_point_at_or_after_the_hash() -> None:
    lb = RingHash(hosts(1, 1, 1), rng=random.Random(0), minimum_ring_size=6)
    points, owners = lb._points, lb._owners
    for i, p in enumerate(points):
        assert lb.choose(p) is lb.hosts[owners[i]]
        assert lb.choose(p - 1) is lb.hosts[owners[i]]
    # Past the last point: wrap to the first.
    assert lb.choose(points[-1] + 1) is lb.hosts[owners[0]]


def test_no_hash_picks_a_random_host() -> None:
    for cls in (RingHash, Maglev):
        lb = cls(hosts(1, 1, 1, 1), rng=random.Random(5))
        seen = Counter(lb.choose(None).address for _ in range(400))  # type: ignore[union-attr]
        assert len(seen) == 4 and min(seen.values()) > 50


def test_attempt_moves_away_from_the_first_host() -> None:
    # A retry (attempt > 0) asks for another host, as Envoy's retry predicate.
    for cls in (RingHash, Maglev):
        lb = cls(hosts(1, 1, 1, 1), rng=random.Random(0))
        differs = sum(lb.choose(k, 1) is not lb.choose(k) for k in KEYS[:2000])
        assert differs > 1000, (cls, differs)
        assert all(lb.choose(k, 0) is lb.choose(k) for k in KEYS[:100])


# --------------------------------------------------------------------------- movement


@settings(max_examples=12, deadline=None)
@given(n=st.integers(3, 10), data=st.data())
def test_maglev_moves_about_one_nth_when_a_host_leaves(n: int, data: st.DataObject) -> None:
    every = hosts(*([1] * n))
    gone = data.draw(st.integers(0, n - 1))
    before = assignment(Maglev(every, rng=random.Random(0)))
    after = assignment(Maglev(every[:gone] + every[gone + 1 :], rng=random.Random(0)))
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(KEYS)
    # The removed host's keys (~1/n) must move; Maglev moves a few more.
    assert 1 / n - 0.03 < moved < 1 / n + 0.03, (n, moved)
    # ...and none of the keys left on the removed host.
    assert every[gone].address not in after


@settings(max_examples=12, deadline=None)
@given(n=st.integers(2, 9))
def test_maglev_moves_about_one_nth_when_a_host_joins(n: int) -> None:
    every = hosts(*([1] * (n + 1)))
    before = assignment(Maglev(every[:n], rng=random.Random(0)))
    after = assignment(Maglev(every, rng=random.Random(0)))
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    share = len(moved) / len(KEYS)
    assert 1 / (n + 1) - 0.03 < share < 1 / (n + 1) + 0.03, (n, share)
    newcomer = every[n].address
    assert sum(b == newcomer for _, b in moved) / max(1, len(moved)) > 0.85


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.integers(2, 9), min_size=3, max_size=9), data=st.data())
def test_ring_hash_moves_only_the_leaving_hosts_keys(
    weights: list[int], data: st.DataObject
) -> None:
    # With a stable number of points per host (minimum_ring_size 1: each host
    # gets weight / min weight points, the lightest host staying), Ketama
    # moves exactly the keys of the host that left, and nothing else.
    every = [*hosts(*weights), FakeHost("192.168.0.1:1", 1)]
    gone = data.draw(st.integers(0, len(weights) - 1))
    rest = every[:gone] + every[gone + 1 :]
    before = assignment(RingHash(every, rng=random.Random(0), minimum_ring_size=1))
    after = assignment(RingHash(rest, rng=random.Random(0), minimum_ring_size=1))
    for a, b in zip(before, after, strict=True):
        assert (a == b) != (a == every[gone].address)
    # ...and adding it back restores every key.
    assert assignment(RingHash(every, rng=random.Random(0), minimum_ring_size=1)) == before


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 10), data=st.data())
def test_ring_hash_default_size_moves_about_one_nth(n: int, data: st.DataObject) -> None:
    # With Envoy's default sizing, ceil(1024 / n) points per host: a host
    # leaving moves its own keys plus the keys taken by the points the rest
    # gain from the rescale, each new point taking about one point's arc.
    every = hosts(*([1] * n))
    gone = data.draw(st.integers(0, n - 1))
    rest = every[:gone] + every[gone + 1 :]
    before = assignment(RingHash(every, rng=random.Random(0)))
    after = assignment(RingHash(rest, rng=random.Random(0)))
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(KEYS)
    per_host_before = -(-1024 // n)
    per_host_after = -(-1024 // (n - 1))
    new_points = (per_host_after - per_host_before) * (n - 1) / (per_host_after * (n - 1))
    own = sum(a == every[gone].address for a in before) / len(KEYS)
    assert own - 0.01 <= moved < own + new_points + 0.03, (n, moved, own, new_points)
    assert moved < 1 / n + new_points + 0.08
