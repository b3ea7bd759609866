"""Every timeout phase, on MockClock over the in-memory network (no sleeps).

Phases: connect (503 UF), route (504 UT), request headers (408), connection
idle (quiet close), stream idle (408 SI). Each asserts the status, the flag
or stat, and that nothing stayed active afterwards.
"""

from __future__ import annotations

import trio

from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from tests.memnet import MemoryNetwork, RawClient


def _stat(server, name):  # type: ignore[no-untyped-def]
    store = server.stats
    if name in store.counters:
        return store.counters[name].value
    return store.gauges[name].value


async def test_route_timeout_is_504_ut(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        mesh = simple_mesh([route_to("svc", timeout=2.0)], [cluster("svc", up)])
        server = await start_proxy(n, mesh, net)
        port = server.listener_address("ingress").port
        client = await RawClient.connect(net, port)
        t0 = trio.current_time()
        resp = await client.request(headers=[("x-test-delay", "5")])
        assert resp.status == 504
        assert resp.body == b"upstream request timeout"
        assert trio.current_time() - t0 == 2.0
        assert _stat(server, "cluster.svc.upstream_rq_timeout") == 1
        # The next request on the same connection still works (fast upstream).
        resp = await client.request(headers=[("x-test-delay", "1")])
        assert resp.status == 200
        # The client sees its response before the proxy's `finally` blocks ran.
        await trio.testing.wait_all_tasks_blocked()
        assert _stat(server, "cluster.svc.upstream_rq_active") == 0
        n.cancel_scope.cancel()


async def test_route_timeout_zero_disables(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        mesh = simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up)])
        server = await start_proxy(n, mesh, net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        resp = await client.request(headers=[("x-test-delay", "100")])
        assert resp.status == 200
        n.cancel_scope.cancel()


async def test_default_route_timeout_is_15s(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        server = await start_proxy(n, simple_mesh([route_to("svc")], [cluster("svc", up)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        resp = await client.request(headers=[("x-test-hang", "1")])
        assert resp.status == 504
        assert trio.current_time() - t0 == 15.0
        n.cancel_scope.cancel()


async def test_connect_timeout_is_503_uf(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    net.blackhole("10.1.2.3", 80)
    async with trio.open_nursery() as n:
        mesh = simple_mesh([route_to("svc")], [cluster("svc", "10.1.2.3:80", connect_timeout=0.25)])
        server = await start_proxy(n, mesh, net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        resp = await client.request()
        assert resp.status == 503
        assert b"connection failure" in resp.body
        assert trio.current_time() - t0 == 0.25
        assert _stat(server, "cluster.svc.upstream_cx_connect_timeout") == 1
        assert _stat(server, "cluster.svc.upstream_cx_connect_fail") == 1
        n.cancel_scope.cancel()


async def test_request_headers_timeout_is_408(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        mesh = simple_mesh([route_to("svc")], [cluster("svc", up)], request_headers_timeout=10.0)
        server = await start_proxy(n, mesh, net)
        stream = await net.connect_tcp(
            "127.0.0.1", server.listener_address("ingress").port, timeout=0
        )
        t0 = trio.current_time()
        # A slowloris client: one header byte every 5 s, never finishing.
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")

        async def drip() -> None:
            for _ in range(100):
                await trio.sleep(5)
                try:
                    await stream.send_all(b"x")
                except trio.BrokenResourceError:
                    return  # the proxy closed on us (what a socket reports as EPIPE)

        async with trio.open_nursery() as inner:
            inner.start_soon(drip)
            data = b""
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
            inner.cancel_scope.cancel()
        assert data.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in data
        assert trio.current_time() - t0 == 10.0
        assert _stat(server, "http.ingress_http.downstream_rq_header_timeout") == 1
        assert up.requests == []
        n.cancel_scope.cancel()


async def test_connection_idle_timeout_closes_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        mesh = simple_mesh([route_to("svc")], [cluster("svc", up)], idle_timeout=60.0)
        server = await start_proxy(n, mesh, net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        assert (await client.request()).status == 200
        t0 = trio.current_time()
        assert await client.closed_by_peer()
        assert trio.current_time() - t0 == 60.0
        assert _stat(server, "http.ingress_http.downstream_cx_idle_timeout") == 1
        assert _stat(server, "http.ingress_http.downstream_cx_active") == 0
        n.cancel_scope.cancel()


async def test_default_connection_idle_timeout_is_one_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        server = await start_proxy(n, simple_mesh([route_to("svc")], [cluster("svc", up)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        assert await client.closed_by_peer()
        assert trio.current_time() - t0 == 3600.0
        n.cancel_scope.cancel()


async def test_stream_idle_timeout_on_stalled_upload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        mesh = simple_mesh(
            [route_to("svc", timeout=0.0)], [cluster("svc", up)], stream_idle_timeout=30.0
        )
        server = await start_proxy(n, mesh, net)
        stream = await net.connect_tcp(
            "127.0.0.1", server.listener_address("ingress").port, timeout=0
        )
        # Promise 1000 bytes, send 10, then stall.
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789"
        )
        t0 = trio.current_time()
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        assert trio.current_time() - t0 == 30.0
        assert data.startswith(b"HTTP/1.1 408 ")
        assert _stat(server, "http.ingress_http.downstream_rq_idle_timeout") == 1
        assert _stat(server, "cluster.svc.upstream_rq_active") == 0
        assert _stat(server, "cluster.svc.upstream_cx_active") == 0
        n.cancel_scope.cancel()
