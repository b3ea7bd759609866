"""The cluster manager: the runtime side of `config.Cluster`.

Per worker, one `ClusterRuntime` per cluster holds its hosts, their
connection pools, its load balancer and its pre-built stat handles
(`cluster.<name>.*`). The router asks for a host with `choose_host()` and
accounts each request with `on_request_start()` / `on_response()` /
`on_request_end()` so active-request counts and stats stay exact even when a
request is cancelled (the router calls `on_request_end` in a `finally`).

Hosts are grouped by endpoint priority; `rebuild()` makes one balancer per
priority level (`lb.PriorityBalancer`: Envoy's priority loads and panic
threshold) over the healthy hosts, or all hosts of a level in panic. For
ring_hash and maglev, `choose_host(lb_hash)` takes the request's hash.

Discovery, health checks and outlier detection run as tasks in the cluster
manager's nursery and only flip `Host.healthy` and rebuild the balancer; the
request path never waits on them. Every host set — a static cluster's
endpoints, a DNS answer, an EDS file — goes through `set_endpoints()`, which
diffs it against the current hosts: hosts that stay keep their pools,
health and outlier state; new hosts get a pool, a health checker (and wait
for their first check, as Envoy's PENDING_ACTIVE_HC) and outlier tracking;
hosts that leave have their checker cancelled and their idle connections
closed (requests in flight on them finish).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import trio

from trioproxy.codec.grpc import grpc_status_of, service_and_method
from trioproxy.codec.stream import Headers, StreamInfo
from trioproxy.config import Cluster, Endpoint
from trioproxy.net.auto_pool import AutoPool
from trioproxy.net.h2_pool import Http2Pool
from trioproxy.net.network import Network
from trioproxy.net.pool import Http1Pool, PoolStats
from trioproxy.net.tls import ClientTls
from trioproxy.net.upstream import UpstreamPool
from trioproxy.observe.stats import Counter, StatsStore
from trioproxy.upstream.discovery import DISCOVERY
from trioproxy.upstream.eds import EDS_UNHEALTHY
from trioproxy.upstream.health_check import check_host
from trioproxy.upstream.lb import BALANCERS, PriorityBalancer
from trioproxy.upstream.membership import MembershipDiff, diff_endpoints, unique_endpoints
from trioproxy.upstream.outlier import OutlierDetector

__all__ = ["ClusterManager", "ClusterRuntime", "Host"]


_GRPC_METHODS_MAX = 1000


async def _sweep_outliers(detector: OutlierDetector) -> None:
    """Return ejected hosts to the balancer once their time is up."""
    while True:
        await trio.sleep(detector.config.interval)
        detector.sweep(trio.current_time())


class GrpcOutcome(Protocol):
    """What `on_grpc_response` reads from a finished stream."""

    info: StreamInfo
    response_trailers: Headers


class HealthCheckStats:
    """`cluster.<name>.health_check.*` (Envoy's names)."""

    def __init__(self, stats: StatsStore, prefix: str) -> None:
        p = f"{prefix}health_check."
        self.attempt = stats.counter(p + "attempt")
        self.success = stats.counter(p + "success")
        self.failure = stats.counter(p + "failure")
        self.network_failure = stats.counter(p + "network_failure")
        self.healthy = stats.gauge(p + "healthy")


class DiscoveryStats:
    """`cluster.<name>.update_*` and `membership_change` (Envoy's names)."""

    def __init__(self, stats: StatsStore, prefix: str) -> None:
        self.update_attempt = stats.counter(prefix + "update_attempt")
        self.update_success = stats.counter(prefix + "update_success")
        self.update_failure = stats.counter(prefix + "update_failure")
        self.update_rejected = stats.counter(prefix + "update_rejected")
        self.update_empty = stats.counter(prefix + "update_empty")
        self.update_no_rebuild = stats.counter(prefix + "update_no_rebuild")


class Host:
    __slots__ = (
        "active_requests",
        "address",
        "eds_unhealthy",
        "hc_pending",
        "hc_scope",
        "healthy",
        "hostname",
        "outlier_ejected",
        "pool",
        "priority",
        "rq_error",
        "rq_success",
        "rq_total",
        "weight",
    )

    def __init__(self, address: str, weight: int, pool: UpstreamPool, priority: int = 0) -> None:
        self.address = address  # "127.0.0.1:8081", as Envoy prints hosts
        self.weight = weight
        self.priority = priority  # 0 is the most preferred level (Envoy)
        self.pool = pool
        self.active_requests = 0
        self.healthy = True  # active health checks (none yet: always True)
        # Joined a running cluster with health checks: out until one check passes.
        self.hc_pending = False
        self.hc_scope: trio.CancelScope | None = None  # its health checker
        self.outlier_ejected = False  # passive: ejected by outlier detection
        # EDS health_status UNHEALTHY / DRAINING / TIMEOUT (failed_eds_health).
        self.eds_unhealthy = False
        self.hostname = ""  # the DNS name it was resolved from (DNS clusters)
        self.rq_total = 0
        self.rq_success = 0
        self.rq_error = 0

    @property
    def available(self) -> bool:
        """Whether the balancer may pick it: health checks pass, outlier
        detection has not ejected it, and EDS does not mark it unhealthy."""
        return self.healthy and not self.outlier_ejected and not self.eds_unhealthy


class ClusterRuntime:
    def __init__(
        self, config: Cluster, network: Network, stats: StatsStore, rng: random.Random
    ) -> None:
        self.config = config
        self.name = config.name
        p = f"cluster.{config.name}."
        self._prefix = p
        self._stats = stats
        pool_stats = PoolStats(
            cx_total=stats.counter(p + "upstream_cx_total"),
            cx_active=stats.gauge(p + "upstream_cx_active"),
            cx_connect_fail=stats.counter(p + "upstream_cx_connect_fail"),
            cx_connect_timeout=stats.counter(p + "upstream_cx_connect_timeout"),
            cx_destroy=stats.counter(p + "upstream_cx_destroy"),
            breakers=config.circuit_breakers,
            cx_overflow=stats.counter(p + "upstream_cx_overflow"),
            rq_pending_overflow=stats.counter(p + "upstream_rq_pending_overflow"),
            cx_open=stats.gauge(p + "circuit_breakers.default.cx_open"),
            rq_pending_open=stats.gauge(p + "circuit_breakers.default.rq_pending_open"),
        )
        self.pool_stats = pool_stats
        self._network = network
        self.network = network
        # TLS origination (stats `cluster.<name>.ssl.*`); None for plaintext.
        self.tls: ClientTls | None = None
        if config.tls is not None:
            try:
                self.tls = ClientTls(config.tls, stats, p)
            except OSError as exc:  # ssl.SSLError is an OSError too
                raise OSError(
                    exc.errno,
                    f"cluster {config.name!r} cannot load its TLS files: {exc.strerror or exc}",
                ) from exc
        # The hosts, in the order of the endpoints that made them. The list
        # object is shared with the outlier detector: updated in place.
        self.hosts: list[Host] = []
        self._endpoints: tuple[Endpoint, ...] = ()
        # Set by `attach()`: where host tasks (health checks, HTTP/2
        # connections) of hosts that join later are started.
        self._nursery: trio.Nursery | None = None
        self._rng = rng
        self.rq_total = stats.counter(p + "upstream_rq_total")
        self.rq_active = stats.gauge(p + "upstream_rq_active")
        self.rq_completed = stats.counter(p + "upstream_rq_completed")
        self.rq_timeout = stats.counter(p + "upstream_rq_timeout")
        self.rq_time = stats.histogram(p + "upstream_rq_time")
        self.cx_none_healthy = stats.counter(p + "upstream_cx_none_healthy")
        self.rq_rx_reset = stats.counter(p + "upstream_rq_rx_reset")
        self.rq_tx_reset = stats.counter(p + "upstream_rq_tx_reset")
        self.cx_protocol_error = stats.counter(p + "upstream_cx_protocol_error")
        self.membership_total = stats.gauge(p + "membership_total")
        self.membership_healthy = stats.gauge(p + "membership_healthy")
        self.membership_change = stats.counter(p + "membership_change")
        self.discovery: DiscoveryStats | None = None
        if config.type != "static":
            self.discovery = DiscoveryStats(stats, p)
        self.lb_healthy_panic = stats.counter(p + "lb_healthy_panic")
        # Whether the policy balances on a request hash (ring_hash, maglev):
        # only then does the router compute one from the route's hash policy.
        self.hash_based = BALANCERS[config.lb_policy].hash_based  # type: ignore[attr-defined]
        self._code_counters: dict[int, tuple[Counter, Counter]] = {}
        self._grpc: dict[tuple[str, str], tuple[Counter, Counter, Counter]] = {}
        # Retries and the request circuit breakers (Envoy's names).
        self.breakers = config.circuit_breakers
        self.rq_retry = stats.counter(p + "upstream_rq_retry")
        self.rq_per_try_timeout = stats.counter(p + "upstream_rq_per_try_timeout")
        self.rq_retry_success = stats.counter(p + "upstream_rq_retry_success")
        self.rq_retry_overflow = stats.counter(p + "upstream_rq_retry_overflow")
        self.rq_retry_limit_exceeded = stats.counter(p + "upstream_rq_retry_limit_exceeded")
        self.rq_pending_overflow = stats.counter(p + "upstream_rq_pending_overflow")
        cb = p + "circuit_breakers.default."
        self.cb_rq_open = stats.gauge(cb + "rq_open")
        self.cb_rq_retry_open = stats.gauge(cb + "rq_retry_open")
        self.retries_active = 0
        self.lb: PriorityBalancer
        self.hc_stats: HealthCheckStats | None = None
        if config.health_check is not None:
            self.hc_stats = HealthCheckStats(stats, p)
        self.outlier: OutlierDetector | None = None
        if config.outlier_detection is not None:
            self.outlier = OutlierDetector(
                config.outlier_detection,
                self.hosts,
                stats,
                p,
                on_change=self.rebuild,
                rng=rng,
            )
        # DNS and EDS clusters start empty: discovery fills them.
        self.set_endpoints(config.endpoints if config.type == "static" else ())
        self.rebuild()

    # ------------------------------------------------------------ membership

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> MembershipDiff:
        """Make `endpoints` the cluster's hosts (no checkpoint: the balancer
        is swapped whole, so a request sees the old set or the new one).

        Args:
            endpoints: the new host set (a repeated address counts once).

        Returns:
            What changed; an empty diff changes nothing.
        """
        new = unique_endpoints(endpoints)
        diff = diff_endpoints(self._endpoints, new)
        self._endpoints = new
        if not diff:
            return diff
        old = {h.address: h for h in self.hosts}
        hosts: list[Host] = []
        for ep in new:
            h = old.pop(str(ep.address), None)
            if h is None:
                h = Host(
                    str(ep.address),
                    ep.weight,
                    self._pool(self._network, self.config, ep, self.pool_stats, self.tls),
                    ep.priority,
                )
                if self._nursery is not None and self.config.health_check is not None:
                    h.healthy = False
                    h.hc_pending = True
                self._start_host(h)
            else:
                h.weight = ep.weight
                h.priority = ep.priority
            h.eds_unhealthy = ep.health_status in EDS_UNHEALTHY
            h.hostname = ep.hostname
            hosts.append(h)
        for h in old.values():
            if h.hc_scope is not None:
                h.hc_scope.cancel()
            h.pool.close()
        self.hosts[:] = hosts
        if self.tls is not None:
            self.tls.host_names = {ep.address.host: ep.hostname for ep in new if ep.hostname}
        if self.outlier is not None:
            self.outlier.sync_hosts(tuple(old.values()))
        if diff.membership_changed:
            self.membership_change.inc()
        self.rebuild()
        return diff

    def _start_host(self, h: Host) -> None:
        """Start a host's background tasks (nothing before `attach()`)."""
        nursery = self._nursery
        if nursery is None:
            return
        if isinstance(h.pool, Http2Pool | AutoPool):
            h.pool.nursery = nursery
        if self.config.health_check is not None:
            h.hc_scope = trio.CancelScope()
            nursery.start_soon(check_host, self, h, self._rng, h.hc_scope)

    def attach(self, nursery: trio.Nursery) -> None:
        """Run host tasks in `nursery` from now on, starting those of the
        current hosts (the cluster manager's nursery)."""
        self._nursery = nursery
        for h in self.hosts:
            self._start_host(h)

    @staticmethod
    def _pool(
        network: Network,
        config: Cluster,
        ep: Endpoint,
        pool_stats: PoolStats,
        tls: ClientTls | None,
    ) -> UpstreamPool:
        if config.protocol == "auto" and tls is not None:
            return AutoPool(
                network,
                ep.address.host,
                ep.address.port,
                stats=pool_stats,
                tls=tls,
                connect_timeout=config.connect_timeout,
                idle_timeout=config.idle_timeout,
                max_idle=config.max_idle_per_host,
                http1_parser=config.http1_parser,
            )
        if config.protocol == "http2":
            return Http2Pool(
                network,
                ep.address.host,
                ep.address.port,
                stats=pool_stats,
                connect_timeout=config.connect_timeout,
                idle_timeout=config.idle_timeout,
                tls=tls,
            )
        # "auto" without TLS has no ALPN to go by: HTTP/1.1 (the compiler
        # rejects that combination; a hand-built graph gets HTTP/1.1).
        return Http1Pool(
            network,
            ep.address.host,
            ep.address.port,
            stats=pool_stats,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout,
            max_idle=config.max_idle_per_host,
            tls=tls,
            http1_parser=config.http1_parser,
        )

    async def connect(self, host: Host) -> trio.abc.Stream:
        """A raw connection to `host` (TLS if the cluster has it), for the TCP
        proxy. Counts `upstream_cx_total` / `upstream_cx_connect_fail`; the
        caller calls `disconnected()` when it closes the stream.

        Raises:
            ConnectFailure / ConnectTimeout: the connection could not be made.
        """
        pool = host.pool
        st = self.pool_stats
        stream = await st.dial(
            self._network, pool.host, pool.port, timeout=self.config.connect_timeout, tls=self.tls
        )
        st.cx_total.inc()
        st.cx_active.inc()
        return stream

    def disconnected(self) -> None:
        """A connection from `connect()` was closed."""
        self.pool_stats.cx_active.dec()
        self.pool_stats.cx_destroy.inc()

    def rebuild(self) -> None:
        """Recompute the per-priority balancers (priority loads, panic) and the
        membership gauges after a health change."""
        healthy = [h for h in self.hosts if h.available]
        self.membership_total.set(len(self.hosts))
        self.membership_healthy.set(len(healthy))
        if self.hc_stats is not None:
            self.hc_stats.healthy.set(sum(1 for h in self.hosts if h.healthy))
        top = max((h.priority for h in self.hosts), default=0)
        levels: list[tuple[list[Host], list[Host]]] = [([], []) for _ in range(top + 1)]
        for h in self.hosts:
            levels[h.priority][0].append(h)
        for h in healthy:
            levels[h.priority][1].append(h)
        c = self.config
        self.lb = PriorityBalancer(
            levels,
            BALANCERS[c.lb_policy],
            rng=self._rng,
            panic_threshold=c.healthy_panic_threshold,
            on_panic=self.lb_healthy_panic.inc,
            choice_count=c.choice_count,
            active_request_bias=c.active_request_bias,
            minimum_ring_size=c.minimum_ring_size,
            maximum_ring_size=c.maximum_ring_size,
            table_size=c.maglev_table_size,
        )

    def choose_host(self, lb_hash: int | None = None, attempt: int = 0) -> Host | None:
        """A host for one try. `lb_hash` is the request's hash (hash-based
        policies; None: a random one); `attempt` > 0 asks a hash-based
        policy for another host, as Envoy's retry host predicate does."""
        host = self.lb.choose(lb_hash, attempt)
        if host is None:
            self.cx_none_healthy.inc()
        return host  # type: ignore[return-value]

    def on_request_start(self, host: Host) -> None:
        host.active_requests += 1
        host.rq_total += 1
        self.rq_total.inc()
        self.rq_active.inc()

    def on_request_end(self, host: Host) -> None:
        host.active_requests -= 1
        self.rq_active.dec()

    def on_response(self, host: Host, status: int, elapsed_ms: float) -> None:
        pair = self._code_counters.get(status)
        if pair is None:
            p = self._prefix
            pair = (
                self._stats.counter(f"{p}upstream_rq_{status}"),
                self._stats.counter(f"{p}upstream_rq_{status // 100}xx"),
            )
            self._code_counters[status] = pair
        pair[0].inc()
        pair[1].inc()
        self.rq_completed.inc()
        self.rq_time.record(elapsed_ms)
        if status >= 500:
            host.rq_error += 1
        else:
            host.rq_success += 1
        if self.outlier is not None:
            self.outlier.on_result(host, status, trio.current_time())

    def on_local_failure(self, host: Host) -> None:
        """A connect failure, reset or timeout before a response: for outlier
        detection, a 503 from the host (Envoy, local-origin errors not split)."""
        host.rq_error += 1
        if self.outlier is not None:
            self.outlier.on_result(host, 503, trio.current_time())

    def request_allowed(self) -> bool:
        """The max_requests breaker: False (count an overflow) when full."""
        if self.rq_active.value >= self.breakers.max_requests:
            self.rq_pending_overflow.inc()
            self.cb_rq_open.set(1)
            return False
        self.cb_rq_open.set(0)
        return True

    def retry_allowed(self) -> bool:
        """The retry breaker: `max_retries` concurrent retries, or the budget."""
        b = self.breakers
        if b.budget_percent is not None:
            limit = max(b.min_retry_concurrency, int(self.rq_active.value * b.budget_percent / 100))
        else:
            limit = b.max_retries
        if self.retries_active >= limit:
            self.cb_rq_retry_open.set(1)
            return False
        self.cb_rq_retry_open.set(0)
        return True

    def on_grpc_response(self, path: bytes, stream: GrpcOutcome) -> None:
        """Count a finished gRPC call: `cluster.<name>.grpc.<service>.<method>.
        success|failure|total` (Envoy's grpc_stats names). Success is
        grpc-status 0 in the trailers, or in the headers of a trailers-only
        response. At most `_GRPC_METHODS_MAX` methods get their own stats;
        the rest share `unknown_service.unknown_method`, so arbitrary paths
        cannot grow the stats store without bound."""
        sm = service_and_method(path)
        key = sm if sm is not None else ("unknown_service", "unknown_method")
        handles = self._grpc.get(key)
        if handles is None:
            if len(self._grpc) >= _GRPC_METHODS_MAX:
                key = ("unknown_service", "unknown_method")
                handles = self._grpc.get(key)
            if handles is None:
                p = f"{self._prefix}grpc.{key[0]}.{key[1]}."
                handles = (
                    self._stats.counter(p + "success"),
                    self._stats.counter(p + "failure"),
                    self._stats.counter(p + "total"),
                )
                self._grpc[key] = handles
        resp = stream.info.response
        status = None
        if resp is not None:
            status = grpc_status_of(stream.response_trailers, resp.headers)
        handles[0 if status == 0 else 1].inc()
        handles[2].inc()

    def close(self) -> None:
        for h in self.hosts:
            h.pool.close()


class ClusterManager:
    def __init__(
        self,
        clusters: tuple[Cluster, ...],
        network: Network,
        stats: StatsStore,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self.clusters: dict[str, ClusterRuntime] = {
            c.name: ClusterRuntime(c, network, stats, self._rng) for c in clusters
        }
        stats.gauge("cluster_manager.active_clusters").set(len(self.clusters))
        self._network = network
        self._stats = stats
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[ClusterRuntime, trio.CancelScope] = {}

    def get(self, name: str) -> ClusterRuntime | None:
        return self.clusters.get(name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background tasks of the clusters (HTTP/2 connections,
        health checks, outlier sweeps, certificate watchers, discovery) until
        cancelled. Each cluster's tasks run under its own cancel scope so that
        a reload can retire one cluster (`replace`) and keep the others."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Every DNS/EDS cluster has made its first discovery attempt
            # (answered or failed) before the server starts listening, as
            # Envoy's clusters finish warming first. They warm together.
            async with trio.open_nursery() as warming:
                for c in self.clusters.values():
                    warming.start_soon(self._start_cluster, c)
            task_status.started()
            await trio.sleep_forever()

    async def _start_cluster(self, c: ClusterRuntime) -> None:
        assert self._nursery is not None
        self._scopes[c] = await self._nursery.start(self._run_cluster, c)

    async def _run_cluster(
        self, c: ClusterRuntime, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                c.attach(nursery)
                if c.tls is not None:
                    nursery.start_soon(c.tls.watch)
                if c.outlier is not None:
                    nursery.start_soon(_sweep_outliers, c.outlier)
                discover = DISCOVERY.get(c.config.type)
                if discover is not None:
                    await nursery.start(discover, c, self._rng)
                task_status.started(scope)
                await trio.sleep_forever()

    async def replace(self, clusters: tuple[Cluster, ...], removed: tuple[str, ...] = ()) -> None:
        """Hot reload: `clusters` (new or changed) get new runtimes and pools
        for new requests (a DNS/EDS cluster once it has warmed); the runtimes
        they replace, and those `removed`, finish their requests in flight on
        their old pools, which close once idle (`_retire`)."""
        assert self._nursery is not None, "ClusterManager.run is not running"
        old: list[ClusterRuntime] = []
        for cfg in clusters:
            c = ClusterRuntime(cfg, self._network, self._stats, self._rng)
            self._scopes[c] = await self._nursery.start(self._run_cluster, c)
            prev = self.clusters.get(cfg.name)
            self.clusters[cfg.name] = c  # new requests see it at once
            if prev is not None:
                old.append(prev)
        for name in removed:
            prev = self.clusters.pop(name, None)
            if prev is not None:
                old.append(prev)
        self._stats.gauge("cluster_manager.active_clusters").set(len(self.clusters))
        for prev in old:
            self._nursery.start_soon(self._retire, prev)

    async def _retire(self, c: ClusterRuntime) -> None:
        # Requests in flight hold their ClusterRuntime and Host: wait for the
        # last one, then stop the cluster's tasks and close its pools.
        while any(h.active_requests for h in c.hosts):
            await trio.sleep(0.05)
        scope = self._scopes.pop(c, None)
        if scope is not None:
            scope.cancel()
        c.close()

    @property
    def rng(self) -> random.Random:
        return self._rng

    def close(self) -> None:
        for c in self.clusters.values():
            c.close()
