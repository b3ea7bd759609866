"""The tracer of one HTTP connection manager: the sampling decision, the
server span of each downstream request and a client span per upstream try.

Envoy's decision (ConnectionManagerUtility::mutateTracingRequestHeader and
HttpTracerUtility::shouldTraceRequest), counted under
`http.<stat_prefix>.tracing.`:
1. `x-client-trace-id` present and `client_sampling` hits: traced
   (`client_enabled`);
2. else `x-envoy-force-trace` from an internal client: traced
   (`service_forced`);
3. else `random_sampling` hits (keyed on x-request-id, so the hops of one
   request decide alike): traced (`random_sampling`);
4. a traced request still needs `overall_sampling` to hit; anything not
   traced counts `not_traceable`.
An incoming sampling decision (B3 `x-b3-sampled`/`x-b3-flags`, `b3`, the
W3C sampled flag) overrides ours, so a trace is sampled end to end or not
at all. Unsampled requests still get ids and propagate `sampled=0`; only
sampled spans are exported.

The request path calls `start_server`, `ActiveSpan.start_client`,
`inject`, `finish_client` and `finish_server`: no I/O, no checkpoint.
"""

from __future__ import annotations

import functools
import random
import zlib
from typing import TYPE_CHECKING

import trio

from trioproxy.config import Tracing
from trioproxy.observe.stats import StatsStore
from trioproxy.observe.tracing.context import Extracted, SpanContext, extract, inject
from trioproxy.observe.tracing.span import Span

if TYPE_CHECKING:
    from trioproxy.codec.stream import RequestHead, StreamInfo
    from trioproxy.observe.tracing.exporter import SpanExporter

__all__ = ["ActiveSpan", "Tracer"]


def _hit(percent: float, draw: int) -> bool:
    """Envoy's runtime featureEnabled: `draw` in 0..9999 against a percentage."""
    return draw < percent * 100


@functools.lru_cache(maxsize=1024)
def _split_address(address: str | None) -> tuple[str | None, int | None]:
    if not address:
        return None, None
    host, _, port = address.rpartition(":")
    if not host:
        return address, None
    return host.strip("[]"), int(port) if port.isdigit() else None


class Tracer:
    """Sampling and span lifecycle for one `config.Tracing` on one HCM."""

    def __init__(
        self,
        config: Tracing,
        exporter: SpanExporter,
        stats: StatsStore,
        stat_prefix: str,
        *,
        node_id: str,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.exporter = exporter
        self.node_id = node_id
        self.formats = config.propagation
        self.shared = config.shared_span_context and config.provider == "zipkin"
        self._rng = rng or random.Random()
        p = f"http.{stat_prefix}.tracing."
        self.random_sampling = stats.counter(p + "random_sampling")
        self.service_forced = stats.counter(p + "service_forced")
        self.client_enabled = stats.counter(p + "client_enabled")
        self.not_traceable = stats.counter(p + "not_traceable")

    def new_id(self) -> str:
        return f"{self._rng.getrandbits(64) or 1:016x}"

    def decide(self, headers: list[tuple[bytes, bytes]], trusted: bool) -> bool:
        """Envoy's tracing decision for a request (and its counter)."""
        cfg = self.config
        rid = client = force = None
        for k, v in headers:
            if k == b"x-request-id":
                rid = v
            elif k == b"x-client-trace-id":
                client = v
            elif k == b"x-envoy-force-trace":
                force = v
        counter = self.not_traceable
        if client is not None and _hit(cfg.client_sampling, self._rng.randrange(10000)):
            counter = self.client_enabled
        elif force is not None and trusted:
            counter = self.service_forced
        else:
            draw = zlib.crc32(rid) % 10000 if rid is not None else self._rng.randrange(10000)
            if _hit(cfg.random_sampling, draw):
                counter = self.random_sampling
        if counter is not self.not_traceable and not _hit(
            cfg.overall_sampling, self._rng.randrange(10000)
        ):
            counter = self.not_traceable
        counter.inc()
        return counter is not self.not_traceable

    def start_server(self, head: RequestHead, info: StreamInfo, *, trusted: bool) -> ActiveSpan:
        """The server span of a downstream request (its headers already
        prepared: x-request-id set)."""
        headers = head.headers
        traced = self.decide(headers, trusted)
        got: Extracted = extract(headers, self.formats)
        sampled = traced if got.sampled is None else got.sampled
        parent = got.parent
        shared = False
        if parent is None:
            trace_id = f"{self._rng.getrandbits(128) or 1:032x}"
            span_id = self.new_id()
            parent_id = None
            tracestate = None
        elif self.shared:
            trace_id, span_id, parent_id = parent.trace_id, parent.span_id, parent.parent_id
            tracestate = parent.tracestate
            shared = True
        else:
            trace_id, span_id, parent_id = parent.trace_id, self.new_id(), parent.span_id
            tracestate = parent.tracestate
        span = Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            name=self.config.operation_name,
            kind="SERVER",
            start_us=int(info.start_time * 1_000_000),
            shared=shared,
            tracestate=tracestate,
        )
        span.remote_ip, span.remote_port = _split_address(info.downstream_remote_address)
        if sampled:
            scheme = head.scheme.decode("latin-1") if head.scheme else "http"
            tags = span.tags
            tags["component"] = "proxy"
            tags["node_id"] = self.node_id
            tags["http.method"] = head.method.decode("latin-1")
            tags["http.url"] = (
                f"{scheme}://{head.authority.decode('latin-1')}{head.path.decode('latin-1')}"
            )
            tags["http.protocol"] = info.protocol
            for k, v in headers:
                if k == b"x-request-id":
                    tags["guid:x-request-id"] = v.decode("latin-1")
                elif k == b"user-agent":
                    tags["user_agent"] = v.decode("latin-1")
            if span.remote_ip:
                tags["peer.address"] = span.remote_ip
        return ActiveSpan(self, span, sampled, parent.debug if parent else False, info)


class ActiveSpan:
    """An open span and what finishing it needs."""

    __slots__ = ("debug", "info", "sampled", "span", "started", "tracer")

    def __init__(
        self, tracer: Tracer, span: Span, sampled: bool, debug: bool, info: StreamInfo
    ) -> None:
        self.tracer = tracer
        self.span = span
        self.sampled = sampled
        self.debug = debug
        self.info = info
        self.started = trio.current_time()

    def context(self) -> SpanContext:
        s = self.span
        return SpanContext(
            trace_id=s.trace_id,
            span_id=s.span_id,
            parent_id=s.parent_id,
            sampled=self.sampled,
            debug=self.debug,
            tracestate=s.tracestate,
        )

    def start_client(self, cluster: str, address: str | None) -> ActiveSpan:
        """A client span for one upstream try, child of this server span."""
        tracer = self.tracer
        parent = self.span
        now = trio.current_time()
        span = Span(
            trace_id=parent.trace_id,
            span_id=tracer.new_id(),
            parent_id=parent.span_id,
            name=f"router {cluster} egress",
            kind="CLIENT",
            start_us=parent.start_us + int((now - self.started) * 1_000_000),
            tracestate=parent.tracestate,
        )
        span.remote_ip, span.remote_port = _split_address(address)
        if self.sampled:
            tags = span.tags
            tags["component"] = "proxy"
            tags["node_id"] = tracer.node_id
            tags["upstream_cluster"] = cluster
            tags["upstream_cluster.name"] = cluster
            if address:
                tags["upstream_address"] = address
        child = ActiveSpan(tracer, span, self.sampled, self.debug, self.info)
        child.started = now
        return child

    def inject(self, head: RequestHead) -> None:
        """Write this span's context into the upstream request's headers."""
        head.headers = inject(head.headers, self.context(), self.tracer.formats)

    def _end(self) -> None:
        self.span.duration_us = int((trio.current_time() - self.started) * 1_000_000)

    def finish_client(self, status: int, protocol: str | None = None) -> None:
        """End an upstream try: `status` its response's (0: none, a reset)."""
        if not self.sampled:
            return
        self._end()
        span = self.span
        tags = span.tags
        if protocol:
            tags["http.protocol"] = protocol
        if status:
            tags["http.status_code"] = str(status)
        tags["response_flags"] = self.info.response_flags_str
        if status == 0 or status >= 500:
            span.error = True
            tags["error"] = "true"
        self.tracer.exporter.submit(span)

    def finish_server(self) -> None:
        """End the downstream request, from its stream info. Health checks
        answered by the proxy are not reported (Envoy's `health_check`)."""
        info = self.info
        if not self.sampled or info.is_health_check:
            return
        self._end()
        span = self.span
        tags = span.tags
        status = info.response_code
        tags["http.status_code"] = str(status)
        tags["response_flags"] = info.response_flags_str
        tags["request_size"] = str(info.bytes_received)
        tags["response_size"] = str(info.bytes_sent)
        if info.upstream_cluster:
            tags["upstream_cluster"] = info.upstream_cluster
            tags["upstream_cluster.name"] = info.upstream_cluster
        if info.upstream_host:
            tags["upstream_address"] = info.upstream_host
        if status == 0 or status >= 500:
            span.error = True
            tags["error"] = "true"
        self.tracer.exporter.submit(span)
