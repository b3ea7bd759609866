"""Connection circuit breakers on HTTP/2 upstreams and per host.

HTTP/1.1's cluster-wide breakers are covered in tests/test_retry.py; here:
an HTTP/2 pool whose connections are full of streams opens no connection
beyond `max_connections` and queues (pending) or overflows (503 UO) as
Envoy's HTTP/2 pool does, and `max_connections_per_host` caps each host.
"""

from __future__ import annotations

from functools import partial

import httpx
import trio

from tests.conftest import (
    cluster,
    counter,
    gauge,
    proxy_url,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.upstream_h2 import UpstreamH2
from trioproxy.config import CircuitBreakers


async def test_h2_pool_queues_then_overflows(nursery: trio.Nursery) -> None:
    """One connection of one stream: a second request waits for the stream,
    a third overflows with 503 UO."""
    up = UpstreamH2("h2")
    up.max_concurrent_streams = 1
    await nursery.start(up.run)
    breakers = CircuitBreakers(max_connections=1, max_pending_requests=1)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", timeout=0.0)],
            [cluster("svc", up.address, protocol="http2", circuit_breakers=breakers)],
        ),
    )
    results: dict[str, int] = {}

    async def get(name: str, **headers: str) -> None:
        async with httpx.AsyncClient() as c:
            r = await c.get(proxy_url(server, "/" + name), headers=headers)
            results[name] = r.status_code
            if r.status_code == 503:
                assert r.headers["x-envoy-overloaded"] == "true"

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(get, "slow", **{"x-test-delay": "0.5"}))
            while gauge(server, "cluster.svc.upstream_rq_active") < 1:
                await trio.sleep(0.01)
            inner.start_soon(get, "queued")
            while server.clusters.get("svc").pool_stats.pending < 1:  # type: ignore[union-attr]
                await trio.sleep(0.01)
            assert gauge(server, "cluster.svc.circuit_breakers.default.cx_open") == 1
            await get("overflow")
    assert results == {"slow": 200, "queued": 200, "overflow": 503}
    assert counter(server, "cluster.svc.upstream_cx_total") == 1
    assert counter(server, "cluster.svc.upstream_cx_overflow") >= 1
    assert counter(server, "cluster.svc.upstream_rq_pending_overflow") == 1
    assert up.connections == 1
    await settle(server)
    assert gauge(server, "cluster.svc.upstream_rq_active") == 0
    assert server.clusters.get("svc").pool_stats.pending == 0  # type: ignore[union-attr]


async def test_h2_pool_without_a_limit_opens_another_connection(nursery: trio.Nursery) -> None:
    """The default breakers (1024 connections): a full connection makes the
    pool open a second one instead of queueing."""
    up = UpstreamH2("h2")
    up.max_concurrent_streams = 1
    await nursery.start(up.run)
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up.address, protocol="http2")]),
    )
    async with httpx.AsyncClient() as c, trio.open_nursery() as inner:
        for _ in range(2):
            inner.start_soon(partial(c.get, proxy_url(server), headers={"x-test-delay": "0.3"}))
    assert up.connections == 2
    assert counter(server, "cluster.svc.upstream_cx_overflow") == 0


async def test_max_connections_per_host(nursery: trio.Nursery) -> None:
    """Per-host limit 1, two hosts: two concurrent slow requests get one
    connection on each host; a third waits for one of them."""
    a = await start_upstream(nursery, "a")
    b = await start_upstream(nursery, "b")
    breakers = CircuitBreakers(max_connections_per_host=1, max_pending_requests=4)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", timeout=0.0)], [cluster("svc", a, b, circuit_breakers=breakers)]
        ),
    )
    async with httpx.AsyncClient() as c, trio.open_nursery() as inner:
        for _ in range(3):
            inner.start_soon(partial(c.get, proxy_url(server), headers={"x-test-delay": "0.3"}))
        with trio.fail_after(5):
            while server.clusters.get("svc").pool_stats.pending < 1:  # type: ignore[union-attr]
                await trio.sleep(0.01)
    assert counter(server, "cluster.svc.upstream_cx_total") == 2
    assert len(a.requests) + len(b.requests) == 3
    hosts = server.clusters.get("svc").hosts  # type: ignore[union-attr]
    assert [h.pool.active for h in hosts] == [1, 1]  # type: ignore[attr-defined]


def test_circuit_breakers_from_the_dsl() -> None:
    from trioproxy.dsl import MeshError, listener, mesh, prefix
    from trioproxy.dsl import cluster as dsl_cluster

    c = dsl_cluster("c", "127.0.0.1:1").circuit_breakers(
        max_connections=10, max_connections_per_host=2, retry_budget_percent=20
    )
    built = mesh(listener("l", "127.0.0.1:0").route(prefix("/"), c)).compile()
    assert built.clusters[0].circuit_breakers == CircuitBreakers(
        max_connections=10, max_connections_per_host=2, budget_percent=20.0
    )
    bad = dsl_cluster("c", "127.0.0.1:1").circuit_breakers(
        max_connections=0, retry_budget_percent=200
    )
    try:
        mesh(listener("l", "127.0.0.1:0").route(prefix("/"), bad)).compile()
    except MeshError as exc:
        text = str(exc)
    else:
        raise AssertionError("compiled")
    assert "test_circuit_breakers.py:" in text
    assert "bad circuit_breakers max_connections of cluster 'c' 0" in text
    assert "bad circuit_breakers retry_budget_percent of cluster 'c' 200" in text
