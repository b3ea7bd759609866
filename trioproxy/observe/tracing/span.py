"""A finished span as the exporters see it: plain data, no I/O.

Times are integers: `start_us` is microseconds since the epoch, `duration_us`
microseconds (Zipkin's units; OTLP multiplies by 1000). Tags are strings, as
Zipkin requires; the OTLP encoder turns the integer-valued ones (listed in
`INT_TAGS`) into `intValue`.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["INT_TAGS", "Span", "SpanKind"]

SpanKind = Literal["SERVER", "CLIENT"]

# Tags whose values are integers (OTLP `intValue`).
INT_TAGS = frozenset({"http.status_code", "request_size", "response_size"})


class Span:
    """One span; mutable while open, handed to an exporter when finished."""

    __slots__ = (
        "duration_us",
        "error",
        "kind",
        "name",
        "parent_id",
        "remote_ip",
        "remote_port",
        "shared",
        "span_id",
        "start_us",
        "tags",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        *,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        name: str,
        kind: SpanKind,
        start_us: int,
        shared: bool = False,
        tracestate: bytes | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind: SpanKind = kind
        self.start_us = start_us
        self.duration_us = 0
        self.shared = shared
        self.tracestate = tracestate
        self.tags: dict[str, str] = {}
        self.error = False
        self.remote_ip: str | None = None
        self.remote_port: int | None = None

    def __repr__(self) -> str:
        return f"<Span {self.kind} {self.name!r} {self.trace_id}/{self.span_id}>"
