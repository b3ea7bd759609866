"""Filter-chain selection: Envoy's filter_chain_match, most specific match wins.

Rules (Envoy's listener docs, "Filter chain match"): the criteria are
applied one after another in this order

    destination port → destination IP → server name (SNI) →
    transport protocol → application protocols (ALPN) → source IP → source port

and at each step only the chains that match *most specifically* survive:
a chain that names the criterion and matches beats a chain that leaves it
empty, and an empty one matches anything. If no chain survives a step, the
connection has no matching chain (Envoy does not backtrack to an earlier
step's less specific chains). Specificity within a step:

- server names: an exact name beats any wildcard; a longer wildcard suffix
  beats a shorter one (`*.b.example.com` beats `*.example.com`);
- IP ranges: the longest matching prefix wins;
- ports, transport protocol, ALPN: named-and-matching beats empty.

Pure logic, no I/O; the compiler already rejected chains with identical
matches, so at most one chain is left at the end.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs

from trioproxy.config import FilterChainMatch

__all__ = ["ChainSelector", "ConnectionFacts"]

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class ConnectionFacts:
    """What chain matching looks at."""

    destination_ip: str = ""
    destination_port: int = 0
    server_name: str = ""
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    source_ip: str = ""
    source_port: int = 0


class _Compiled:
    __slots__ = ("dst_ranges", "exact_names", "match", "src_ranges", "wildcards")

    def __init__(self, match: FilterChainMatch) -> None:
        self.match = match
        self.dst_ranges = [ipaddress.ip_network(r, strict=False) for r in match.prefix_ranges]
        self.src_ranges = [
            ipaddress.ip_network(r, strict=False) for r in match.source_prefix_ranges
        ]
        names = [n.lower() for n in match.server_names]
        self.exact_names = {n for n in names if not n.startswith("*")}
        # "*.example.com" -> ".example.com"
        self.wildcards = [n[1:] for n in names if n.startswith("*.")]


def _ip_rank(ranges: list[Network], ip: str) -> int | None:
    """None: no match; 0: no ranges (matches anything); else 1 + prefix length."""
    if not ranges:
        return 0
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    best: int | None = None
    for net in ranges:
        if addr.version == net.version and addr in net:
            rank = 1 + net.prefixlen
            if best is None or rank > best:
                best = rank
    return best


def _name_rank(c: _Compiled, name: str) -> int | None:
    if not c.exact_names and not c.wildcards:
        return 0
    if not name:
        return None
    if name in c.exact_names:
        return 1 << 16
    best: int | None = None
    for suffix in c.wildcards:
        if name.endswith(suffix) and len(name) > len(suffix):
            rank = len(suffix)
            if best is None or rank > best:
                best = rank
    return best


def _rank_steps(facts: ConnectionFacts) -> list[Callable[[_Compiled], int | None]]:
    def dst_port(c: _Compiled) -> int | None:
        p = c.match.destination_port
        return 0 if p is None else (1 if p == facts.destination_port else None)

    def dst_ip(c: _Compiled) -> int | None:
        return _ip_rank(c.dst_ranges, facts.destination_ip)

    def server_name(c: _Compiled) -> int | None:
        return _name_rank(c, facts.server_name.lower())

    def transport(c: _Compiled) -> int | None:
        t = c.match.transport_protocol
        return 0 if not t else (1 if t == facts.transport_protocol else None)

    def alpn(c: _Compiled) -> int | None:
        wanted = c.match.application_protocols
        if not wanted:
            return 0
        return 1 if set(wanted) & set(facts.application_protocols) else None

    def src_ip(c: _Compiled) -> int | None:
        return _ip_rank(c.src_ranges, facts.source_ip)

    def src_port(c: _Compiled) -> int | None:
        ports = c.match.source_ports
        return 0 if not ports else (1 if facts.source_port in ports else None)

    return [dst_port, dst_ip, server_name, transport, alpn, src_ip, src_port]


class ChainSelector(Generic[T]):
    """Chooses one of `chains` (each with its `FilterChainMatch`) per connection."""

    def __init__(self, chains: Sequence[tuple[FilterChainMatch, T]]) -> None:
        self._chains = [(_Compiled(m), value) for m, value in chains]
        # One chain that matches everything: the common case, no work per connection.
        self._only: T | None = None
        if len(chains) == 1 and chains[0][0] == FilterChainMatch():
            self._only = chains[0][1]

    def select(self, facts: ConnectionFacts) -> T | None:
        if self._only is not None:
            return self._only
        candidates = self._chains
        for step in _rank_steps(facts):
            matching = [(r, c, v) for c, v in candidates if (r := step(c)) is not None]
            if not matching:
                return None
            best = max(r for r, _, _ in matching)
            candidates = [(c, v) for r, c, v in matching if r == best]
        return candidates[0][1] if candidates else None
