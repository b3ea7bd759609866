"""The protocol-neutral stream model shared by every codec, filter and the router.

A request or response head is a small slotted object; headers are an ordered
list of `(name, value)` byte pairs with lower-case names. Pseudo-headers are
not in the list: the request's method, scheme, authority and path are fields
(HTTP/1.1's `Host` header becomes `authority`), so HTTP/1.1 and HTTP/2 look
the same to filters and the router.

`StreamInfo` is the per-request record that the router fills in and that
access logs, stats and tracing read (Envoy's StreamInfo).

Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "Headers",
    "RequestHead",
    "ResponseFlag",
    "ResponseHead",
    "StreamInfo",
    "get_header",
]

Headers = list[tuple[bytes, bytes]]


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


class RequestHead:
    __slots__ = ("authority", "headers", "http_version", "method", "path", "scheme")

    def __init__(
        self,
        *,
        method: bytes,
        path: bytes,
        authority: bytes = b"",
        scheme: bytes = b"http",
        headers: Headers | None = None,
        http_version: bytes = b"1.1",
    ) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers: Headers = headers if headers is not None else []
        self.http_version = http_version

    def get(self, name: bytes) -> bytes | None:
        """A header by lower-case name; pseudo-headers `:method` etc. included."""
        if name[:1] == b":":
            if name == b":method":
                return self.method
            if name == b":path":
                return self.path
            if name == b":authority" or name == b"host":
                return self.authority or None
            if name == b":scheme":
                return self.scheme
            return None
        if name == b"host":
            return self.authority or None
        return get_header(self.headers, name)

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every value of `name` with one value."""
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self.headers.append((name, value))

    def remove(self, name: bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.authority!r} {self.path!r}>"


class ResponseHead:
    __slots__ = ("headers", "http_version", "reason", "status")

    def __init__(
        self,
        *,
        status: int,
        headers: Headers | None = None,
        reason: bytes = b"",
        http_version: bytes = b"1.1",
    ) -> None:
        self.status = status
        self.headers: Headers = headers if headers is not None else []
        self.reason = reason
        self.http_version = http_version

    def get(self, name: bytes) -> bytes | None:
        if name == b":status":
            return str(self.status).encode()
        return get_header(self.headers, name)

    def set(self, name: bytes, value: bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self.headers.append((name, value))

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status}>"


class ResponseFlag:
    """Envoy's response flags (short names), as used in access logs."""

    NO_HEALTHY_UPSTREAM = "UH"
    UPSTREAM_CONNECTION_FAILURE = "UF"
    UPSTREAM_OVERFLOW = "UO"
    NO_ROUTE_FOUND = "NR"
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
    NO_CLUSTER_FOUND = "NC"
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    UPSTREAM_REQUEST_TIMEOUT = "UT"
    LOCAL_RESET = "LR"
    UPSTREAM_REMOTE_RESET = "UR"
    UPSTREAM_CONNECTION_TERMINATION = "UC"
    STREAM_IDLE_TIMEOUT = "SI"
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    DURATION_TIMEOUT = "DT"
    OVERLOAD_MANAGER = "OM"


class StreamInfo:
    """What happened to one request: read by access logs, stats and tracing.

    Times are trio clock seconds (`monotonic` fields) except `start_time`,
    which is wall-clock seconds since the epoch for display.
    """

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "downstream_local_address",
        "downstream_remote_address",
        "end_monotonic",
        "first_upstream_rx_monotonic",
        "is_health_check",
        "last_downstream_rx_monotonic",
        "protocol",
        "request",
        "request_headers_original",
        "response",
        "response_code",
        "response_code_details",
        "response_flags",
        "response_trailers",
        "route_name",
        "start_monotonic",
        "start_time",
        "upstream_cluster",
        "upstream_host",
        "upstream_transport_failure_reason",
    )

    def __init__(
        self,
        *,
        start_time: float,
        start_monotonic: float,
        protocol: str = "HTTP/1.1",
        downstream_remote_address: str = "",
        downstream_local_address: str = "",
    ) -> None:
        self.start_time = start_time
        self.start_monotonic = start_monotonic
        self.end_monotonic: float | None = None
        self.last_downstream_rx_monotonic: float | None = None
        self.first_upstream_rx_monotonic: float | None = None
        self.protocol = protocol
        self.downstream_remote_address = downstream_remote_address
        self.downstream_local_address = downstream_local_address
        self.request: RequestHead | None = None
        self.request_headers_original: RequestHead | None = None
        self.response: ResponseHead | None = None
        self.response_trailers: Headers | None = None
        # 0 means no response was started (Envoy's %RESPONSE_CODE% convention).
        self.response_code = 0
        self.response_code_details = ""
        self.response_flags: list[str] = []
        self.bytes_received = 0
        self.bytes_sent = 0
        self.route_name: str | None = None
        self.upstream_host: str | None = None
        self.upstream_cluster: str | None = None
        self.upstream_transport_failure_reason: str | None = None
        # Set by the health_check filter (Envoy's StreamInfo::healthCheck()),
        # for access-log filters such as not_health_check.
        self.is_health_check = False

    def add_flag(self, flag: str) -> None:
        if flag not in self.response_flags:
            self.response_flags.append(flag)

    @property
    def response_flags_str(self) -> str:
        """Envoy prints `-` when no flag is set, else the flags joined by commas."""
        return ",".join(self.response_flags) if self.response_flags else "-"

    def duration_ms(self) -> int | None:
        if self.end_monotonic is None:
            return None
        return int((self.end_monotonic - self.start_monotonic) * 1000)
