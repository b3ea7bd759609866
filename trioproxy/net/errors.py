"""The I/O error tree. trio and OS errors are translated into these once, in `net/`.

Filters, the router and the connection manager catch only these; they never
see `trio.BrokenResourceError` or `OSError`. Each carries the Envoy response
flag it maps to and, for transport failures, Envoy's failure-reason text.

    ProxyIOError
    ├── UpstreamError
    │   ├── ConnectFailure           UF  (refused, unreachable, ...)
    │   │   └── ConnectTimeout       UF  (connect_timeout elapsed)
    │   ├── UpstreamReset            UC  (upstream closed or reset the connection)
    │   └── UpstreamProtocolError    UPE (unparseable or invalid response)
    ├── DownstreamReset              DC  (the client went away)
    └── DownstreamProtocolError      DPE (invalid bytes after the request head)
"""

from __future__ import annotations

__all__ = [
    "ConnectFailure",
    "ConnectTimeout",
    "DownstreamProtocolError",
    "DownstreamReset",
    "ProxyIOError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamReset",
]


class ProxyIOError(Exception):
    flag = "-"


class UpstreamError(ProxyIOError):
    pass


class ConnectFailure(UpstreamError):
    flag = "UF"
    reason = "connection_failure"


class ConnectTimeout(ConnectFailure):
    reason = "connection_timeout"


class PoolOverflow(UpstreamError):
    """A circuit breaker is full (Envoy's upstream overflow): answer 503 UO."""

    flag = "UO"
    reason = "overflow"


class UpstreamReset(UpstreamError):
    flag = "UC"
    reason = "connection_termination"


class UpstreamProtocolError(UpstreamError):
    flag = "UPE"
    reason = "protocol_error"


class DownstreamReset(ProxyIOError):
    flag = "DC"


class DownstreamProtocolError(ProxyIOError):
    """The client sent bytes that are not valid HTTP (after the request head)."""

    flag = "DPE"
