"""Active HTTP health checking: one checker task per host, in the cluster
manager's nursery.

Every `interval` (plus up to `interval_jitter`; `no_traffic_interval`
while the cluster has never had traffic, as in Envoy) a checker opens a
fresh connection, sends `GET <path>` with `Host: <host>` and
`user-agent: Envoy/HC`, and waits at most `timeout` for a status in
`expected_statuses`. An answer that says unhealthy takes the host out of
the load balancer at once (`/failed_active_hc` in /clusters), as in Envoy;
network failures (connect failure, reset, timeout) do so after
`unhealthy_threshold` in a row. `healthy_threshold` successes in a row
bring it back. Stats follow Envoy:
`cluster.<name>.health_check.attempt|success|failure|network_failure|
verify_cluster|healthy` (the last a gauge of healthy hosts).

Three probes, registered by the type of `HealthCheck.checker` in `PROBES`:

- HTTP (no checker): the request above; a status outside
  `expected_statuses` is a failure.
- TCP (`TcpHealthCheck`): connect, write `send`, read until every block of
  `receive` has arrived in order (any chunking); nothing configured means
  a connect is enough. Envoy's hex payloads are plain bytes here.
- gRPC (`GrpcHealthCheck`): `grpc.health.v1.Health/Check` on a fresh
  HTTP/2 connection (h2c, or TLS when the cluster has it) with
  `service_name` and `authority` (default: the cluster name); healthy iff
  `grpc-status` is 0 and the answer is SERVING.

Every probe opens its own connection (and the cluster's TLS), bounded by
`timeout`. A connect failure, reset or timeout is a `network_failure`; an
answer that is not healthy is a plain `failure`.

The threshold logic is `HealthState`, pure and tested on its own; the probe
uses the cluster's network door, so tests run it on a `MemoryNetwork` with
`MockClock`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

from trioproxy.codec.grpc import grpc_status_of
from trioproxy.codec.grpc_health import (
    CHECK_PATH,
    GrpcHealthError,
    MessageReader,
    ServingStatus,
    decode_response,
    encode_request,
    frame,
)
from trioproxy.config import GrpcHealthCheck, HealthCheck, HealthChecker, TcpHealthCheck
from trioproxy.net.errors import ProxyIOError
from trioproxy.net.network import Network
from trioproxy.net.tls import ClientTls, connect_upstream

if TYPE_CHECKING:
    from trioproxy.upstream.cluster_manager import ClusterRuntime, Host

__all__ = [
    "PROBES",
    "HealthState",
    "Outcome",
    "check_host",
    "check_once",
    "grpc_check_once",
    "receive_matched",
    "tcp_check_once",
]

# What one probe reads at most before deciding (a TCP check's expected
# bytes, an HTTP head): health answers are small; a peer that streams
# more is not answering a health check.
_MAX_READ = 64 * 1024


class Outcome(enum.Enum):
    """One probe's result, as Envoy's stats count it."""

    HEALTHY = "healthy"
    FAILURE = "failure"  # the host answered, and the answer is unhealthy
    NETWORK_FAILURE = "network_failure"  # connect failure, reset or timeout


class HealthState:
    """Consecutive successes/failures against the thresholds."""

    __slots__ = ("_failures", "_successes", "config", "healthy")

    def __init__(self, config: HealthCheck, *, healthy: bool = True) -> None:
        self.config = config
        self.healthy = healthy
        self._failures = 0
        self._successes = 0

    def record(self, ok: bool, *, immediate: bool = False) -> bool:
        """Record one check; True if the host's health changed.

        `immediate`: the host answered, and the answer says unhealthy (an
        unexpected HTTP status, a gRPC status other than SERVING). Envoy
        fails the host at once for those (its ACTIVE failures); only network
        failures count towards `unhealthy_threshold`.
        """
        if ok:
            self._failures = 0
            self._successes += 1
            if not self.healthy and self._successes >= self.config.healthy_threshold:
                self.healthy = True
                return True
        else:
            self._successes = 0
            self._failures += 1
            if self.healthy and (immediate or self._failures >= self.config.unhealthy_threshold):
                self.healthy = False
                return True
        return False


async def _connect(
    network: Network, host: str, port: int, timeout: float, tls: ClientTls | None
) -> trio.abc.Stream | None:
    try:
        return await connect_upstream(network, host, port, timeout=timeout, tls=tls)
    except (ProxyIOError, OSError):
        return None


async def check_once(
    network: Network,
    host: str,
    port: int,
    cfg: HealthCheck,
    vhost: str,
    *,
    tls: ClientTls | None = None,
) -> int:
    """One HTTP probe: the response status, or 0 when the network failed or timed out."""
    with trio.move_on_after(cfg.timeout):
        stream = await _connect(network, host, port, cfg.timeout, tls)
        if stream is None:
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


# --------------------------------------------------------------------------- TCP


def receive_matched(buffer: bytes, blocks: tuple[bytes, ...]) -> bool:
    """Envoy's TCP "fuzzy" match: every block appears in `buffer`, in order,
    each after the end of the previous one (other bytes may sit between)."""
    pos = 0
    for block in blocks:
        found = buffer.find(block, pos)
        if found < 0:
            return False
        pos = found + len(block)
    return True


async def tcp_check_once(
    network: Network,
    host: str,
    port: int,
    cfg: HealthCheck,
    tcp: TcpHealthCheck,
    *,
    tls: ClientTls | None = None,
) -> Outcome:
    """Connect, send `tcp.send`, read until `tcp.receive` matched (or the
    timeout, EOF, or `_MAX_READ` bytes)."""
    with trio.move_on_after(cfg.timeout):
        stream = await _connect(network, host, port, cfg.timeout, tls)
        if stream is None:
            return Outcome.NETWORK_FAILURE
        try:
            if tcp.send:
                await stream.send_all(tcp.send)
            buf = b""
            while not receive_matched(buf, tcp.receive):
                if len(buf) >= _MAX_READ:
                    return Outcome.FAILURE
                data = await stream.receive_some(65536)
                if not data:
                    # Closed before saying what we expect (Envoy: a network failure).
                    return Outcome.NETWORK_FAILURE
                buf += bytes(data)
            return Outcome.HEALTHY
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return Outcome.NETWORK_FAILURE
        finally:
            await trio.aclose_forcefully(stream)
    return Outcome.NETWORK_FAILURE


# --------------------------------------------------------------------------- gRPC


async def grpc_check_once(
    network: Network,
    host: str,
    port: int,
    cfg: HealthCheck,
    grpc: GrpcHealthCheck,
    authority: str,
    *,
    tls: ClientTls | None = None,
) -> Outcome:
    """One `grpc.health.v1.Health/Check` call on a fresh HTTP/2 connection."""
    with trio.move_on_after(cfg.timeout):
        stream = await _connect(network, host, port, cfg.timeout, tls)
        if stream is None:
            return Outcome.NETWORK_FAILURE
        try:
            return await _grpc_exchange(stream, grpc, authority, tls is not None)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            h2.exceptions.ProtocolError,
        ):
            return Outcome.NETWORK_FAILURE
        finally:
            await trio.aclose_forcefully(stream)
    return Outcome.NETWORK_FAILURE


async def _grpc_exchange(
    stream: trio.abc.Stream, grpc: GrpcHealthCheck, authority: str, secure: bool
) -> Outcome:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":scheme", b"https" if secure else b"http"),
            (b":path", CHECK_PATH),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"Envoy/HC"),
        ],
    )
    conn.send_data(sid, frame(encode_request(grpc.service_name)), end_stream=True)
    await stream.send_all(conn.data_to_send())
    reader = MessageReader()
    headers: list[tuple[bytes, bytes]] = []
    trailers: list[tuple[bytes, bytes]] = []
    messages: list[bytes] = []
    http_status = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return Outcome.NETWORK_FAILURE
        ended = False
        for ev in conn.receive_data(bytes(data)):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                headers = [(bytes(k), bytes(v)) for k, v in ev.headers]
                http_status = dict(headers).get(b":status", b"")
            elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                trailers = [(bytes(k), bytes(v)) for k, v in ev.headers]
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                try:
                    messages += reader.receive_data(ev.data)
                except GrpcHealthError:
                    return Outcome.FAILURE
                if len(messages) > 1:  # Check is unary: one answer, no stream
                    return Outcome.FAILURE
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                ended = True
            elif isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated):
                return Outcome.NETWORK_FAILURE
        out = conn.data_to_send()
        if out:
            await stream.send_all(out)
        if ended:
            break
    if http_status != b"200" or grpc_status_of(trailers, headers) != 0:
        return Outcome.FAILURE
    if len(messages) != 1 or reader.pending:
        return Outcome.FAILURE
    try:
        status = decode_response(messages[0])
    except GrpcHealthError:
        return Outcome.FAILURE
    return Outcome.HEALTHY if status == ServingStatus.SERVING else Outcome.FAILURE


# --------------------------------------------------------------------------- probes

Probe = Callable[["ClusterRuntime", str, int, HealthCheck], Awaitable[Outcome]]


async def _http_probe(cluster: ClusterRuntime, host: str, port: int, cfg: HealthCheck) -> Outcome:
    status = await check_once(
        cluster.network, host, port, cfg, cfg.host or cluster.name, tls=cluster.tls
    )
    if status == 0:
        return Outcome.NETWORK_FAILURE
    return Outcome.HEALTHY if _expected(cfg, status) else Outcome.FAILURE


async def _tcp_probe(cluster: ClusterRuntime, host: str, port: int, cfg: HealthCheck) -> Outcome:
    assert isinstance(cfg.checker, TcpHealthCheck)
    return await tcp_check_once(cluster.network, host, port, cfg, cfg.checker, tls=cluster.tls)


async def _grpc_probe(cluster: ClusterRuntime, host: str, port: int, cfg: HealthCheck) -> Outcome:
    grpc = cfg.checker
    assert isinstance(grpc, GrpcHealthCheck)
    authority = grpc.authority or cluster.name
    return await grpc_check_once(cluster.network, host, port, cfg, grpc, authority, tls=cluster.tls)


# The probe for each checker type (None: HTTP). A new kind registers here.
PROBES: dict[type[HealthChecker] | None, Probe] = {
    None: _http_probe,
    TcpHealthCheck: _tcp_probe,
    GrpcHealthCheck: _grpc_probe,
}


async def _check_host(
    cluster: ClusterRuntime,
    host: Host,
    cfg: HealthCheck,
    rng: random.Random,
    on_change: Callable[[], None],
) -> None:
    state = HealthState(cfg, healthy=host.healthy)
    # A host that joined a running cluster waits for its first check, and
    # one success is enough (Envoy's PENDING_ACTIVE_HC).
    pending = not host.healthy and host.hc_pending
    addr_host, _, addr_port = host.address.rpartition(":")
    addr_host = addr_host.strip("[]")
    port = int(addr_port)
    stats = cluster.hc_stats
    assert stats is not None
    probe = PROBES[type(cfg.checker) if cfg.checker is not None else None]
    while True:
        stats.attempt.inc()
        outcome = await probe(cluster, addr_host, port, cfg)
        ok = outcome is Outcome.HEALTHY
        if ok:
            stats.success.inc()
        else:
            stats.failure.inc()
            if outcome is Outcome.NETWORK_FAILURE:
                stats.network_failure.inc()
        if pending:
            pending = host.hc_pending = False
            state = HealthState(cfg, healthy=ok)
            if ok:
                host.healthy = True
                on_change()
        elif state.record(ok, immediate=outcome is Outcome.FAILURE):
            host.healthy = state.healthy
            on_change()
        # A cluster that never had traffic is checked less often (Envoy).
        interval = cfg.interval if cluster.rq_total.value else cfg.no_traffic_interval
        await trio.sleep(interval + rng.uniform(0, cfg.interval_jitter))


async def check_host(
    cluster: ClusterRuntime, host: Host, rng: random.Random, scope: trio.CancelScope
) -> None:
    """Check one host of `cluster` until `scope` is cancelled (the host left
    the cluster) or the cluster manager's nursery is."""
    cfg = cluster.config.health_check
    if cfg is None:
        return
    with scope:
        await _check_host(cluster, host, cfg, rng, cluster.rebuild)
