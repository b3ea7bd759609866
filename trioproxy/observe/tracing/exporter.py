"""The span exporter: the one I/O task of tracing.

`submit()` is what the request path calls when a sampled span finishes: a
bounded append and, at `min_flush_spans`, a wake-up; it never waits. The
`run()` task (in the server's nursery, beside the StatsD flush) sends the
queue to the collector in batches, every `flush_interval` or as soon as
`min_flush_spans` are waiting, one report at a time, each within
`collector_timeout`, on one kept-alive connection. While a report is in flight new spans queue up to
`max_queue_spans`; beyond that they are dropped and counted. A collector
that is down or slow costs dropped spans, never a slower request.

Stats, Envoy's for its Zipkin tracer under `tracing.zipkin.` or
`tracing.opentelemetry.`: `spans_sent`, `timer_flushed`, `reports_sent`
(2xx), `reports_dropped` (answered with another status), `reports_failed`
(no answer: connect error, reset, timeout), `reports_skipped_no_cluster`
(the collector cluster has no healthy host); ours: `spans_dropped` (queue
full, or their report dropped, failed or skipped).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence

import h11
import trio

from trioproxy import __version__
from trioproxy.config import Tracing
from trioproxy.net.errors import ProxyIOError
from trioproxy.net.network import Network
from trioproxy.observe.stats import StatsStore
from trioproxy.observe.tracing.encode import otlp_json, zipkin_json
from trioproxy.observe.tracing.span import Span
from trioproxy.upstream.cluster_manager import ClusterManager

__all__ = ["SpanExporter"]

log = logging.getLogger("trioproxy.tracing")

# A collector's answer is read up to this size, then ignored.
_MAX_RESPONSE_BYTES = 64 * 1024


class SpanExporter:
    """Batches finished spans to one collector (one per tracing config)."""

    def __init__(
        self,
        config: Tracing,
        network: Network,
        stats: StatsStore,
        clusters: ClusterManager | None = None,
    ) -> None:
        self.config = config
        self._network = network
        self._clusters = clusters
        self._queue: deque[Span] = deque()
        # The collector connection, kept alive between reports, and its peer.
        self._stream: trio.abc.Stream | None = None
        self._conn = h11.Connection(h11.CLIENT)
        self._peer: tuple[str, int] = ("", 0)
        self._wake = trio.Event()
        p = "tracing.opentelemetry." if config.provider == "opentelemetry" else "tracing.zipkin."
        self.spans_sent = stats.counter(p + "spans_sent")
        self.spans_dropped = stats.counter(p + "spans_dropped")
        self.timer_flushed = stats.counter(p + "timer_flushed")
        self.reports_sent = stats.counter(p + "reports_sent")
        self.reports_dropped = stats.counter(p + "reports_dropped")
        self.reports_failed = stats.counter(p + "reports_failed")
        self.reports_skipped_no_cluster = stats.counter(p + "reports_skipped_no_cluster")
        self._encode: Callable[[Sequence[Span]], bytes]
        if config.provider == "opentelemetry":
            self._encode = lambda spans: otlp_json(spans, config.service_name, __version__)
        else:
            self._encode = lambda spans: zipkin_json(spans, config.service_name)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, span: Span) -> None:
        """Queue a finished span (no checkpoint); drop it if the queue is full."""
        q = self._queue
        if len(q) >= self.config.max_queue_spans:
            self.spans_dropped.inc()
            return
        q.append(span)
        if len(q) >= self.config.min_flush_spans:
            self._wake.set()

    async def run(self) -> None:
        """Flush forever: on the interval, or when enough spans wait."""
        interval = self.config.flush_interval or math.inf
        try:
            while True:
                with trio.move_on_after(interval) as timer:
                    await self._wake.wait()
                self._wake = trio.Event()
                if timer.cancelled_caught and self._queue:
                    self.timer_flushed.inc()
                await self.flush()
        finally:
            await self._disconnect()

    async def flush(self) -> None:
        """Send everything queued now, in reports of at most
        `max(min_flush_spans, 1000)` spans."""
        batch_max = max(self.config.min_flush_spans, 1000)
        while self._queue:
            n = min(len(self._queue), batch_max)
            batch = [self._queue.popleft() for _ in range(n)]
            await self._report(batch)

    async def _report(self, spans: list[Span]) -> None:
        cfg = self.config
        if self._stream is None and self._target() is None:
            # Envoy: the collector cluster is missing or has no healthy host.
            self.reports_skipped_no_cluster.inc()
            self.spans_dropped.inc(len(spans))
            return
        body = self._encode(spans)
        status: int | None = None
        with trio.move_on_after(cfg.collector_timeout or math.inf):
            # A kept-alive connection the collector closed meanwhile fails
            # before any answer: then once more on a new connection.
            for fresh in (self._stream is None, True):
                try:
                    status = await self._post(body)
                    break
                except (ProxyIOError, OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                    log.debug("tracing collector %s: %s", self._peer, exc)
                    await self._disconnect()
                    if fresh:
                        break
        if status is None:
            # Failed or timed out half way: the connection is not reusable.
            await self._disconnect()
            self.reports_failed.inc()
            self.spans_dropped.inc(len(spans))
        elif 200 <= status < 300:
            self.reports_sent.inc()
            self.spans_sent.inc(len(spans))
        else:
            self.reports_dropped.inc()
            self.spans_dropped.inc(len(spans))

    def _target(self) -> tuple[str, int] | None:
        """Where the next connection goes: the address, or a host of the
        collector cluster (None if it has no healthy host)."""
        cfg = self.config
        if cfg.collector is not None:
            return cfg.collector.host, cfg.collector.port
        cluster = self._clusters.get(cfg.collector_cluster or "") if self._clusters else None
        host = cluster.choose_host() if cluster is not None else None
        if host is None:
            return None
        ip, _, port = host.address.rpartition(":")
        return ip.strip("[]"), int(port)

    async def _disconnect(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _post(self, body: bytes) -> int:
        """POST one report on the kept-alive collector connection (opened
        if needed); the collector's status."""
        cfg = self.config
        if self._stream is None:
            target = self._target()
            if target is None:
                raise ProxyIOError("no collector host")
            self._peer = target
            host, port = target
            self._stream = await self._network.connect_tcp(
                host, port, timeout=cfg.collector_timeout
            )
            self._conn = h11.Connection(h11.CLIENT)
        stream, conn = self._stream, self._conn
        host, port = self._peer
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        req = h11.Request(
            method="POST",
            target=cfg.collector_path,
            headers=[
                ("host", authority),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("user-agent", f"trioproxy/{__version__}"),
            ],
        )
        await stream.send_all(
            (conn.send(req) or b"")
            + (conn.send(h11.Data(data=body)) or b"")
            + (conn.send(h11.EndOfMessage()) or b"")
        )
        status = 0
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = bytes(await stream.receive_some(16384))
                received += len(data)
                if received > _MAX_RESPONSE_BYTES:
                    raise h11.RemoteProtocolError("collector response too large")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("collector closed without a response")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self._disconnect()
        return status
