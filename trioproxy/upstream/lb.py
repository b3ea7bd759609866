"""Load balancers. Each picks one host from a cluster's healthy hosts.

Balancers register by policy name (`@register("round_robin")`); the cluster
manager looks the policy up in `BALANCERS` — there is no if/elif over kinds.

- round_robin: smooth weighted round robin (nginx's algorithm): over any
  window of sum(weights) picks, each host is picked exactly weight times,
  spread out rather than in bursts.
- random: a weighted random host.
- least_request: power of `choice_count` choices (Envoy's default 2): draw
  that many hosts (weighted) and take the one with the least
  active_requests / weight (Envoy weighs by weight/(active+1)^bias with
  bias 1.0; ordering by (active+1)/weight is the same ordering).

A balancer sees hosts through the `LbHost` protocol; it never does I/O.
"""

from __future__ import annotations

import bisect
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
        x = self._rng.random() * self._cum[-1]
        return self.hosts[bisect.bisect_right(self._cum, x)]

    def choose(self) -> LbHost | None:
        if not self.hosts:
            return None
        return self._pick()


@register("least_request")
class LeastRequest(Random):
    def __init__(self, hosts: Sequence[LbHost], *, rng: random.Random, choice_count: int = 2):
        super().__init__(hosts, rng=rng)
        self._choices = max(1, choice_count)

    def choose(self) -> LbHost | None:
        if not self.hosts:
            return None
        best = self._pick()
        for _ in range(self._choices - 1):
            h = self._pick()
            if (h.active_requests + 1) * best.weight < (best.active_requests + 1) * h.weight:
                best = h
        return best
