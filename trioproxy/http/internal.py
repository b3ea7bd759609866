"""Envoy's "internal" client: one whose address is loopback or private
(RFC 1918 / ULA). Its x-envoy-* headers are honoured (router), its request
id and trace context are trusted (connection manager, tracer)."""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["internal_client"]


def internal_client(remote: str) -> bool:
    """Whether `remote` ("ip:port", IPv6 in brackets) is an internal client."""
    return _internal_ip(remote.rsplit(":", 1)[0].strip("[]"))


@functools.lru_cache(maxsize=1024)
def _internal_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private
