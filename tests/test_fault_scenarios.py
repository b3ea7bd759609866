"""Fault scenarios with real upstreams: a host killed under load, one killed
mid-response, one refusing connections, one answering 503 for a while, one
that hangs.

The cluster has three hosts, a retry policy `5xx,reset,connect-failure`
with 3 attempts, and outlier detection at Envoy's defaults. Load is 20
concurrent keep-alive clients sending 10 GETs each. The concurrent-retry
breaker is raised to 64: with 20 clients retrying at once, Envoy's default
of 3 concurrent retries would overflow and answer 503, which is the
breaker doing its job, not what these tests look at
(tests/test_retry.py covers the overflow).

Timing (ejection time, per-try timeouts) runs on a MockClock over the
in-memory network; the kill and refusal tests use real sockets.
"""

from __future__ import annotations

import json

import httpx
import trio
import trio.testing

from tests.conftest import (
    cluster,
    counter,
    gauge,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.memnet import MemoryNetwork, RawClient
from tests.upstream import Upstream
from trioproxy.config import CircuitBreakers, Mesh, OutlierDetection, RetryPolicy
from trioproxy.runtime.server import Server

RETRY = RetryPolicy(
    retry_on=frozenset({"5xx", "reset", "connect-failure"}), num_retries=2, per_try_timeout=0.5
)
BREAKERS = CircuitBreakers(max_retries=64)


def _mesh(*hosts: Upstream | str, outlier: OutlierDetection | None = None) -> Mesh:
    return simple_mesh(
        admin=True,
        routes=[route_to("svc", retry_policy=RETRY)],
        clusters=[
            cluster(
                "svc",
                *hosts,
                outlier_detection=outlier or OutlierDetection(),
                circuit_breakers=BREAKERS,
            )
        ],
    )


async def _killable(nursery: trio.Nursery, name: str) -> tuple[Upstream, trio.CancelScope]:
    """An upstream on a real port whose whole process-like task tree can be
    killed: its listener and every open connection close at once."""
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Upstream] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as n:
                task_status.started(await start_upstream(n, name))

    up: Upstream = await nursery.start(run)
    return up, scope


async def _load(
    url: str, *, clients: int = 20, each: int = 10, on_response: object = None
) -> list[int]:
    statuses: list[int] = []

    async def client() -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            for _ in range(each):
                statuses.append((await c.get(url)).status_code)
                if callable(on_response):
                    on_response(len(statuses))

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for _ in range(clients):
                n.start_soon(client)
    return statuses


def _figures(name: str, server: Server, statuses: list[int]) -> str:
    return (
        f"\n{name}: {len(statuses)} sent, {statuses.count(200)} succeeded, "
        f"{counter(server, 'cluster.svc.upstream_rq_retry')} retried, "
        f"{counter(server, 'cluster.svc.outlier_detection.ejections_total')} ejection(s)"
    )


async def test_a_host_killed_under_load(nursery: trio.Nursery) -> None:
    """The issue's scenario: three hosts, one dies a quarter of the way into
    200 requests from 20 clients. Every request succeeds (retries carry the
    in-flight and refused ones to the live hosts) and the dead host is
    ejected."""
    a = await start_upstream(nursery, "a")
    b = await start_upstream(nursery, "b")
    doomed, kill = await _killable(nursery, "doomed")
    server = await start_proxy(nursery, _mesh(a, b, doomed))
    url = f"http://127.0.0.1:{server.listener_address('ingress').port}/"

    def maybe_kill(done: int) -> None:
        if done == 50:
            kill.cancel()

    statuses = await _load(url, on_response=maybe_kill)
    print(_figures("host killed under load", server, statuses))
    assert kill.cancel_called
    assert len(statuses) == 200
    assert statuses.count(200) == 200, sorted(set(statuses))
    assert len(doomed.requests) > 0  # it did serve before dying
    await settle(server)
    assert counter(server, "cluster.svc.outlier_detection.ejections_total") >= 1
    assert gauge(server, "cluster.svc.outlier_detection.ejections_active") == 1
    host = server.clusters.get("svc").hosts[2]  # type: ignore[union-attr]
    assert host.outlier_ejected
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://{server.admin_bound}/clusters")).text
    assert f"svc::{doomed.address}::health_flags::/failed_outlier_check" in text
    assert gauge(server, "cluster.svc.upstream_rq_active") == 0


async def test_a_refusing_host(nursery: trio.Nursery) -> None:
    """A host whose port refuses connections: connect failures are retried
    on the other hosts and the host is ejected after five in a row."""
    a = await start_upstream(nursery, "a")
    b = await start_upstream(nursery, "b")
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{s.getsockname()[1]}"
    server = await start_proxy(nursery, _mesh(a, b, refused))
    url = f"http://127.0.0.1:{server.listener_address('ingress').port}/"
    statuses = await _load(url)
    print(_figures("refusing host", server, statuses))
    assert statuses.count(200) == 200
    assert counter(server, "cluster.svc.upstream_cx_connect_fail") >= 5
    assert counter(server, "cluster.svc.outlier_detection.ejections_total") == 1
    host = server.clusters.get("svc").hosts[2]  # type: ignore[union-attr]
    assert host.outlier_ejected


async def test_a_host_killed_mid_response(nursery: trio.Nursery) -> None:
    """An upstream that sends the head and part of the body, then closes:
    the response has already begun, so it cannot be retried; that client
    sees a truncated response and a closed connection, the failure is
    counted, and the other 19 clients are untouched."""
    a = await start_upstream(nursery, "a")
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc", retry_policy=RETRY)], [cluster("svc", a)])
    )
    port = server.listener_address("ingress").port
    url = f"http://127.0.0.1:{port}/"
    broken: list[BaseException] = []

    async def victim() -> None:
        async with httpx.AsyncClient() as c:
            try:
                await c.get(url, headers={"x-test-close-mid": "1"})
            except httpx.HTTPError as exc:
                broken.append(exc)

    async with trio.open_nursery() as n:
        n.start_soon(victim)
        statuses = await _load(url, clients=19)
    assert len(broken) == 1
    assert isinstance(broken[0], httpx.RemoteProtocolError)
    assert statuses.count(200) == 190
    await settle(server)
    assert counter(server, "cluster.svc.upstream_rq_rx_reset") == 1
    assert counter(server, "cluster.svc.upstream_rq_retry") == 0  # a begun response is final
    assert gauge(server, "cluster.svc.upstream_rq_active") == 0


async def _memnet_load(
    net: MemoryNetwork, server: Server, *, clients: int = 20, each: int = 10
) -> tuple[list[int], list[str]]:
    statuses: list[int] = []
    served_by: list[str] = []
    port = server.listener_address("ingress").port

    async def client() -> None:
        c = await RawClient.connect(net, port)
        for _ in range(each):
            r = await c.request()
            statuses.append(r.status)
            if r.status == 200:
                served_by.append(json.loads(r.body)["server"])

    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(client)
    return statuses, served_by


async def test_a_host_answering_503_for_a_while(autojump_clock: trio.testing.MockClock) -> None:
    """One host answers 503 for a while: retries hide it, outlier detection
    ejects it for base_ejection_time (30 s), and once it recovers and the
    time is up it takes traffic again."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        ups = [await start_upstream(n, f"u{i}", network=net) for i in range(3)]
        server = await start_proxy(n, _mesh(*ups), net)
        ups[1].always_status = 503
        statuses, served_by = await _memnet_load(net, server)
        assert statuses.count(200) == 200
        assert "u1" not in served_by
        assert gauge(server, "cluster.svc.outlier_detection.ejections_active") == 1
        ups[1].always_status = None  # it recovers
        await trio.sleep(15)
        statuses, served_by = await _memnet_load(net, server, clients=2)
        assert "u1" not in served_by  # still ejected at 15 s
        # Ejection ends at the first sweep (every 10 s) after 30 s.
        await trio.sleep(30)
        assert gauge(server, "cluster.svc.outlier_detection.ejections_active") == 0
        statuses, served_by = await _memnet_load(net, server, clients=3)
        assert statuses.count(200) == 30
        assert "u1" in served_by
        n.cancel_scope.cancel()


async def test_a_hanging_host(autojump_clock: trio.testing.MockClock) -> None:
    """One host accepts requests and never answers: each try to it ends at
    the per-try timeout (0.5 s) and is retried on another host. Every
    request succeeds, the timeouts are counted, and the hung host is
    ejected (a per-try timeout is a gateway failure, as in Envoy)."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        ups = [await start_upstream(n, f"u{i}", network=net) for i in range(3)]
        ups[0].hang_all = True
        server = await start_proxy(n, _mesh(*ups), net)
        start = trio.current_time()
        statuses, served_by = await _memnet_load(net, server)
        elapsed = trio.current_time() - start
        assert statuses.count(200) == 200
        assert "u0" not in served_by
        timeouts = counter(server, "cluster.svc.upstream_rq_per_try_timeout")
        assert 1 <= timeouts <= 20  # at most one hung try per client before ejection
        assert gauge(server, "cluster.svc.outlier_detection.ejections_active") == 1
        # Nobody waited for more than a per-try timeout plus a back-off per request.
        assert elapsed < 10 * (0.5 + 0.25) + 1
        n.cancel_scope.cancel()
