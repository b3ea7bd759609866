"""Active HTTP health checking: one checker task per host, in the cluster
manager's nursery.

Every `interval` (plus up to `interval_jitter`; `no_traffic_interval`
while the cluster has never had traffic, as in Envoy) a checker opens a
fresh connection, sends `GET <path>` with `Host: <host>` and
`user-agent: Envoy/HC`, and waits at most `timeout` for a status in
`expected_statuses`. `unhealthy_threshold` failures in a row take the host
out of the load balancer (`/failed_active_hc` in /clusters),
`healthy_threshold` successes in a row bring it back. Stats follow Envoy:
`cluster.<name>.health_check.attempt|success|failure|network_failure|
verify_cluster|healthy` (the last a gauge of healthy hosts).

The threshold logic is `HealthState`, pure and tested on its own; the probe
uses the cluster's network door, so tests run it on a `MemoryNetwork` with
`MockClock`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import h11
import trio

from trioproxy.config import HealthCheck
from trioproxy.net.errors import ProxyIOError
from trioproxy.net.network import Network

if TYPE_CHECKING:
    from trioproxy.upstream.cluster_manager import ClusterRuntime, Host

__all__ = ["HealthState", "check_once", "run_health_checks"]


class HealthState:
    """Consecutive successes/failures against the thresholds."""

    __slots__ = ("_failures", "_successes", "config", "healthy")

    def __init__(self, config: HealthCheck, *, healthy: bool = True) -> None:
        self.config = config
        self.healthy = healthy
        self._failures = 0
        self._successes = 0

    def record(self, ok: bool) -> bool:
        """Record one check; True if the host's health changed."""
        if ok:
            self._failures = 0
            self._successes += 1
            if not self.healthy and self._successes >= self.config.healthy_threshold:
                self.healthy = True
                return True
        else:
            self._successes = 0
            self._failures += 1
            if self.healthy and self._failures >= self.config.unhealthy_threshold:
                self.healthy = False
                return True
        return False


async def check_once(network: Network, host: str, port: int, cfg: HealthCheck, vhost: str) -> int:
    """One probe: the response status, or 0 when the network failed or timed out."""
    with trio.move_on_after(cfg.timeout):
        try:
            stream = await network.connect_tcp(host, port, timeout=cfg.timeout)
        except ProxyIOError:
            return 0
        except OSError:
            return 0
        conn = h11.Connection(h11.CLIENT)
        try:
            request = h11.Request(
                method="GET",
                target=cfg.path,
                headers=[("host", vhost), ("user-agent", "Envoy/HC"), ("connection", "close")],
            )
            await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if isinstance(event, h11.Response):
                    return event.status_code
                if isinstance(event, h11.ConnectionClosed):
                    return 0
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return 0
        finally:
            await trio.aclose_forcefully(stream)
    return 0


def _expected(cfg: HealthCheck, status: int) -> bool:
    return any(lo <= status < hi for lo, hi in cfg.expected_statuses)


async def _check_host(
    cluster: ClusterRuntime,
    host: Host,
    network: Network,
    cfg: HealthCheck,
    rng: random.Random,
    on_change: Callable[[], None],
) -> None:
    state = HealthState(cfg, healthy=host.healthy)
    vhost = cfg.host or cluster.name
    addr_host, _, addr_port = host.address.rpartition(":")
    addr_host = addr_host.strip("[]")
    port = int(addr_port)
    stats = cluster.hc_stats
    assert stats is not None
    while True:
        stats.attempt.inc()
        status = await check_once(network, addr_host, port, cfg, vhost)
        ok = _expected(cfg, status)
        if ok:
            stats.success.inc()
        else:
            stats.failure.inc()
            if status == 0:
                stats.network_failure.inc()
        if state.record(ok):
            host.healthy = state.healthy
            on_change()
        # A cluster that never had traffic is checked less often (Envoy).
        interval = cfg.interval if cluster.rq_total.value else cfg.no_traffic_interval
        await trio.sleep(interval + rng.uniform(0, cfg.interval_jitter))


async def run_health_checks(cluster: ClusterRuntime, network: Network, rng: random.Random) -> None:
    """Check every host of `cluster` until cancelled."""
    cfg = cluster.config.health_check
    if cfg is None:
        return
    async with trio.open_nursery() as nursery:
        for host in cluster.hosts:
            nursery.start_soon(_check_host, cluster, host, network, cfg, rng, cluster.rebuild)
