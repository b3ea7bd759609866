"""Spans to collector payloads, sans-IO: Zipkin API v2 JSON
(`POST /api/v2/spans`, a list of spans) and OTLP/HTTP JSON
(`POST /v1/traces`, an ExportTraceServiceRequest).

Zipkin v2: `traceId`, `id`, `parentId` (omitted at the root), `name`,
`kind` SERVER/CLIENT, `timestamp`/`duration` in microseconds,
`localEndpoint{serviceName}`, `remoteEndpoint{ipv4|ipv6, port}`, `tags`
(all strings) and `shared: true` on a server span that reuses its caller's
span id. OTLP JSON (protobuf JSON mapping): ids as hex, 64-bit integers
as decimal strings, `kind` 2 (SERVER) / 3 (CLIENT), attributes as
`{key, value: {stringValue | intValue | boolValue}}`, `status.code` 2
(ERROR) for a failed span, otherwise 0 (UNSET).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from trioproxy.observe.tracing.span import INT_TAGS, Span

__all__ = ["otlp_json", "zipkin_json", "zipkin_span"]

_OTLP_KIND = {"SERVER": 2, "CLIENT": 3}
_STATUS_ERROR = 2
_STATUS_UNSET = 0


@functools.lru_cache(maxsize=1024)
def _ip_key(ip: str) -> str | None:
    """ "ipv4" or "ipv6" for an address (None: not an IP); addresses repeat."""
    try:
        return "ipv4" if ipaddress.ip_address(ip).version == 4 else "ipv6"
    except ValueError:
        return None


def _endpoint(ip: str, port: int | None) -> dict[str, Any]:
    key = _ip_key(ip)
    if key is None:
        return {}
    out: dict[str, Any] = {key: ip}
    if port:
        out["port"] = port
    return out


def zipkin_span(span: Span, service_name: str) -> dict[str, Any]:
    """One span as a Zipkin v2 JSON object."""
    out: dict[str, Any] = {
        "traceId": span.trace_id,
        "id": span.span_id,
        "name": span.name,
        "kind": span.kind,
        "timestamp": span.start_us,
        # Zipkin drops a zero duration; a span always lasted something.
        "duration": max(1, span.duration_us),
        "localEndpoint": {"serviceName": service_name},
        "tags": dict(span.tags),
    }
    if span.parent_id is not None:
        out["parentId"] = span.parent_id
    if span.remote_ip:
        remote = _endpoint(span.remote_ip, span.remote_port)
        if remote:
            out["remoteEndpoint"] = remote
    if span.shared:
        out["shared"] = True
    return out


def zipkin_json(spans: Sequence[Span], service_name: str) -> bytes:
    """The body of one Zipkin report."""
    return json.dumps([zipkin_span(s, service_name) for s in spans], separators=(",", ":")).encode()


def _attribute(key: str, value: str) -> dict[str, Any]:
    if key in INT_TAGS and value.isdigit():
        return {"key": key, "value": {"intValue": value}}
    if key == "error" and value in ("true", "false"):
        return {"key": key, "value": {"boolValue": value == "true"}}
    return {"key": key, "value": {"stringValue": value}}


def _otlp_span(span: Span) -> dict[str, Any]:
    end_us = span.start_us + span.duration_us
    out: dict[str, Any] = {
        "traceId": span.trace_id.rjust(32, "0"),
        "spanId": span.span_id,
        "name": span.name,
        "kind": _OTLP_KIND[span.kind],
        "startTimeUnixNano": str(span.start_us * 1000),
        "endTimeUnixNano": str(end_us * 1000),
        "attributes": [_attribute(k, v) for k, v in span.tags.items()],
        "status": {"code": _STATUS_ERROR if span.error else _STATUS_UNSET},
    }
    if span.parent_id is not None:
        out["parentSpanId"] = span.parent_id
    if span.tracestate:
        out["traceState"] = span.tracestate.decode("latin-1")
    if span.remote_ip:
        out["attributes"].append(_attribute("net.peer.ip", span.remote_ip))
    return out


def otlp_json(spans: Sequence[Span], service_name: str, version: str = "") -> bytes:
    """The body of one OTLP/HTTP JSON export request."""
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service_name}},
                        {"key": "telemetry.sdk.name", "value": {"stringValue": "trioproxy"}},
                    ]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "trioproxy", "version": version},
                        "spans": [_otlp_span(s) for s in spans],
                    }
                ],
            }
        ]
    }
    return json.dumps(body, separators=(",", ":")).encode()
