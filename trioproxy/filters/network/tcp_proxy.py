"""Envoy's tcp_proxy network filter: bytes both ways between a client and one upstream.

Per connection:

    pick the cluster (or one of `weighted_clusters` by weight)
    → pick a host with the cluster's load balancer (none: flag UH)
    → connect (the cluster's connect_timeout and TLS; up to
      `max_connect_attempts` hosts, Envoy's default 1; all failed: flag UF,
      and URX when more than one attempt was allowed)
    → relay, one task per direction, under one idle cancel scope whose
      deadline is pushed forward whenever a byte moves (Envoy's
      `idle_timeout`, 1 h; 0 disables)

Half-close passes through: when one side sends EOF, the other side's write
half is shut (`send_eof`) and the opposite direction keeps flowing until it
ends too. Only plain TCP streams can half-close; a TLS-terminated side
cannot send EOF without closing (trio's `SSLStream` has no half-close), so
EOF towards it closes the whole connection (docs/decisions.md). A reset or
write failure on either side closes both.

Stats (Envoy's tcp_proxy names under `tcp.<stat_prefix>.`):
`downstream_cx_total`, `downstream_cx_no_route`, `downstream_cx_rx_bytes_total`,
`downstream_cx_tx_bytes_total`, `idle_timeout`;
connect failures are the cluster's `upstream_cx_connect_fail`. One
access-log line per connection; HTTP operators print "-".
"""

from __future__ import annotations

import bisect
import itertools
import math
import time

import trio

from trioproxy.codec.stream import StreamInfo
from trioproxy.config import FilterChain, TcpProxy
from trioproxy.filters.network.base import (
    DownstreamConnection,
    FilterContext,
    NetworkFilter,
    network_filter,
)
from trioproxy.net.errors import ConnectFailure
from trioproxy.net.network import RECEIVE_SIZE, close_stream_nowait
from trioproxy.upstream.cluster_manager import ClusterRuntime, Host

__all__ = ["TcpProxyFilter"]

_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Idle:
    """The connection's idle scope and the deadline pushed on activity."""

    __slots__ = ("scope", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout if timeout > 0 else math.inf
        self.scope = trio.CancelScope(deadline=trio.current_time() + self.timeout)

    def touch(self) -> None:
        if self.timeout != math.inf:
            self.scope.deadline = trio.current_time() + self.timeout


@network_filter(TcpProxy)
class TcpProxyFilter(NetworkFilter):
    def __init__(
        self, config: TcpProxy, ctx: FilterContext, chain: FilterChain, listener_prefix: str
    ) -> None:
        self.config = config
        self.ctx = ctx
        p = f"tcp.{config.stat_prefix}."
        c = ctx.stats.counter
        self.cx_total = c(p + "downstream_cx_total")
        self.cx_no_route = c(p + "downstream_cx_no_route")
        self.rx_bytes = c(p + "downstream_cx_rx_bytes_total")
        self.tx_bytes = c(p + "downstream_cx_tx_bytes_total")
        self.idle_timeout = c(p + "idle_timeout")
        self.loggers = ctx.access_loggers(config.access_logs)
        self._weights = list(itertools.accumulate(w.weight for w in config.weighted_clusters))

    def _cluster(self) -> ClusterRuntime | None:
        cfg = self.config
        name = cfg.cluster
        if cfg.weighted_clusters:
            x = self.ctx.rng.randrange(self._weights[-1])
            name = cfg.weighted_clusters[bisect.bisect_right(self._weights, x)].name
        return self.ctx.clusters.get(name) if name else None

    async def serve(self, stream: trio.abc.Stream, conn: DownstreamConnection) -> None:
        self.cx_total.inc()
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=trio.current_time(),
            protocol="",
            downstream_remote_address=conn.remote,
            downstream_local_address=conn.local,
        )
        try:
            cluster = self._cluster()
            if cluster is None:
                self.cx_no_route.inc()
                info.add_flag("NC")
                return
            info.upstream_cluster = cluster.name
            connected = await self._connect(cluster, info)
            if connected is None:
                return
            host, upstream = connected
            host.active_requests += 1
            try:
                await self._relay(stream, upstream, info)
            finally:
                host.active_requests -= 1
                close_stream_nowait(upstream)
                cluster.disconnected()
        finally:
            info.end_monotonic = trio.current_time()
            for logger in self.loggers:
                logger.log(info)

    async def _connect(
        self, cluster: ClusterRuntime, info: StreamInfo
    ) -> tuple[Host, trio.abc.Stream] | None:
        attempts = max(1, self.config.max_connect_attempts)
        for _ in range(attempts):
            host = cluster.choose_host()
            if host is None:
                info.add_flag("UH")
                return None
            info.upstream_host = host.address
            try:
                return host, await cluster.connect(host)
            except ConnectFailure as exc:
                info.upstream_transport_failure_reason = f"{exc.reason}: {exc}"
        info.add_flag("UF")
        if attempts > 1:
            info.add_flag("URX")
        return None

    async def _relay(self, down: trio.abc.Stream, up: trio.abc.Stream, info: StreamInfo) -> None:
        idle = _Idle(self.config.idle_timeout)
        with idle.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, down, up, info, True, idle, nursery.cancel_scope)
                nursery.start_soon(self._pump, up, down, info, False, idle, nursery.cancel_scope)
        if idle.scope.cancelled_caught:
            self.idle_timeout.inc()

    async def _pump(
        self,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        info: StreamInfo,
        from_downstream: bool,
        idle: _Idle,
        both: trio.CancelScope,
    ) -> None:
        """Copy `src` to `dst` until EOF (then half-close `dst`) or an error
        (then end both directions)."""
        counter = self.rx_bytes if from_downstream else self.tx_bytes
        while True:
            try:
                data = await src.receive_some(RECEIVE_SIZE)
            except _IO_ERRORS:
                both.cancel()
                return
            if not data:
                break
            idle.touch()
            n = len(data)
            counter.inc(n)
            if from_downstream:
                info.bytes_received += n
            else:
                info.bytes_sent += n
            try:
                await dst.send_all(data)
            except _IO_ERRORS:
                both.cancel()
                return
            idle.touch()
        if not isinstance(dst, trio.abc.HalfCloseableStream):
            both.cancel()  # cannot pass EOF on: close the connection
            return
        try:
            await dst.send_eof()
        except _IO_ERRORS:
            both.cancel()
