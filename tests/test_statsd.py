"""The StatsD sink: the formatter alone, then a running proxy sending to a
real UDP socket that the test binds and reads."""

from __future__ import annotations

import socket as stdlib_socket

import attrs
import httpx
import trio
import trio.testing

from tests.conftest import (
    cluster,
    counter,
    proxy_url,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.memnet import MemoryNetwork, RawClient
from trioproxy.config import Mesh, SocketAddress, StatsdSink
from trioproxy.observe.stats import StatsStore
from trioproxy.observe.statsd import MAX_DATAGRAM_BYTES, StatsdFormatter, pack_lines
from trioproxy.runtime.server import Server

# --------------------------------------------------------------------------- sans-IO


def test_counters_are_deltas_gauges_values_histograms_timers() -> None:
    store = StatsStore()
    store.keep_samples()
    c = store.counter("cluster.x.upstream_rq_total")
    g = store.gauge("cluster.x.membership_total")
    h = store.histogram("cluster.x.upstream_rq_time")
    store.counter("never.used")
    f = StatsdFormatter()

    c.inc(3)
    g.set(2)
    h.record(12)
    h.record(7.5)
    assert f.lines(store, store.take_samples()) == [
        "envoy.cluster.x.upstream_rq_total:3|c",
        "envoy.cluster.x.membership_total:2|g",
        "envoy.cluster.x.upstream_rq_time:12|ms",
        "envoy.cluster.x.upstream_rq_time:7.5|ms",
    ]
    # Next flush: the counter's delta (used counters are sent even at 0, as
    # Envoy does), the gauge's value, no timers.
    c.inc(2)
    assert f.lines(store, store.take_samples()) == [
        "envoy.cluster.x.upstream_rq_total:2|c",
        "envoy.cluster.x.membership_total:2|g",
    ]
    assert f.lines(store, store.take_samples())[0] == "envoy.cluster.x.upstream_rq_total:0|c"
    # After /reset_counters the counter restarts: its value is the delta.
    store.reset_counters()
    c.inc(4)
    assert f.lines(store, {})[0] == "envoy.cluster.x.upstream_rq_total:4|c"


def test_dogstatsd_tags_and_prefix() -> None:
    store = StatsStore()
    store.counter("cluster.x.upstream_rq_200").inc()
    store.counter("server.dropped").inc()
    f = StatsdFormatter("edge", tags=True)
    assert f.lines(store, {"http.in.downstream_rq_time": [5.0]}) == [
        "edge.cluster.upstream_rq:1|c|#envoy.response_code:200,envoy.cluster_name:x",
        "edge.server.dropped:1|c",
        "edge.http.downstream_rq_time:5|ms|#envoy.http_conn_manager_prefix:in",
    ]
    assert StatsdFormatter("").lines(store, {})[0] == "cluster.x.upstream_rq_200:1|c"


def test_pack_lines_fills_datagrams() -> None:
    lines = [f"envoy.stat_{i:04d}:1|c" for i in range(300)]
    datagrams = pack_lines(lines)
    assert all(len(d) <= MAX_DATAGRAM_BYTES for d in datagrams)
    assert b"\n".join(datagrams).decode().split("\n") == lines
    assert len(datagrams) == -(-len("\n".join(lines)) // MAX_DATAGRAM_BYTES)
    assert pack_lines(["x" * 2000]) == [b"x" * 2000]  # an oversized line goes alone
    assert pack_lines([]) == []


# --------------------------------------------------------------------------- with a UDP peer


async def udp_collector() -> tuple[trio.socket.SocketType, int]:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


async def receive_flush(sock: trio.socket.SocketType) -> list[str]:
    """The lines of one flush: wait for its first datagram, then take the
    rest, which one flush sends all at once, without waiting."""
    with trio.fail_after(10):
        data = await sock.recv(65536)
    lines = data.decode().split("\n")
    std = stdlib_socket.socket(fileno=sock.fileno())  # the same (non-blocking) socket
    try:
        while True:
            try:
                lines += std.recv(65536).decode().split("\n")
            except BlockingIOError:
                return lines
    finally:
        std.detach()


def with_statsd(mesh: Mesh, port: int, **kw: object) -> Mesh:
    sink = StatsdSink(address=SocketAddress(host="127.0.0.1", port=port), **kw)  # type: ignore[arg-type]
    return attrs.evolve(mesh, stats_sinks=(sink,))


async def test_flushes_every_5s_on_mock_clock(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sock, port = await udp_collector()
    up = await start_upstream(nursery)
    mesh = with_statsd(simple_mesh([route_to("svc")], [cluster("svc", up)]), port)
    assert mesh.stats_flush_interval == 5.0  # Envoy's default
    server = await start_proxy(nursery, mesh)
    started = trio.current_time()
    server.stats.counter("cluster.svc.upstream_rq_total").inc(2)
    server.stats.histogram("cluster.svc.upstream_rq_time").record(42)

    lines = await receive_flush(sock)
    assert trio.current_time() - started == 5.0
    assert "envoy.cluster.svc.upstream_rq_total:2|c" in lines
    assert "envoy.cluster.svc.upstream_rq_time:42|ms" in lines
    assert "envoy.server.live:1|g" in lines
    assert "envoy.cluster.svc.membership_total:1|g" in lines

    # Five seconds later: the delta since the first flush.
    server.stats.counter("cluster.svc.upstream_rq_total").inc(1)
    lines = await receive_flush(sock)
    assert trio.current_time() - started == 10.0
    assert "envoy.cluster.svc.upstream_rq_total:1|c" in lines
    assert not any("|ms" in line for line in lines)
    sock.close()


async def test_real_traffic_reaches_the_collector(nursery: trio.Nursery) -> None:
    sock, port = await udp_collector()
    up = await start_upstream(nursery)
    mesh = with_statsd(simple_mesh([route_to("svc")], [cluster("svc", up)]), port, tags=True)
    server = await start_proxy(nursery, mesh)
    async with httpx.AsyncClient() as c:
        for status in (200, 200, 503):
            await c.get(proxy_url(server), headers={"x-test-status": str(status)})
    await settle(server)
    server.flush_stats()
    lines = await receive_flush(sock)
    svc = "envoy.cluster_name:svc"
    assert f"envoy.cluster.upstream_rq:2|c|#envoy.response_code:200,{svc}" in lines
    assert f"envoy.cluster.upstream_rq_xx:1|c|#envoy.response_code_class:5,{svc}" in lines
    assert f"envoy.cluster.upstream_rq_total:3|c|#{svc}" in lines
    assert (
        "envoy.http.downstream_rq_total:3|c|#envoy.http_conn_manager_prefix:ingress_http" in lines
    )
    timers = [line for line in lines if line.startswith("envoy.cluster.upstream_rq_time:")]
    assert len(timers) == 3 and all(t.endswith(f"|ms|#{svc}") for t in timers)
    assert counter(server, "stats_sinks.statsd.datagrams_sent") >= 1
    sock.close()


async def test_a_dead_collector_costs_nothing(nursery: trio.Nursery) -> None:
    sock, port = await udp_collector()
    sock.close()  # nothing listens there now: the kernel answers ICMP unreachable
    up = await start_upstream(nursery)
    server: Server = await start_proxy(
        nursery, with_statsd(simple_mesh([route_to("svc")], [cluster("svc", up)]), port)
    )
    for _ in range(3):
        server.flush_stats()  # never raises, never waits
        await trio.sleep(0.01)  # let the ICMP error arrive
    assert counter(server, "stats_sinks.statsd.datagrams_dropped") >= 1
    assert server.state == "LIVE"
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server))).status_code == 200


async def test_in_virtual_time_over_the_memory_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The whole proxy on MockClock: latencies are exact, the flush is at 5 s."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        mesh = with_statsd(simple_mesh([route_to("svc")], [cluster("svc", up)]), 8125)
        server = await start_proxy(n, mesh, net)
        t0 = trio.current_time()
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        for delay in ("0.25", "1.5"):
            resp = await client.request(headers=[("x-test-delay", delay)])
            assert resp.status == 200
        await trio.sleep(5 - (trio.current_time() - t0) + 0.001)  # past the first flush
        lines = b"\n".join(net.datagrams[("127.0.0.1", 8125)]).decode().split("\n")
        assert "envoy.cluster.svc.upstream_rq_total:2|c" in lines
        assert "envoy.cluster.svc.upstream_rq_time:250|ms" in lines
        assert "envoy.cluster.svc.upstream_rq_time:1500|ms" in lines
        assert "envoy.http.ingress_http.downstream_rq_time:250|ms" in lines
        # The same flush closed the histogram interval: P100 is exact.
        h = server.stats.histograms["cluster.svc.upstream_rq_time"]
        assert h.interval_quantile(1.0) == 1500 and h.interval_quantile(0.0) == 250
        assert h.summary().startswith("P0(250,250) ")

        # A blackholed collector: datagrams dropped and counted, never waited on.
        net.blackhole("127.0.0.1", 8125)
        await trio.sleep(5)
        assert counter(server, "stats_sinks.statsd.datagrams_dropped") >= 1
        n.cancel_scope.cancel()
