"""Active HTTP health checks: the threshold logic alone, then the checker on
MockClock over the in-memory network with real test upstreams."""

from __future__ import annotations

import trio
import trio.testing

from tests.conftest import cluster, gauge, route_to, simple_mesh, start_proxy, start_upstream
from tests.memnet import MemoryNetwork, RawClient
from trioproxy.config import HealthCheck
from trioproxy.upstream.health_check import HealthState


def test_thresholds() -> None:
    st = HealthState(HealthCheck(unhealthy_threshold=3, healthy_threshold=2))
    assert [st.record(False) for _ in range(3)] == [False, False, True]
    assert not st.healthy
    assert st.record(True) is False  # one success is not enough
    assert st.record(False) is False  # and a failure resets the run
    assert [st.record(True) for _ in range(2)] == [False, True]
    assert st.healthy


def _counter(server: object, name: str) -> int:
    return server.stats.counters[name].value  # type: ignore[attr-defined, no-any-return]


async def test_failing_host_leaves_and_returns(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        good = await start_upstream(n, "good", network=net)
        bad = await start_upstream(n, "bad", network=net)
        bad.always_status = 503
        hc = HealthCheck(path="/healthz", interval=5.0, timeout=1.0, unhealthy_threshold=2)
        mesh = simple_mesh([route_to("svc")], [cluster("svc", good, bad, health_check=hc)])
        server = await start_proxy(n, mesh, net)
        # Two failed checks, 5 s apart... but with no traffic yet the cluster
        # is checked every no_traffic_interval (60 s), as in Envoy.
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        await client.request()  # traffic: checks now run every `interval`
        await trio.sleep(11)
        assert gauge(server, "cluster.svc.membership_healthy") == 1
        assert gauge(server, "cluster.svc.health_check.healthy") == 1
        assert _counter(server, "cluster.svc.health_check.failure") >= 2
        checks = [r for r in bad.requests if r["path"] == "/healthz"]
        assert checks and checks[0]["headers"]["user-agent"] == "Envoy/HC"
        assert checks[0]["headers"]["host"] == "svc"
        # Every request now goes to the good host.
        before = len([r for r in bad.requests if r["path"] != "/healthz"])
        for _ in range(6):
            assert (await client.request()).status == 200
        assert len([r for r in bad.requests if r["path"] != "/healthz"]) == before
        # The host recovers: one good check (healthy_threshold 1) brings it back.
        bad.always_status = None
        await trio.sleep(6)
        assert gauge(server, "cluster.svc.membership_healthy") == 2
        n.cancel_scope.cancel()


async def test_unreachable_host_is_a_network_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        good = await start_upstream(n, "good", network=net)
        hc = HealthCheck(interval=1.0, no_traffic_interval=1.0, unhealthy_threshold=1)
        mesh = simple_mesh(
            [route_to("svc")], [cluster("svc", good, "127.0.0.1:1", health_check=hc)]
        )
        server = await start_proxy(n, mesh, net)
        await trio.sleep(2.5)
        assert _counter(server, "cluster.svc.health_check.network_failure") >= 2
        assert gauge(server, "cluster.svc.membership_healthy") == 1
        host = server.clusters.get("svc").hosts[1]  # type: ignore[union-attr]
        assert not host.healthy
        n.cancel_scope.cancel()


def test_an_unhealthy_answer_fails_at_once() -> None:
    """Envoy: only network failures count towards unhealthy_threshold; an
    answer that says unhealthy (e.g. a 503) takes the host out at once."""
    st = HealthState(HealthCheck(unhealthy_threshold=3))
    assert st.record(False) is False  # a network failure: 1 of 3
    assert st.record(False, immediate=True) is True
    assert not st.healthy
    assert st.record(False, immediate=True) is False  # already out


async def test_a_503_fails_the_host_at_the_first_check(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        good = await start_upstream(n, "good", network=net)
        bad = await start_upstream(n, "bad", network=net)
        bad.always_status = 503
        hc = HealthCheck(interval=5.0, no_traffic_interval=5.0, unhealthy_threshold=3)
        server = await start_proxy(
            n, simple_mesh([route_to("svc")], [cluster("svc", good, bad, health_check=hc)]), net
        )
        await trio.sleep(0.5)  # the first round of checks only
        assert _counter(server, "cluster.svc.health_check.failure") == 1
        assert gauge(server, "cluster.svc.membership_healthy") == 1
        n.cancel_scope.cancel()
