"""Sans-IO gRPC helpers: recognising gRPC requests, `grpc-timeout`, and the
mapping from HTTP status to gRPC status that Envoy uses for local replies.

gRPC rides on HTTP/2 with `content-type: application/grpc[+proto|+json|...]`,
the method in the path (`/<package.Service>/<Method>`), and the status in the
trailers (`grpc-status`, `grpc-message`), or, for a "trailers-only" response,
in the response headers of a HEADERS frame that ends the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from trioproxy.codec.stream import RequestHead

__all__ = [
    "GRPC_STATUS",
    "grpc_status_of",
    "http_to_grpc_status",
    "is_grpc",
    "parse_timeout",
    "service_and_method",
]

# The gRPC status codes (grpc/doc/statuscodes.md).
GRPC_STATUS: Final = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

# Envoy's Grpc::Utility::httpToGrpcStatus (and the gRPC spec's table).
_HTTP_TO_GRPC: Final = {
    400: 13,  # INTERNAL
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 12,  # UNIMPLEMENTED
    429: 14,  # UNAVAILABLE
    502: 14,
    503: 14,
    504: 14,
}

_UNITS: Final = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def is_grpc(head: RequestHead) -> bool:
    """A gRPC request: content-type application/grpc or application/grpc+<codec>."""
    ct = head.get(b"content-type")
    return ct is not None and (ct == b"application/grpc" or ct.startswith(b"application/grpc+"))


def parse_timeout(value: bytes | None) -> float | None:
    """Seconds from a `grpc-timeout` header ("1S", "500m", "100u", "2H"),
    or None if absent or malformed (then it is ignored, as Envoy does).

    The spec allows at most 8 digits.
    """
    if not value or len(value) > 9:
        return None
    unit = _UNITS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit():
        return None
    return int(digits) * unit


def http_to_grpc_status(status: int) -> int:
    """The gRPC status a local reply with HTTP `status` carries (UNKNOWN by default)."""
    return _HTTP_TO_GRPC.get(status, 2)


def grpc_status_of(*header_lists: Iterable[tuple[bytes, bytes]]) -> int | None:
    """`grpc-status` from the trailers or (trailers-only) the headers, if any."""
    for headers in header_lists:
        for k, v in headers:
            if k == b"grpc-status":
                return int(v) if v.isdigit() else None
    return None


def service_and_method(path: bytes) -> tuple[str, str] | None:
    """("package.Service", "Method") from "/package.Service/Method", or None."""
    parts = path.split(b"?", 1)[0].split(b"/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return None
    return parts[1].decode("latin-1"), parts[2].decode("latin-1")
