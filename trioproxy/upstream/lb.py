"""Load balancers. Each picks one host from a cluster's healthy hosts.

Balancers register by policy name (`@register("round_robin")`); the cluster
manager looks the policy up in `BALANCERS` — there is no if/elif over kinds.

- round_robin: smooth weighted round robin (nginx's algorithm): over any
  window of sum(weights) picks, each host is picked exactly weight times,
  spread out rather than in bursts. Equal weights rotate from a random
  starting host (Envoy does the same so that workers do not all start on
  host 0).
- random: a weighted random host. (Envoy's RANDOM ignores endpoint weights;
  we honour them, as the rest of the weighted policies do.)
- least_request, as Envoy does it (load_balancers.rst, "Weighted least
  request"):
  * all weights equal: power of `choice_count` choices (Envoy's default 2):
    draw that many hosts uniformly at random, with replacement, and take the
    one with the fewest active requests (the first drawn wins a tie);
  * weights differ: an earliest-deadline-first schedule in which a host's
    weight is recomputed each time it is picked as
    `weight / (active_requests + 1) ** active_request_bias` (bias 1.0).
    With no load this gives exactly the configured proportions; a loaded
    host is picked proportionally less. `active_request_bias` (Envoy's
    default 1.0) is configurable; 0 ignores load entirely.
- ring_hash (Ketama, as Envoy's RingHashLoadBalancer): each host gets points
  on a 64-bit ring in proportion to its weight, at least `minimum_ring_size`
  points in all (scaled so the lightest host gets a whole number of points),
  at most `maximum_ring_size`. A point's hash is that of "<address>_<i>". A
  request hash picks the first point at or after it (wrapping round).
- maglev (as Envoy's MaglevLoadBalancer, the paper's listing 1): a lookup
  table of `table_size` (prime, default 65537) slots filled from per-host
  permutations (offset and skip from two hashes of the address); a host of
  weight w claims a slot in w / max(weights) of the rounds. A request hash
  picks slot `hash % table_size`.

Hash-based balancers take the request's hash (`choose(lb_hash, attempt)`); with
no hash they draw a random one (Envoy does the same). `attempt` > 0 moves the
lookup as Envoy's retry host predicate does (next ring point; hash xor'ed for
Maglev), so a retry can reach another host. Others ignore both arguments.

Envoy hashes with xxHash64, which the standard library lacks; we use BLAKE2b
(`hashlib.blake2b`, 8 or 16 bytes of digest), deterministic across processes
and machines (never Python's salted `hash()`); see docs/decisions.md.

`PriorityBalancer` puts one balancer per priority level together as Envoy's
LoadBalancerBase does: per-level health = min(100, 1.4 x healthy / total),
load spilling from priority 0 down as health drops, normalised when total
health is below 100, and a panic threshold (50 %) below which a level
balances across all its hosts, healthy or not.

Rings and tables are built once per rebuild (and cached by membership), never
per request. A balancer sees hosts through the `LbHost` protocol; this module
never does I/O.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
import random
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Final, Protocol

__all__ = [
    "BALANCERS",
    "DEFAULT_MAGLEV_TABLE_SIZE",
    "DEFAULT_MAX_RING_SIZE",
    "DEFAULT_MIN_RING_SIZE",
    "LbHost",
    "LoadBalancer",
    "Maglev",
    "PriorityBalancer",
    "RingHash",
    "hash64",
    "priority_loads",
    "register",
]

# Envoy's defaults (cluster.proto RingHashLbConfig, MaglevLbConfig).
DEFAULT_MIN_RING_SIZE: Final = 1024
DEFAULT_MAX_RING_SIZE: Final = 8 * 1024 * 1024
DEFAULT_MAGLEV_TABLE_SIZE: Final = 65537
# Envoy's kDefaultOverProvisioningFactor: 1.4, in percent.
OVERPROVISIONING_FACTOR: Final = 140

_MASK64: Final = (1 << 64) - 1


class LbHost(Protocol):
    weight: int
    active_requests: int


class HashHost(LbHost, Protocol):
    """A host for the hash-based balancers: hashed by its address."""

    address: str


def hash64(data: bytes) -> int:
    """A 64-bit hash, the same in every process: BLAKE2b with an 8-byte digest."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class LoadBalancer:
    """Base: `choose()` returns a host or None when there is none.

    Constructors take the hosts, the rng and keyword options; each policy
    reads the options it knows (`choice_count`, `active_request_bias`,
    `minimum_ring_size`, `maximum_ring_size`, `table_size`) and ignores the rest.
    """

    hash_based: bool = False

    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, **options: object):
        self.hosts = list(hosts)
        self._rng = rng

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        raise NotImplementedError


BALANCERS: dict[str, Callable[..., LoadBalancer]] = {}


def register(name: str) -> Callable[[type[LoadBalancer]], type[LoadBalancer]]:
    def deco(cls: type[LoadBalancer]) -> type[LoadBalancer]:
        BALANCERS[name] = cls
        return cls

    return deco


@register("round_robin")
class RoundRobin(LoadBalancer):
    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, **options: object):
        super().__init__(hosts, rng=rng)
        self._current = [0] * len(self.hosts)
        self._total = sum(h.weight for h in self.hosts)
        self._uniform = len({h.weight for h in self.hosts}) <= 1
        # Envoy starts round robin at a random offset per worker so that
        # workers do not all hit host 0 first.
        self._next = rng.randrange(len(self.hosts)) if self.hosts else 0

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        hosts = self.hosts
        if not hosts:
            return None
        if self._uniform:
            i = self._next
            self._next = (i + 1) % len(hosts)
            return hosts[i]
        best = -1
        current = self._current
        for i, h in enumerate(hosts):
            current[i] += h.weight
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= self._total
        return hosts[best]


@register("random")
class Random(LoadBalancer):
    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, **options: object):
        super().__init__(hosts, rng=rng)
        self._cum = list(itertools.accumulate(h.weight for h in self.hosts))

    def _pick(self) -> LbHost:
        # An integer draw in [0, total): host i owns [cum[i-1], cum[i]).
        x = self._rng.randrange(self._cum[-1])
        return self.hosts[bisect.bisect_right(self._cum, x)]

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        if not self.hosts:
            return None
        return self._pick()


@register("least_request")
class LeastRequest(LoadBalancer):
    def __init__(
        self,
        hosts: Sequence[LbHost],
        *,
        rng: random.Random,
        choice_count: int = 2,
        active_request_bias: float = 1.0,
        **options: object,
    ):
        super().__init__(hosts, rng=rng)
        self._choices = max(1, choice_count)
        self._bias = active_request_bias
        self._uniform = len({h.weight for h in self.hosts}) <= 1
        # EDF schedule for unequal weights: (deadline, insertion order, host index).
        # The insertion order breaks deadline ties first-in first-out, as
        # Envoy's EdfScheduler does.
        self._now = 0.0
        self._order = itertools.count()
        self._queue: list[tuple[float, int, int]] = []
        if not self._uniform:
            for i in range(len(self.hosts)):
                self._schedule(i)

    def _schedule(self, i: int) -> None:
        h = self.hosts[i]
        bias = self._bias
        if bias == 1.0:
            weight = h.weight / (h.active_requests + 1)
        elif bias == 0.0:
            weight = float(h.weight)
        else:
            weight = h.weight / (h.active_requests + 1) ** bias
        heapq.heappush(self._queue, (self._now + 1.0 / weight, next(self._order), i))

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        hosts = self.hosts
        if not hosts:
            return None
        if not self._uniform:
            deadline, _, i = heapq.heappop(self._queue)
            self._now = deadline
            self._schedule(i)
            return hosts[i]
        n = len(hosts)
        best = hosts[self._rng.randrange(n)]
        for _ in range(self._choices - 1):
            h = hosts[self._rng.randrange(n)]
            if h.active_requests < best.active_requests:
                best = h
        return best


# --------------------------------------------------------------------------- hash based

# Rings and Maglev tables, by (kind, sizes, ((address, weight), ...)), so a
# host that flaps back to a membership seen before costs no rebuild. Bounded
# by the number of slots held (a ring point is 12 bytes, a table slot 4).
_TABLE_CACHE: OrderedDict[tuple[object, ...], tuple[array[int], array[int]]] = OrderedDict()
_TABLE_CACHE_SLOTS: Final = 4 * 1024 * 1024
_table_cache_used = 0


def _cached(
    key: tuple[object, ...], build: Callable[[], tuple[array[int], array[int]]]
) -> tuple[array[int], array[int]]:
    global _table_cache_used
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    built = build()
    size = len(built[1])
    if size <= _TABLE_CACHE_SLOTS:
        _TABLE_CACHE[key] = built
        _table_cache_used += size
        while _table_cache_used > _TABLE_CACHE_SLOTS:
            _, old = _TABLE_CACHE.popitem(last=False)
            _table_cache_used -= len(old[1])
    return built


class _HashBalancer(LoadBalancer):
    hash_based = True

    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, **options: object):
        super().__init__(hosts, rng=rng)
        self._members = tuple((h.address, h.weight) for h in hosts)  # type: ignore[attr-defined]

    def random_hash(self) -> int:
        return self._rng.getrandbits(64)


@register("ring_hash")
class RingHash(_HashBalancer):
    """Envoy's RingHashLoadBalancer (Ketama), with BLAKE2b for xxHash64."""

    def __init__(
        self,
        hosts: Sequence[LbHost],
        *,
        rng: random.Random,
        minimum_ring_size: int = DEFAULT_MIN_RING_SIZE,
        maximum_ring_size: int = DEFAULT_MAX_RING_SIZE,
        **options: object,
    ):
        super().__init__(hosts, rng=rng)
        key = ("ring", minimum_ring_size, maximum_ring_size, self._members)
        self._points, self._owners = _cached(
            key, lambda: build_ring(self._members, minimum_ring_size, maximum_ring_size)
        )

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        points = self._points
        n = len(points)
        if n == 0:
            return None
        h = self.random_hash() if lb_hash is None else lb_hash & _MASK64
        # The first point at or after h, wrapping round (ketama_get_server).
        i = bisect.bisect_left(points, h)
        if i == n:
            i = 0
        if attempt:
            # Envoy: behave as if the host at this point were not on the ring.
            i = (i + attempt) % n
        return self.hosts[self._owners[i]]


def build_ring(
    members: Sequence[tuple[str, int]], minimum_ring_size: int, maximum_ring_size: int
) -> tuple[array[int], array[int]]:
    """(sorted point hashes, owner index per point), as Envoy's Ring constructor.

    The scale gives the lightest host a whole number of points while the ring
    has at least `minimum_ring_size`; running sums hand each host its share
    of a fractional count in a stable way. Capped at `maximum_ring_size`.
    """
    if not members:
        return array("Q"), array("I")
    # Exact rationals where Envoy uses doubles, so that a host's share does
    # not depend on rounding in the running sums of the hosts before it.
    total = sum(w for _, w in members)
    min_weight = Fraction(min(w for _, w in members), total)
    scale = min(math.ceil(min_weight * minimum_ring_size) / min_weight, Fraction(maximum_ring_size))
    entries: list[tuple[int, int]] = []
    current = 0
    cumulative = 0
    for index, (address, weight) in enumerate(members):
        prefix = address.encode() + b"_"
        cumulative += weight
        target = math.ceil(scale * cumulative / total)
        i = 0
        while current < target:
            entries.append((hash64(prefix + str(i).encode()), index))
            i += 1
            current += 1
    entries.sort()
    return array("Q", (h for h, _ in entries)), array("I", (i for _, i in entries))


@register("maglev")
class Maglev(_HashBalancer):
    """Envoy's MaglevLoadBalancer: a lookup table of `table_size` slots."""

    def __init__(
        self,
        hosts: Sequence[LbHost],
        *,
        rng: random.Random,
        table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
        **options: object,
    ):
        super().__init__(hosts, rng=rng)
        self._size = table_size
        key = ("maglev", table_size, self._members)
        _, self._table = _cached(key, lambda: (array("Q"), build_maglev(self._members, table_size)))

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        if not self.hosts:
            return None
        h = self.random_hash() if lb_hash is None else lb_hash & _MASK64
        if attempt:
            # Envoy: flip most bits so a retry lands far from the first slot.
            h ^= (_MASK64 - attempt + 1) & _MASK64
        return self.hosts[self._table[h % self._size]]


def build_maglev(members: Sequence[tuple[str, int]], table_size: int) -> array[int]:
    """The table (host index per slot), as Envoy's OriginalMaglevTable.

    Each host walks its permutation `(offset + skip * j) % M` from two
    hashes of its address; round by round each host (a lighter one only in
    w / max(w) of the rounds) takes its next free slot until the table is full.
    """
    table = array("I", [0]) * table_size
    if not members:
        return table
    m = table_size
    taken = bytearray(m)
    offsets: list[int] = []
    skips: list[int] = []
    for address, _ in members:
        digest = hashlib.blake2b(address.encode(), digest_size=16).digest()
        offsets.append(int.from_bytes(digest[:8], "little") % m)
        skips.append(int.from_bytes(digest[8:], "little") % (m - 1) + 1)
    weights = [w for _, w in members]
    max_weight = max(weights)
    # The next permutation position of each host, kept as the slot itself.
    slots = list(offsets)
    targets = [0] * len(members)
    filled = 0
    iteration = 1
    n = len(members)
    while filled < m:
        for i in range(n):
            if iteration * weights[i] < targets[i]:
                continue
            targets[i] += max_weight
            c = slots[i]
            skip = skips[i]
            while taken[c]:
                c += skip
                if c >= m:
                    c -= m
            taken[c] = 1
            table[c] = i
            c += skip
            slots[i] = c - m if c >= m else c
            filled += 1
            if filled == m:
                break
        iteration += 1
    return table


# --------------------------------------------------------------------------- priorities


def priority_loads(
    levels: Sequence[tuple[int, int]], panic_threshold: float
) -> tuple[list[int], list[bool]]:
    """Envoy's per-priority load (percent, summing to 100) and panic flags,
    from (healthy, total) host counts per priority level.

    Health per level is min(100, 140 x healthy / total) (overprovisioning
    factor 1.4). Load goes to levels in order of priority, each taking its
    health scaled by 100 / min(100, sum of health); rounding leftovers go to
    the first level with health. A level is in panic when the levels together
    are short of 100 and its own healthy share is below `panic_threshold`;
    when every level panics, load follows the host counts instead.
    """
    n = len(levels)
    health = [
        min(100, OVERPROVISIONING_FACTOR * healthy // total) if total else 0
        for healthy, total in levels
    ]
    loads = [0] * n
    normalized = min(100, sum(health))
    if normalized:
        remaining = 100
        first = -1
        for i, h in enumerate(health):
            if first < 0 and h > 0:
                first = i
            loads[i] = min(remaining, h * 100 // normalized)
            remaining -= loads[i]
        loads[first] += remaining
    elif n:
        loads[0] = 100
    if panic_threshold <= 0 or normalized == 100 or not n:
        return loads, [False] * n
    panic = [total == 0 or 100.0 * healthy / total < panic_threshold for healthy, total in levels]
    if all(panic):
        everyone = sum(total for _, total in levels)
        if everyone:
            first = next(i for i, (_, total) in enumerate(levels) if total)
            loads = [100 * total // everyone for _, total in levels]
            loads[first] += 100 - sum(loads)
    return loads, panic


class PriorityBalancer:
    """One balancer per priority level and the choice of level (Envoy's
    LoadBalancerBase::choosePriority: `hash % 100` against the cumulative
    loads; a random draw for balancers that do not hash).

    Args:
        levels: per priority (0 first), (all hosts, healthy hosts).
        factory: the policy's balancer class.
        panic_threshold: Envoy's healthy_panic_threshold in percent (0: off).
        on_panic: called for every choice made in a level in panic
            (the `lb_healthy_panic` counter).
        options: passed to `factory`.
    """

    def __init__(
        self,
        levels: Sequence[tuple[Sequence[LbHost], Sequence[LbHost]]],
        factory: Callable[..., LoadBalancer],
        *,
        rng: random.Random,
        panic_threshold: float = 50.0,
        on_panic: Callable[[], None] = lambda: None,
        **options: object,
    ) -> None:
        self._rng = rng
        self._on_panic = on_panic
        levels = list(levels) or [((), ())]
        counts = [(len(healthy), len(every)) for every, healthy in levels]
        self.loads, self.panic = priority_loads(counts, panic_threshold)
        self.balancers = [
            factory(list(every if panic else healthy), rng=rng, **options)
            for (every, healthy), panic in zip(levels, self.panic, strict=True)
        ]
        self.hash_based = self.balancers[0].hash_based
        # Level by (hash % 100): Envoy's cumulative walk, precomputed.
        table = bytearray(100)
        level, upto = 0, self.loads[0]
        for x in range(100):
            while x + 1 > upto and level + 1 < len(self.loads):
                level += 1
                upto += self.loads[level]
            table[x] = level
        self._level_of = bytes(table)
        self._single = self.balancers[0] if len(self.balancers) == 1 else None
        # (An empty cluster "panics" too, but there is nothing to count.)
        self._single_panic = len(self.balancers) == 1 and self.panic[0] and bool(levels[0][0])

    def choose(self, lb_hash: int | None = None, attempt: int = 0) -> LbHost | None:
        single = self._single
        if single is not None:
            if self._single_panic:
                self._on_panic()
            return single.choose(lb_hash, attempt)
        if self.hash_based:
            if lb_hash is None:
                lb_hash = self._rng.getrandbits(64)
            level = self._level_of[lb_hash % 100]
        else:
            level = self._level_of[self._rng.randrange(100)]
        if self.panic[level]:
            self._on_panic()
        return self.balancers[level].choose(lb_hash, attempt)
