"""Compiling `http(...).tracing(...)`: Envoy's HCM `tracing` with a Zipkin
or OpenTelemetry provider, into `config.Tracing`."""

from __future__ import annotations

import ipaddress
import math
from typing import TYPE_CHECKING, get_args

from trioproxy.config import SocketAddress, Tracing
from trioproxy.config.graph import Location, TracePropagation, TracingProvider

from ._values import BadValue, parse_endpoint_address

if TYPE_CHECKING:
    from ._builders import TracingSpec
    from ._compile import _Compiler

# Provider defaults: the collector path and the header formats.
_PATHS = {"zipkin": "/api/v2/spans", "opentelemetry": "/v1/traces"}
_PROPAGATION: dict[str, tuple[TracePropagation, ...]] = {
    "zipkin": ("b3",),
    "opentelemetry": ("w3c",),
}
# A bound on the span queue: 1 M spans is already about 1 GiB.
_MAX_QUEUE = 1_000_000


def tracing_config(c: _Compiler, spec: TracingSpec) -> Tracing:
    """The checked `Tracing` of one `.tracing(...)` call."""
    loc = spec.location
    provider: TracingProvider = c.choice(
        spec.provider, get_args(TracingProvider), "tracing provider", loc
    )
    collector: SocketAddress | None = None
    collector_cluster: str | None = None
    raw_collector = spec.collector
    if isinstance(raw_collector, str) and ":" in raw_collector:
        try:
            collector = parse_endpoint_address(raw_collector, "tracing collector")
        except BadValue as exc:
            c.error(loc, str(exc))
        else:
            try:
                ipaddress.ip_address(collector.host)
            except ValueError:
                # The exporter connects from a background task; no DNS there.
                c.error(
                    loc,
                    f"tracing collector {raw_collector!r} must be an IP address and port "
                    "(or a cluster)",
                )
    else:
        # A cluster, by builder or name (Envoy's collector_cluster).
        collector_cluster = c.cluster_ref(raw_collector, loc)
    o = dict(spec.options)
    path = o["collector_path"]
    if path is None:
        path = _PATHS[provider]
    elif not isinstance(path, str) or not path.startswith("/"):
        c.error(loc, f"tracing collector_path must be a path starting with '/', got {path!r}")
        path = _PATHS[provider]
    propagation = _PROPAGATION[provider]
    raw = o["propagation"]
    if raw is not None:
        given = (raw,) if isinstance(raw, str) else raw
        if not isinstance(given, (tuple, list)) or not given:
            c.error(loc, f"tracing propagation must be one or more formats, got {raw!r}")
        else:
            propagation = tuple(
                dict.fromkeys(
                    c.choice(f, get_args(TracePropagation), "tracing propagation", loc)
                    for f in given
                )
            )
    sampling = {
        key: _percent(c, o[key], key, loc)
        for key in ("random_sampling", "client_sampling", "overall_sampling")
    }
    service = c.text(o["service_name"], "tracing service_name", loc)
    if not service:
        c.error(loc, "tracing service_name must not be empty")
    return Tracing(
        provider=provider,
        collector=collector,
        collector_cluster=collector_cluster,
        collector_path=path,
        service_name=service,
        random_sampling=sampling["random_sampling"],
        client_sampling=sampling["client_sampling"],
        overall_sampling=sampling["overall_sampling"],
        propagation=propagation,
        shared_span_context=c.flag(o["shared_span_context"], "shared_span_context", loc),
        max_queue_spans=c.count(
            o["max_queue_spans"], "max_queue_spans", loc, low=1, high=_MAX_QUEUE
        ),
        min_flush_spans=c.count(
            o["min_flush_spans"], "min_flush_spans", loc, low=1, high=_MAX_QUEUE
        ),
        flush_interval=c.duration(
            o["flush_interval"], "tracing flush_interval", loc, positive=True
        ),
        collector_timeout=c.duration(
            o["collector_timeout"], "tracing collector_timeout", loc, positive=True
        ),
        operation_name=c.name(o["operation_name"], "tracing operation_name", loc),
        location=loc,
    )


def _percent(c: _Compiler, value: object, what: str, loc: Location | None) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 100
    ):
        return float(value)
    c.error(loc, f"bad tracing {what} {value!r} (expected a percentage 0..100)")
    return 100.0
