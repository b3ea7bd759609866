"""Cluster membership as data: host-set diffs and DNS refresh timing.

Pure functions and small state machines, no I/O, no trio, no clock: the
discovery tasks (`upstream.discovery`) feed them resolver answers and file
contents and apply what they return through `ClusterRuntime.set_endpoints`.

- `diff_endpoints(old, new)`: which hosts join, leave, or stay with a new
  weight, priority or EDS health status. A host is its `ip:port`; the same address listed twice
  is one host (the first listing wins).
- `dns_endpoints(targets, answers)`: a strict_dns cluster's host set from the
  addresses resolved for each of its configured names (each address is a
  host with the weight and priority of the endpoint that named it).
- `RefreshSchedule`: when the next lookup runs, as Envoy schedules it:
  `dns_refresh_rate` after a success, or the records' smallest TTL with
  `respect_dns_ttl` (a TTL of 0 keeps the refresh rate); after a failure
  `dns_failure_refresh_rate` as a jittered exponential back-off (a delay
  drawn from [0, b), b doubling from the base up to the max, as Envoy's
  JitteredExponentialBackOffStrategy) or, when that is unset, the refresh
  rate. A success resets the back-off.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import attrs

from trioproxy.config import DnsDiscovery, Endpoint, SocketAddress

__all__ = [
    "MembershipDiff",
    "RefreshSchedule",
    "diff_endpoints",
    "dns_endpoints",
    "unique_endpoints",
]


@attrs.frozen(kw_only=True)
class MembershipDiff:
    """What changes from one host set to the next, keyed by address."""

    added: tuple[Endpoint, ...] = ()
    removed: tuple[SocketAddress, ...] = ()
    # Hosts that stay, with a new weight, priority or EDS health status.
    updated: tuple[Endpoint, ...] = ()

    @property
    def membership_changed(self) -> bool:
        """Hosts joined or left (Envoy's `membership_change`)."""
        return bool(self.added or self.removed)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


def unique_endpoints(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """`endpoints` without repeated addresses (the first listing wins)."""
    seen: set[SocketAddress] = set()
    out: list[Endpoint] = []
    for ep in endpoints:
        if ep.address not in seen:
            seen.add(ep.address)
            out.append(ep)
    return tuple(out)


def diff_endpoints(old: Sequence[Endpoint], new: Sequence[Endpoint]) -> MembershipDiff:
    """The diff from host set `old` to `new` (both as endpoints)."""
    before = {ep.address: ep for ep in unique_endpoints(old)}
    after = unique_endpoints(new)
    added = tuple(ep for ep in after if ep.address not in before)
    keep = {ep.address for ep in after}
    removed = tuple(a for a in before if a not in keep)
    updated = tuple(ep for ep in after if ep.address in before and before[ep.address] != ep)
    return MembershipDiff(added=added, removed=removed, updated=updated)


def dns_endpoints(
    targets: Sequence[Endpoint], answers: Sequence[Sequence[str]]
) -> tuple[Endpoint, ...]:
    """strict_dns: every address resolved for target i (a name and port) is a
    host on that port, with the target's weight and priority."""
    return unique_endpoints(
        Endpoint(
            address=SocketAddress(host=ip, port=target.address.port),
            weight=target.weight,
            priority=target.priority,
            hostname=target.address.host,
        )
        for target, ips in zip(targets, answers, strict=True)
        for ip in ips
    )


class RefreshSchedule:
    """When a DNS cluster resolves next (see the module docstring).

    Args:
        config: the cluster's DNS settings.
        rng: draws the jittered failure back-off.
    """

    __slots__ = ("_backoff", "_config", "_rng")

    def __init__(self, config: DnsDiscovery, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._backoff = config.failure_refresh_base

    def after_success(self, ttl: float | None) -> float:
        """The delay after a lookup that answered; `ttl` is the smallest TTL
        of the records (None: no records)."""
        cfg = self._config
        self._backoff = cfg.failure_refresh_base
        if cfg.respect_dns_ttl and ttl:
            return float(ttl)
        return cfg.refresh_rate

    def after_failure(self) -> float:
        """The delay after a lookup that failed (timeout, SERVFAIL, REFUSED...)."""
        cfg = self._config
        base = cfg.failure_refresh_base
        if base is None or self._backoff is None:
            return cfg.refresh_rate
        cap = cfg.failure_refresh_max if cfg.failure_refresh_max is not None else 10 * base
        current = self._backoff
        self._backoff = cap if current > cap / 2 else current * 2
        return min(self._rng.uniform(0, current), cap)
