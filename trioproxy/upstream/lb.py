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
    host is picked proportionally less.

A balancer sees hosts through the `LbHost` protocol; it never does I/O.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["BALANCERS", "LbHost", "LoadBalancer", "register"]


class LbHost(Protocol):
    weight: int
    active_requests: int


class LoadBalancer:
    """Base: `choose()` returns a host or None when there is none."""

    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, choice_count: int = 2):
        self.hosts = list(hosts)
        self._rng = rng

    def choose(self) -> LbHost | None:
        raise NotImplementedError


BALANCERS: dict[str, Callable[..., LoadBalancer]] = {}


def register(name: str) -> Callable[[type[LoadBalancer]], type[LoadBalancer]]:
    def deco(cls: type[LoadBalancer]) -> type[LoadBalancer]:
        BALANCERS[name] = cls
        return cls

    return deco


@register("round_robin")
class RoundRobin(LoadBalancer):
    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, choice_count: int = 2):
        super().__init__(hosts, rng=rng)
        self._current = [0] * len(self.hosts)
        self._total = sum(h.weight for h in self.hosts)
        self._uniform = len({h.weight for h in self.hosts}) <= 1
        # Envoy starts round robin at a random offset per worker so that
        # workers do not all hit host 0 first.
        self._next = rng.randrange(len(self.hosts)) if self.hosts else 0

    def choose(self) -> LbHost | None:
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
    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, choice_count: int = 2):
        super().__init__(hosts, rng=rng)
        self._cum = list(itertools.accumulate(h.weight for h in self.hosts))

    def _pick(self) -> LbHost:
        # An integer draw in [0, total): host i owns [cum[i-1], cum[i]).
        x = self._rng.randrange(self._cum[-1])
        return self.hosts[bisect.bisect_right(self._cum, x)]

    def choose(self) -> LbHost | None:
        if not self.hosts:
            return None
        return self._pick()


@register("least_request")
class LeastRequest(LoadBalancer):
    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, choice_count: int = 2):
        super().__init__(hosts, rng=rng)
        self._choices = max(1, choice_count)
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
        weight = h.weight / (h.active_requests + 1)
        heapq.heappush(self._queue, (self._now + 1.0 / weight, next(self._order), i))

    def choose(self) -> LbHost | None:
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
