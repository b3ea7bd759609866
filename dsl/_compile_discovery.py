"""Compiling a cluster's discovery: `type=`, the DNS options of `cluster()`
and `.eds_file()`, checked against the cluster's endpoints.

- `type` unsaid: "eds" with `.eds_file()`, "strict_dns" when an endpoint
  is a DNS name, else "static".
- static: every endpoint is an IP address (Envoy's STATIC takes no names).
- strict_dns: one or more endpoints, names or IPs; logical_dns: exactly one.
- eds: no endpoints of its own; `.eds_file()` names the file.
- DNS options only on DNS clusters; `.eds_file()` only on an eds cluster.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Final, get_args

from trioproxy.config import DnsDiscovery, EdsFile, Endpoint, Location, SocketAddress
from trioproxy.config.graph import ClusterType, DnsLookupFamily

from ._compile_tls import _is_ip, resolve_path
from ._values import BadValue, parse_endpoint_address

if TYPE_CHECKING:
    from ._builders import ClusterBuilder
    from ._compile import _Compiler

__all__ = ["discovery_options"]

_DNS_TYPES: Final = ("strict_dns", "logical_dns")


def discovery_options(
    c: _Compiler, cb: ClusterBuilder, name: str, endpoints: list[Endpoint]
) -> dict[str, object]:
    """The `Cluster` fields `type`, `dns` and `eds_file`, checked."""
    loc = cb._location
    given = cb._type
    if given is None:
        # Unsaid: eds with a file, strict_dns if an endpoint is a DNS name
        # (resolved, refreshed), else static.
        kind: ClusterType = "static"
        if cb._eds is not None:
            kind = "eds"
        elif any(not _is_ip(ep.address.host) for ep in endpoints):
            kind = "strict_dns"
        tloc = loc
    else:
        kind = c.choice(given.value, get_args(ClusterType), "cluster type", given.location)
        tloc = given.location
    what = f"cluster {name!r}"
    if kind == "static":
        for ep in endpoints:
            if not _is_ip(ep.address.host):
                c.error(
                    tloc,
                    f"{what}: endpoint {ep.address} is a DNS name, but a static cluster"
                    " takes IP addresses (use type='strict_dns' or type='logical_dns')",
                )
    elif kind in _DNS_TYPES:
        if not endpoints and not cb._endpoints:
            c.error(tloc, f"{what}: a {kind} cluster needs an endpoint 'name:port' to resolve")
        if kind == "logical_dns" and len(cb._endpoints) > 1:
            c.error(tloc, f"{what}: a logical_dns cluster takes exactly one endpoint")
    elif kind == "eds":
        if cb._endpoints:
            c.error(tloc, f"{what}: an eds cluster takes its endpoints from .eds_file(...)")
        if cb._eds is None:
            c.error(tloc, f"{what}: an eds cluster needs .eds_file(path)")
    dns = None
    if cb._dns is not None and kind not in _DNS_TYPES:
        c.error(
            cb._dns.location,
            f"{what}: DNS options ({', '.join(cb._dns.value)}) apply only to strict_dns"
            f" and logical_dns clusters (this one is {kind})",
        )
    elif kind in _DNS_TYPES:
        dns = _dns(c, cb._dns.value if cb._dns else {}, what, cb._dns.location if cb._dns else loc)
    eds = None
    if cb._eds is not None:
        if kind != "eds":
            c.error(cb._eds.location, f"{what}: .eds_file() needs type='eds' (this one is {kind})")
        else:
            eds = _eds(c, cb._eds.value, what, cb._eds.location)
    return {"type": kind, "dns": dns, "eds_file": eds}


def _dns(c: _Compiler, o: dict[str, object], what: str, loc: Location | None) -> DnsDiscovery:
    refresh = 5.0
    if "dns_refresh_rate" in o:
        refresh = c.duration(
            o["dns_refresh_rate"], f"dns_refresh_rate of {what}", loc, positive=True
        )
    base = cap = None
    raw = o.get("dns_failure_refresh_rate")
    if raw is not None:
        w = f"dns_failure_refresh_rate of {what}"
        if isinstance(raw, tuple | list):
            if len(raw) != 2:
                c.error(loc, f"{w} must be a duration or (base, max), got {raw!r}")
            else:
                base = c.duration(raw[0], w, loc, positive=True)
                cap = c.duration(raw[1], w, loc, positive=True)
                if cap < base:
                    c.error(loc, f"{w}: max {raw[1]!r} is less than base {raw[0]!r}")
        else:
            base = c.duration(raw, w, loc, positive=True)
    respect = c.flag(o.get("respect_dns_ttl", False), f"respect_dns_ttl of {what}", loc)
    family = c.choice(
        o.get("dns_lookup_family", "AUTO"), get_args(DnsLookupFamily), "dns_lookup_family", loc
    )
    resolvers: list[SocketAddress] = []
    raw_resolvers = o.get("dns_resolvers", ())
    if isinstance(raw_resolvers, str) or not isinstance(raw_resolvers, tuple | list):
        c.error(loc, f"dns_resolvers of {what} must be a list of 'ip:port', got {raw_resolvers!r}")
        raw_resolvers = ()
    for r in raw_resolvers:
        address: SocketAddress | None = None
        if isinstance(r, str) and _is_ip(r):
            address = SocketAddress(host=str(ipaddress.ip_address(r)), port=53)
        else:
            try:
                address = parse_endpoint_address(r, f"dns_resolvers of {what}")
            except BadValue:
                address = None
        if address is None or not _is_ip(address.host):
            c.error(loc, f"bad nameserver {r!r} in dns_resolvers of {what} (expected 'ip:port')")
            continue
        resolvers.append(address)
    return DnsDiscovery(
        refresh_rate=refresh,
        failure_refresh_base=base,
        failure_refresh_max=cap,
        respect_dns_ttl=respect,
        lookup_family=family,
        resolvers=tuple(resolvers),
    )


def _eds(c: _Compiler, o: dict[str, object], what: str, loc: Location | None) -> EdsFile | None:
    path = o.get("path")
    interval = c.duration(
        o.get("watch_interval"), f"eds_file watch_interval of {what}", loc, positive=True
    )
    if not isinstance(path, str) or not path:
        c.error(loc, f"eds_file of {what} must be a file name, got {path!r}")
        return None
    # The file may appear later (it is watched): not checked for existence.
    return EdsFile(path=resolve_path(path, loc), watch_interval=interval)
