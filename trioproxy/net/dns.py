"""The network door for names: asynchronous DNS lookups with dnspython.

`DnsResolver.resolve(name, family)` asks the configured nameservers (or the
system's, from /etc/resolv.conf, read once when the resolver is made) for A
and/or AAAA records over UDP/TCP through trio's sockets (dnspython's trio
backend): it never blocks the event loop, unlike `getaddrinfo`.

Lookup families are Envoy's:

- V4_ONLY: A; V6_ONLY: AAAA;
- AUTO: AAAA, and A if that gives nothing (fails or is empty);
- V4_PREFERRED: A, and AAAA if that gives nothing;
- ALL: both, IPv4 addresses first.

A name that does not exist (NXDOMAIN) or has no records of the family
(NODATA) is an answer with no addresses. Everything else — a timeout, a
nameserver that fails or refuses (SERVFAIL, REFUSED) — raises `DnsFailure`,
the one exception this module lets out. An IP literal resolves to itself
without a query.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from trioproxy.config import SocketAddress
from trioproxy.config.graph import DnsLookupFamily

__all__ = ["DnsAnswer", "DnsFailure", "DnsResolver"]


class DnsFailure(Exception):
    """A lookup that got no answer (timeout, SERVFAIL, REFUSED, no nameserver)."""


@attrs.frozen
class DnsAnswer:
    """Addresses (text, in answer order) and the smallest TTL (None: no records)."""

    addresses: tuple[str, ...]
    ttl: float | None


# (record types tried in order, whether later ones run only as a fallback).
_PLANS: dict[str, tuple[tuple[str, ...], bool]] = {
    "V4_ONLY": (("A",), False),
    "V6_ONLY": (("AAAA",), False),
    "AUTO": (("AAAA", "A"), True),
    "V4_PREFERRED": (("A", "AAAA"), True),
    "ALL": (("A", "AAAA"), False),
}


def _literal(name: str, family: DnsLookupFamily) -> DnsAnswer | None:
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None
    if (family == "V4_ONLY" and ip.version == 6) or (family == "V6_ONLY" and ip.version == 4):
        return DnsAnswer((), None)
    return DnsAnswer((str(ip),), None)


class DnsResolver:
    """One cluster's resolver.

    Args:
        nameservers: numeric `ip:port` nameservers; empty: the system's.
        timeout: the time limit of one query (all its nameservers and tries).
    """

    def __init__(self, nameservers: Sequence[SocketAddress] = (), *, timeout: float = 5.0) -> None:
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(a.host, a.port) for a in nameservers]
        else:
            r = dns.asyncresolver.Resolver()  # /etc/resolv.conf, read once here
        r.cache = None  # the TTL is the cluster's business (respect_dns_ttl)
        self._resolver = r
        self.timeout = timeout

    async def _query(self, name: str, rdtype: str, lifetime: float) -> DnsAnswer:
        try:
            answer = await self._resolver.resolve(
                name, rdtype, search=False, lifetime=lifetime, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return DnsAnswer((), None)
        except (dns.exception.DNSException, OSError) as exc:  # OSError: the backend's sockets
            raise DnsFailure(f"{name} {rdtype}: {exc}") from None
        rrset = answer.rrset
        if rrset is None:
            return DnsAnswer((), None)
        return DnsAnswer(tuple(str(r.address) for r in rrset), float(rrset.ttl))

    async def resolve(self, name: str, family: DnsLookupFamily = "AUTO") -> DnsAnswer:
        """The addresses of `name` for `family` (see the module docstring).

        Raises:
            DnsFailure: no usable answer.
        """
        literal = _literal(name, family)
        if literal is not None:
            return literal
        types, fallback = _PLANS[family]
        addresses: list[str] = []
        ttls: list[float] = []
        failures: list[str] = []
        for rdtype in types:
            try:
                got = await self._query(name, rdtype, self.timeout)
            except DnsFailure as exc:
                failures.append(str(exc))
                continue
            addresses.extend(got.addresses)
            if got.ttl is not None:
                ttls.append(got.ttl)
            if fallback and got.addresses:
                break
        # A failed query with nothing else to go by is a failure (the cluster
        # keeps its hosts); so is any failure for ALL, whose answer would
        # otherwise silently lose one family.
        if failures and (not fallback or not addresses):
            raise DnsFailure("; ".join(failures))
        return DnsAnswer(tuple(addresses), min(ttls) if ttls else None)
