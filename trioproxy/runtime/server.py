"""`Server`: the root of one worker's task tree.

    trio.run(Server.run)
    └─ server nursery
       ├─ demo services (examples only)
       ├─ access-log sinks (flushers)
       ├─ admin listener
       ├─ stats flush (every stats_flush_interval: interval histograms, sinks)
       ├─ span exporters (one per tracing config; batches to the collector)
       ├─ certificate watchers (one per TLS context; poll file mtimes)
       └─ one accept loop per listener socket
          └─ connection task (one per downstream connection)

The server owns the stats store, the cluster manager and the router. A
connection task that raises an unexpected error is logged and counted; it
never takes the server down. Accept loops survive EMFILE/ENFILE/ENOBUFS/ENOMEM
by logging and backing off, as trio's own `serve_listeners` does.

A connection goes through the listener, as in Envoy:

    listener filters (e.g. tls_inspector), all within listener_filters_timeout
    → filter-chain selection (runtime.filter_chains; none: close, stat
      `no_filter_chain_match`)
    → the chain's TLS handshake, if it terminates TLS, within the chain's
      transport_socket_connect_timeout (stats `listener.<addr>.ssl.*`)
    → the chain's terminal network filter (HTTP connection manager, TCP proxy)
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

# Built-in filters register themselves on import.
import trioproxy.filters.http.health_check
import trioproxy.filters.network.http_connection_manager
import trioproxy.filters.network.tcp_proxy
import trioproxy.filters.network.tls_inspector  # noqa: F401
from trioproxy import __version__
from trioproxy.config import (
    AccessLog,
    FilterChain,
    HttpConnectionManager,
    Listener,
    Mesh,
    OverloadManager,
    SocketAddress,
    Tracing,
)
from trioproxy.config.diff import MeshDiff, diff_meshes
from trioproxy.filters.http.health_check import SERVER_HEALTH, ServerHealth
from trioproxy.filters.network.base import (
    LISTENER_FILTERS,
    NETWORK_FILTERS,
    DownstreamConnection,
    ListenerFilter,
    NetworkFilter,
)
from trioproxy.filters.network.http_connection_manager import HttpConnectionManagerFilter
from trioproxy.http.conn_manager import ConnectionManager
from trioproxy.http.router import Router
from trioproxy.net.network import Network, TrioNetwork, accept_queued, close_stream_nowait
from trioproxy.net.overload import OverloadState
from trioproxy.net.tls import HandshakeError, ServerTls, server_handshake
from trioproxy.observe.stats import Gauge, StatsStore
from trioproxy.observe.statsd import StatsdSink
from trioproxy.observe.tags import TagCache
from trioproxy.observe.tracing.exporter import SpanExporter
from trioproxy.observe.tracing.tracer import Tracer
from trioproxy.runtime.demo import serve_demo_service
from trioproxy.runtime.filter_chains import ChainSelector, ConnectionFacts
from trioproxy.runtime.layers import Runtime
from trioproxy.upstream.cluster_manager import ClusterManager

__all__ = ["Server"]

log = logging.getLogger("trioproxy")

# Accept errors that mean "out of a resource, try again later" (trio's list).
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1
# On a takeover, idle HTTP/1.1 keep-alive connections stay open this long
# for a request already on its way (answered with `connection: close`): the
# HTTP/2 drain notice, which is Envoy's drain_timeout default (5 s).
HANDOVER_IDLE_GRACE = 5.0
# On a takeover, connections are told to close this long after the old
# listening sockets stopped accepting (every worker gets the drain within a
# few milliseconds of the others).
HANDOVER_CLOSE_DELAY = 0.5


class ChainRuntime:
    """One filter chain of a listener: its TLS context and terminal filter."""

    def __init__(self, config: FilterChain, filter: NetworkFilter, tls: ServerTls | None) -> None:
        self.config = config
        self.filter = filter
        self.tls = tls


class ListenerRuntime:
    """One configured listener: its sockets, stats, listener filters and chains."""

    def __init__(
        self,
        config: Listener,
        chains: list[ChainRuntime],
        listener_filters: list[ListenerFilter],
        stats: StatsStore,
    ) -> None:
        self.config = config
        self.chains = chains
        self.listener_filters = listener_filters
        self.selector = ChainSelector([(c.config.match, c) for c in chains])
        p = f"listener.{config.stat_name}."
        self.cx_total = stats.counter(p + "downstream_cx_total")
        self.cx_active = stats.gauge(p + "downstream_cx_active")
        self.cx_destroy = stats.counter(p + "downstream_cx_destroy")
        self.cx_length = stats.histogram(p + "downstream_cx_length_ms")
        self.no_filter_chain_match = stats.counter(p + "no_filter_chain_match")
        self.cx_overflow = stats.counter(p + "downstream_cx_overflow")
        self.cx_overload_reject = stats.counter(p + "downstream_cx_overload_reject")
        self.pre_cx_timeout = stats.counter(p + "downstream_pre_cx_timeout")
        # Envoy's listener ssl stats exist only where a chain terminates TLS.
        self.ssl_connection_error = (
            stats.counter(p + "ssl.connection_error") if any(c.tls for c in chains) else None
        )
        self.sockets: list[trio.abc.Listener[trio.abc.Stream]] = []
        self.bound: SocketAddress | None = None
        # Cancelled to stop accepting (a drain); connections carry on.
        self.accept_scope = trio.CancelScope()

    @property
    def hcms(self) -> list[ConnectionManager]:
        """The HTTP connection managers of this listener's chains (for drains)."""
        return [
            c.filter.hcm for c in self.chains if isinstance(c.filter, HttpConnectionManagerFilter)
        ]

    @property
    def hcm(self) -> ConnectionManager:
        """The first chain's HTTP connection manager."""
        return self.hcms[0]


class Server:
    """Runs a compiled `Mesh`.

    Args:
        mesh: the config graph.
        network: the network door (real sockets by default).
        admin_address: overrides the mesh's admin address (`--admin`).
        options: command-line options shown by `/server_info`.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        network: Network | None = None,
        admin_address: SocketAddress | None = None,
        options: dict[str, Any] | None = None,
        drain_time: float = 600.0,
    ) -> None:
        self.mesh = mesh
        # Envoy's --drain-time-s: how long a graceful drain waits for
        # connections to finish before the server stops anyway.
        self.drain_time = drain_time
        self.draining = False
        self._drained = trio.Event()
        self.network: Network = network or TrioNetwork()
        self.stats = StatsStore()
        self.options = dict(options or {})
        self.version = __version__
        self.hostname = socket.gethostname()
        self.state = "PRE_INITIALIZING"
        self.start_time = time.time()
        self.admin_address = admin_address or (mesh.admin.address if mesh.admin else None)
        self.admin_token = mesh.admin.token if mesh.admin else None
        self.admin_bound: SocketAddress | None = None
        # `serve --takeover`: bind admin later (`start_admin`), once the old
        # process has given its admin address up.
        self.admin_deferred = False
        # Cancelled to stop accepting on admin (a takeover frees its port).
        self.admin_accept_scope = trio.CancelScope()
        self.listeners: dict[str, ListenerRuntime] = {}
        self.demo_ports: dict[str, int] = {}
        self.clusters = ClusterManager(mesh.clusters, self.network, self.stats)
        # Envoy's runtime: the mesh's static layer, an admin layer on top.
        self.runtime = Runtime(mesh.runtime, rng=self.clusters.rng)
        self.router = Router(self.clusters, runtime=self.runtime)
        # Tag extraction for tagged outputs (/stats/prometheus), once per name.
        self.stat_tags = TagCache()
        self.stats_sinks: list[StatsdSink] = []
        # One span exporter per distinct tracing config (HCMs share them).
        self.span_exporters: dict[Tracing, SpanExporter] = {}
        # `/healthcheck/fail|ok` flip it; the health_check filter reads it.
        self.health = ServerHealth()
        self._shutdown = trio.Event()
        self._access_logs: Any = None
        self.connection_errors = self.stats.counter("server.connection_task_errors")
        self.overload = OverloadState(mesh.overload)
        # Workers serving the mesh (`--workers`; one per process for now).
        self.stats.gauge("server.concurrency").set(int(self.options.get("concurrency", 1)))
        self.stats.gauge("server.live").set(0)
        # Hot reload: `mesh_loader` compiles the mesh afresh (set by the CLI,
        # which owns the DSL); admin `POST /reload` and SIGHUP call it.
        self.mesh_loader: Callable[[], Mesh] | None = None
        self.reload_success = self.stats.counter("server.reload_success")
        self.reload_failed = self.stats.counter("server.reload_failed")
        self._reload_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, *, graceful: bool = False, idle_grace: float = 0.0) -> None:
        """Ask `run()` to stop: at once (admin `POST /quitquitquit`), or,
        with `graceful` (SIGTERM, SIGINT), after draining: stop accepting,
        let open connections finish within `drain_time`, then stop.
        `idle_grace`: see `ConnectionManager.drain`."""
        if graceful:
            self.drain_listeners(idle_grace=idle_grace)
        self._shutdown.set()

    def drain_listeners(self, *, idle_grace: float = 0.0) -> None:
        """Stop accepting on every listener and drain every connection
        manager (admin `POST /drain_listeners`). No checkpoint."""
        if not self.draining:
            log.info("draining listeners")
        self.draining = True
        self.state = "DRAINING"
        for lr in self.listeners.values():
            lr.accept_scope.cancel()
        if idle_grace > 0 and self._nursery is not None:
            # A handover: tell clients to go (connection: close, GOAWAY) only
            # once every old listening socket (in every worker) is closed, or
            # their reconnects land in a queue that is about to be reset.
            self._nursery.start_soon(self._drain_connections_later, idle_grace)
        else:
            self._drain_connections(idle_grace)
        self._check_drained()

    def _drain_connections(self, idle_grace: float) -> None:
        for lr in self.listeners.values():
            for hcm in lr.hcms:
                hcm.drain(idle_grace=idle_grace)

    async def _drain_connections_later(self, idle_grace: float) -> None:
        await trio.sleep(HANDOVER_CLOSE_DELAY)
        self._drain_connections(idle_grace)

    def hand_over(self) -> None:
        """Another trioproxy has bound our listeners beside ours (SO_REUSEPORT)
        and asks for the handover (admin `POST /takeover`): close the admin
        listener so that it can bind the admin address, and drain gracefully
        as SIGTERM does. No checkpoint."""
        log.info("taken over by a new process; draining")
        self.admin_accept_scope.cancel()
        self.shutdown(graceful=True, idle_grace=HANDOVER_IDLE_GRACE)

    async def start_admin(self) -> SocketAddress:
        """Bind and serve admin now (after `run` started with `admin_deferred`).

        Raises:
            OSError: the admin address cannot be bound (e.g. still in use).
        """
        from trioproxy.observe.admin import serve_admin

        assert self._nursery is not None, "Server.run is not running"
        assert self.admin_address is not None
        self.admin_bound = await self._nursery.start(serve_admin, self, self.admin_address)
        return self.admin_bound

    # ------------------------------------------------------------------ reload

    async def reload_from_source(self) -> MeshDiff | None:
        """Compile the mesh again with `mesh_loader` and `reload` it. An
        invalid mesh is logged (every error with its file:line), counted in
        `server.reload_failed`, and the old config keeps serving: None."""
        if self.mesh_loader is None:
            raise RuntimeError("this server has no mesh loader")
        try:
            mesh = self.mesh_loader()
        except Exception as exc:
            self.reload_failed.inc()
            log.error("reload failed; the old config keeps serving:\n%s", exc)
            return None
        return await self.reload(mesh)

    async def reload(self, mesh: Mesh) -> MeshDiff | None:
        """Hot reload to `mesh`: diff by name (`diff_meshes`); unchanged
        listeners and clusters are untouched; changed routes apply to new
        requests at once; changed and new clusters get new pools while the
        old ones finish their requests; new and changed listeners bind
        (SO_REUSEPORT, alongside the old socket); removed and replaced ones
        stop accepting and drain. Returns the diff, or None if applying it
        failed (a listener cannot bind, ...): counted as a failed reload.

        Top-level settings other than listeners and clusters (admin, stats
        sinks, overload, runtime, demo services) are not reloaded."""
        async with self._reload_lock:
            assert self._nursery is not None, "Server.run is not running"
            diff = diff_meshes(self.mesh, mesh)
            try:
                await self._apply(mesh, diff)
            except Exception as exc:
                self.reload_failed.inc()
                log.error("reload failed while applying it: %s", exc)
                return None
            self.mesh = mesh
            self.reload_success.inc()
            log.info("reloaded: %s", "; ".join(diff.lines) if diff.lines else "no change")
            return diff

    async def _apply(self, mesh: Mesh, diff: MeshDiff) -> None:
        assert self._nursery is not None
        new_l = {lc.name: lc for lc in mesh.listeners}
        new_c = {c.name: c for c in mesh.clusters}
        # Clusters first, so that routes and listeners never name a missing one.
        if diff.added_clusters or diff.changed_clusters:
            await self.clusters.replace(
                tuple(new_c[n] for n in (*diff.added_clusters, *diff.changed_clusters))
            )
        for name in diff.route_listeners:
            lr = self.listeners[name]
            lc = new_l[name]
            configs = [
                chain.filters[-1].route_config
                for chain in lc.filter_chains
                if chain.filters and isinstance(chain.filters[-1], HttpConnectionManager)
            ]
            for hcm, rc in zip(lr.hcms, configs, strict=True):
                hcm.swap_routes(rc)
            lr.config = lc
        for name in (*diff.changed_listeners, *diff.added_listeners):
            old = self.listeners.get(name)
            await self._start_listener(self._nursery, new_l[name])
            if old is not None:
                self._retire_listener(old)
        for name in diff.removed_listeners:
            self._retire_listener(self.listeners.pop(name))
        if diff.removed_clusters:
            await self.clusters.replace((), diff.removed_clusters)
        stats = self.stats
        stats.counter("listener_manager.listener_added").inc(len(diff.added_listeners))
        stats.counter("listener_manager.listener_modified").inc(len(diff.changed_listeners))
        stats.counter("listener_manager.listener_removed").inc(len(diff.removed_listeners))
        stats.counter("cluster_manager.cluster_added").inc(len(diff.added_clusters))
        stats.counter("cluster_manager.cluster_modified").inc(len(diff.changed_clusters))
        stats.counter("cluster_manager.cluster_removed").inc(len(diff.removed_clusters))

    def _retire_listener(self, lr: ListenerRuntime) -> None:
        # Stop accepting (the accept loop closes its socket) and drain the
        # connections; the accept loop's task ends with its last connection.
        lr.accept_scope.cancel()
        for hcm in lr.hcms:
            hcm.drain()

    def _check_drained(self) -> None:
        if self.draining and self.downstream_connections() == 0:
            self._drained.set()

    def listener_address(self, name: str) -> SocketAddress:
        """The address a listener is bound to (the real port if 0 was configured)."""
        bound = self.listeners[name].bound
        assert bound is not None, f"listener {name!r} is not bound"
        return bound

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        self.state = "INITIALIZING"
        # Every task started below (connections included) inherits this.
        SERVER_HEALTH.set(self.health)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.clusters.run)
                for svc in self.mesh.demo_services:
                    try:
                        self.demo_ports[svc.name] = await nursery.start(
                            serve_demo_service, svc, self.network
                        )
                    except OSError as exc:
                        raise OSError(
                            exc.errno,
                            f"demo service {svc.name!r} cannot listen on {svc.address}: "
                            f"{exc.strerror or exc}",
                        ) from exc
                self._access_logs = self._make_access_logs()
                if self._access_logs is not None:
                    nursery.start_soon(self._access_logs.run)
                for lc in self.mesh.listeners:
                    await self._start_listener(nursery, lc)
                if self.admin_address is not None and not self.admin_deferred:
                    await self.start_admin()
                nursery.start_soon(self._uptime)
                self._open_stats_sinks()
                nursery.start_soon(self._flush_stats)
                if self.mesh.overload is not None:
                    nursery.start_soon(self._overload_manager, self.mesh.overload)
                self.state = "LIVE"
                self.stats.gauge("server.live").set(1)
                log.info(
                    "trioproxy %s live: %s",
                    self.version,
                    ", ".join(f"{n} on {lr.bound}" for n, lr in self.listeners.items()),
                )
                task_status.started(self)
                await self._shutdown.wait()
                self.state = "DRAINING"
                if self.draining:
                    # Graceful: exit as soon as the last connection closes.
                    with trio.move_on_after(self.drain_time) as waited:
                        await self._drained.wait()
                    if waited.cancelled_caught:
                        log.info(
                            "drain time (%gs) over with %d connection(s) open; closing them",
                            self.drain_time,
                            self.downstream_connections(),
                        )
                nursery.cancel_scope.cancel()
        finally:
            self.clusters.close()
            for sink in self.stats_sinks:
                sink.close()
            self.stats.gauge("server.live").set(0)

    async def _uptime(self) -> None:
        uptime = self.stats.gauge("server.uptime")
        mem = self.stats.gauge("server.memory_allocated")
        while True:
            uptime.set(int(time.time() - self.start_time))
            mem.set(_rss_bytes())
            await trio.sleep(1)

    def _open_stats_sinks(self) -> None:
        for cfg in self.mesh.stats_sinks:
            try:
                sender = self.network.open_udp(cfg.address.host, cfg.address.port)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"statsd sink cannot use {cfg.address}: {exc.strerror or exc}"
                ) from exc
            self.stats_sinks.append(StatsdSink(cfg, self.stats, sender))

    async def _flush_stats(self) -> None:
        """Envoy's stats flush: every `stats_flush_interval`, close the
        histograms' interval and hand the stats to every sink."""
        while True:
            await trio.sleep(self.mesh.stats_flush_interval)
            self.flush_stats()

    def flush_stats(self) -> None:
        """One stats flush (the loop above; tests may call it directly)."""
        self.stats.close_intervals()
        if self.stats_sinks:
            samples = self.stats.take_samples()
            for sink in self.stats_sinks:
                sink.flush(samples)

    def downstream_connections(self) -> int:
        """Active downstream connections on every listener."""
        return sum(lr.cx_active.value for lr in self.listeners.values())

    async def _overload_manager(self, config: OverloadManager) -> None:
        """Sample the resource monitors and flip the overload actions."""
        state = self.overload
        gauges = {
            name: self.stats.gauge(f"overload.envoy.overload_actions.{name}.active")
            for name, _ in config.actions
        }
        pressure: dict[str, Gauge] = {}
        while True:
            state.update(
                rss_bytes=_rss_bytes() if config.max_heap_bytes else 0,
                downstream_connections=self.downstream_connections(),
            )
            for name, gauge in gauges.items():
                gauge.set(1 if state.active(name) else 0)
            for resource, value in state.pressures.items():
                g = pressure.get(resource)
                if g is None:
                    g = pressure[resource] = self.stats.gauge(
                        f"overload.envoy.resource_monitors.{resource}.pressure"
                    )
                g.set(min(100, int(value * 100)))
            await trio.sleep(config.refresh_interval)

    def _make_access_logs(self) -> Any:
        configs = [
            al
            for lc in self.mesh.listeners
            for chain in lc.filter_chains
            for f in chain.filters
            for al in getattr(f, "access_logs", ())
        ]
        if not configs:
            return None
        from trioproxy.observe.access_log import AccessLogManager

        return AccessLogManager(hostname=self.hostname, runtime=self.runtime)

    def reopen_access_logs(self) -> None:
        """Reopen every access-log file on its next flush (log rotation:
        SIGUSR1 and admin `POST /reopen_logs`, as Envoy)."""
        if self._access_logs is not None:
            self._access_logs.reopen()

    def _access_loggers_for(self, hcm: HttpConnectionManager) -> list[Any]:
        return self.access_loggers(hcm.access_logs)

    def access_loggers(self, configs: Sequence[AccessLog]) -> list[Any]:
        """Loggers for access-log configs (the filters' `FilterContext`)."""
        if self._access_logs is None:
            return []
        return [self._access_logs.logger(al) for al in configs]

    def tracer(self, config: HttpConnectionManager) -> Tracer | None:
        """The tracer of an HCM. A new tracing config gets its exporter,
        started in the server nursery (at start, or by a reload)."""
        cfg = config.tracing
        if cfg is None:
            return None
        exporter = self.span_exporters.get(cfg)
        if exporter is None:
            exporter = self.span_exporters[cfg] = SpanExporter(
                cfg, self.network, self.stats, self.clusters
            )
            if self._nursery is not None:
                self._nursery.start_soon(exporter.run)
        return Tracer(cfg, exporter, self.stats, config.stat_prefix, node_id=self.hostname)

    async def _chain(self, lc: Listener, index: int, chain: FilterChain) -> ChainRuntime:
        prefix = f"listener.{lc.stat_name}."
        tls = None
        if chain.tls is not None:
            cfg = chain.tls
            what = f"listener {lc.name!r} chain {chain.name or index}"
            # Reading certificate files is disk I/O: off the event loop.
            try:
                tls = await ServerTls.open(cfg, self.stats, prefix, what)
            except OSError as exc:  # ssl.SSLError is an OSError too
                # One line for `trioproxy serve`, like a port in use.
                raise OSError(
                    exc.errno, f"{what} cannot load its TLS certificates: {exc.strerror or exc}"
                ) from exc
        terminal = chain.filters[-1]
        factory = NETWORK_FILTERS[type(terminal)]
        return ChainRuntime(chain, factory(terminal, self, chain, prefix), tls)

    async def _start_listener(self, nursery: trio.Nursery, lc: Listener) -> None:
        prefix = f"listener.{lc.stat_name}."
        chains = [
            await self._chain(lc, i, chain)
            for i, chain in enumerate(lc.filter_chains)
            if chain.filters
        ]
        listener_filters = [
            LISTENER_FILTERS[type(lf)](lf, self, prefix) for lf in lc.listener_filters
        ]
        lr = ListenerRuntime(lc, chains, listener_filters, self.stats)
        for c in chains:
            if c.tls is not None:
                nursery.start_soon(c.tls.watch)
        try:
            sock, (host, port) = await self.network.listen_tcp(lc.address.host, lc.address.port)
        except OSError as exc:
            # Same errno; a message naming the listener, for `trioproxy serve`.
            raise OSError(
                exc.errno,
                f"listener {lc.name!r} cannot listen on {lc.address}: {exc.strerror or exc}",
            ) from exc
        lr.sockets.append(sock)
        lr.bound = SocketAddress(host=host, port=port)
        self.listeners[lc.name] = lr
        nursery.start_soon(self._accept_loop, lr, sock)

    async def _accept_loop(
        self, lr: ListenerRuntime, sock: trio.abc.Listener[trio.abc.Stream]
    ) -> None:
        async with trio.open_nursery() as conns:
            try:
                with lr.accept_scope:
                    await self._accept(lr, sock, conns)
                # A drain, not the server stopping: take the connections
                # already queued on this socket before closing it, or the
                # kernel resets them (with SO_REUSEPORT, a successor's socket
                # takes the new ones; see docs/decisions.md, takeover).
                self._accept_backlog(lr, sock, conns)
            finally:
                # Stopped accepting (a drain, or the server stopping): close
                # the listening socket now; open connections carry on.
                await trio.aclose_forcefully(sock)

    async def _accept(
        self,
        lr: ListenerRuntime,
        sock: trio.abc.Listener[trio.abc.Stream],
        conns: trio.Nursery,
    ) -> None:
        while True:
            try:
                stream = await sock.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                    log.error(
                        "accept on %s failed (%s); retrying in %.1fs",
                        lr.bound,
                        errno.errorcode.get(exc.errno or 0, exc),
                        _ACCEPT_BACKOFF,
                    )
                    await trio.sleep(_ACCEPT_BACKOFF)
                    continue
                raise
            self._admit(lr, stream, conns)

    def _accept_backlog(
        self,
        lr: ListenerRuntime,
        sock: trio.abc.Listener[trio.abc.Stream],
        conns: trio.Nursery,
    ) -> None:
        """Serve every connection still queued on `sock` (net.accept_queued)."""
        taken, failure = accept_queued(sock)
        if failure:
            log.error("accepting the backlog of %s failed: %s", lr.bound, failure)
        for stream in taken:
            self._admit(lr, stream, conns)
        if taken:
            log.info("took %d queued connection(s) from %s before closing it", len(taken), lr.bound)

    def _admit(self, lr: ListenerRuntime, stream: trio.abc.Stream, conns: trio.Nursery) -> None:
        """Serve an accepted connection, or close it at once over a limit."""
        limit = lr.config.max_connections
        # Over a limit: closed at accept, before any byte is read (Envoy's
        # listener limit / stop_accepting_connections).
        if limit is not None and lr.cx_active.value >= limit:
            lr.cx_overflow.inc()
        elif self.overload.stop_connections:
            lr.cx_overload_reject.inc()
        else:
            conns.start_soon(self._connection, lr, stream)
            return
        close_stream_nowait(stream)

    @property
    def rng(self) -> random.Random:
        return self.clusters.rng

    async def _connection(self, lr: ListenerRuntime, stream: trio.abc.Stream) -> None:
        lr.cx_total.inc()
        lr.cx_active.inc()
        started = trio.current_time()
        try:
            try:
                remote, local = self.network.addresses(stream)
            except OSError:
                return  # the peer left before we looked
            conn = DownstreamConnection(remote=remote, local=local)
            if lr.listener_filters:
                with trio.move_on_after(lr.config.listener_filters_timeout or math.inf) as scope:
                    for lf in lr.listener_filters:
                        carry_on = await lf.on_accept(stream, conn)
                        if carry_on is None:
                            return
                        stream = carry_on
                if scope.cancelled_caught:
                    lr.pre_cx_timeout.inc()
                    return
            chain = lr.selector.select(
                ConnectionFacts(
                    destination_ip=conn.local_ip,
                    destination_port=conn.local_port,
                    server_name=conn.server_name,
                    transport_protocol=conn.transport_protocol,
                    application_protocols=conn.requested_alpn,
                    source_ip=conn.remote_ip,
                    source_port=conn.remote_port,
                )
            )
            if chain is None:
                lr.no_filter_chain_match.inc()
                return
            if chain.tls is not None:
                timeout = chain.config.transport_socket_connect_timeout or math.inf
                with trio.move_on_after(timeout) as scope:
                    try:
                        stream, conn.tls = await server_handshake(
                            stream, chain.tls, sni=conn.server_name
                        )
                    except HandshakeError as exc:
                        assert lr.ssl_connection_error is not None
                        lr.ssl_connection_error.inc()
                        log.debug("TLS handshake from %s failed: %s", remote, exc)
                        return
                if scope.cancelled_caught:
                    assert lr.ssl_connection_error is not None
                    lr.ssl_connection_error.inc()
                    return
            await chain.filter.serve(stream, conn)
        except Exception:
            # A bug must cost one connection, never the server.
            self.connection_errors.inc()
            log.exception("connection task on %s failed", lr.bound)
        finally:
            lr.cx_active.dec()
            lr.cx_destroy.inc()
            lr.cx_length.record((trio.current_time() - started) * 1000)
            if self.draining:
                self._check_drained()
            await trio.aclose_forcefully(stream)


def _rss_bytes() -> int:
    """Resident memory from procfs (a memory read, not disk I/O); 0 elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
