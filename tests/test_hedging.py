"""Hedging: Envoy's hedge_on_per_try_timeout and request racing.

Real upstreams on 127.0.0.1 where no timing is asserted (a host that never
answers is the slow one, so the outcome cannot depend on the wall clock), and
the in-memory network on MockClock where a test proves *when* a try starts.
After every race, the counters the race touched must be back where they were.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import (
    cluster,
    counter,
    dead_address,
    gauge,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.memnet import MemoryNetwork, RawClient
from tests.upstream_h2 import start_upstream_h2
from trioproxy.config import AccessLog, HedgePolicy, RetryPolicy
from trioproxy.runtime.server import Server


def policy(on: str = "5xx", **kw: Any) -> RetryPolicy:
    return RetryPolicy(retry_on=frozenset(on.split(",")), **kw)


def url(server: Server, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.listener_address('ingress').port}{path}"


def assert_quiet(server: Server, name: str = "svc") -> None:
    """Every request, retry and host counter back to zero; no lent connection."""
    runtime = server.clusters.get(name)
    assert runtime is not None
    assert gauge(server, f"cluster.{name}.upstream_rq_active") == 0
    assert runtime.retries_active == 0
    assert [h.active_requests for h in runtime.hosts] == [0] * len(runtime.hosts)
    # Every open connection is idle in its pool (none lent, none leaked).
    idle = sum(h.pool.idle_count for h in runtime.hosts)
    assert gauge(server, f"cluster.{name}.upstream_cx_active") == idle


async def wait_for(predicate: Any) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


# --------------------------------------------------------------- hedge_on_per_try_timeout


async def test_per_try_timeout_hedge_returns_the_fast_answer(nursery: trio.Nursery) -> None:
    slow = await start_upstream(nursery, "slow")
    fast = await start_upstream(nursery, "fast")
    slow.hang_all = True
    server = await start_proxy(
        nursery,
        simple_mesh(
            [
                route_to(
                    "svc",
                    retry_policy=policy(per_try_timeout=0.25, num_retries=1),
                    hedge_policy=HedgePolicy(hedge_on_per_try_timeout=True),
                )
            ],
            [cluster("svc", slow, fast)],
        ),
    )
    async with httpx.AsyncClient() as c:
        for _ in range(4):
            r = await c.get(url(server))
            assert r.status_code == 200
            assert r.headers["x-upstream"] == "fast"
    await settle(server)
    hung = len(slow.requests)
    assert hung >= 1  # round robin sends some first tries to the slow host
    assert counter(server, "cluster.svc.upstream_rq_per_try_timeout") == hung
    assert counter(server, "cluster.svc.upstream_rq_retry") == hung
    # The slow try was reset once the fast one won: its upstream saw the close.
    assert counter(server, "cluster.svc.upstream_rq_tx_reset") == hung
    await wait_for(lambda: slow.abandoned == hung)
    assert {q["headers"]["x-envoy-attempt-count"] for q in slow.requests} == {"1"}
    assert_quiet(server)


async def test_the_slow_try_is_not_cancelled_and_can_still_win(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The host answers at 1 s: with hedging the first try survives its
    0.25 s per-try timeout and its answer wins at 1 s (the hedged second try
    is reset). Without hedging each try is cut at its per-try timeout: 504."""
    for hedged in (True, False):
        net = MemoryNetwork()
        async with trio.open_nursery() as n:
            slow = await start_upstream(n, "slow", network=net)
            slow.delay_all = 1.0
            route = route_to(
                "svc",
                timeout=3.0,
                retry_policy=policy(per_try_timeout=0.25, num_retries=1),
                hedge_policy=HedgePolicy(hedge_on_per_try_timeout=True) if hedged else None,
            )
            server = await start_proxy(n, simple_mesh([route], [cluster("svc", slow)]), net)
            client = await RawClient.connect(net, server.listener_address("ingress").port)
            t0 = trio.current_time()
            with trio.fail_after(10):
                resp = await client.request()
            if hedged:
                assert resp.status == 200
                assert trio.current_time() - t0 == 1.0
                # Both tries went to the one host: the first answered.
                assert [q["headers"]["x-envoy-attempt-count"] for q in slow.requests] == [
                    "1",
                    "2",
                ]
                assert json.loads(resp.body)["headers"]["x-envoy-attempt-count"] == "1"
            else:
                # The first try is cut at 0.25 s, the retry at 0.5 s (+ back-off): 504.
                assert resp.status == 504
                assert trio.current_time() - t0 < 1.0
            await trio.testing.wait_all_tasks_blocked()
            # Both tries timed out (the second at 0.5 s + back-off) either way.
            assert counter(server, "cluster.svc.upstream_rq_per_try_timeout") == 2
            assert_quiet(server)
            n.cancel_scope.cancel()


async def test_hedge_header_from_a_trusted_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`x-envoy-hedge-on-per-try-timeout: true` turns hedging on for a route
    with only a retry policy; it is consumed, never forwarded."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        slow = await start_upstream(n, "slow", network=net)
        slow.delay_all = 1.0
        route = route_to("svc", retry_policy=policy(per_try_timeout=0.25, num_retries=1))
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", slow)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        resp = await client.request(headers=[("x-envoy-hedge-on-per-try-timeout", "true")])
        assert resp.status == 200
        assert trio.current_time() - t0 == 1.0  # the first try was kept
        assert len(slow.requests) == 2
        assert "x-envoy-hedge-on-per-try-timeout" not in slow.requests[0]["headers"]
        await trio.testing.wait_all_tasks_blocked()
        assert_quiet(server)
        n.cancel_scope.cancel()


# --------------------------------------------------------------- racing


async def test_racing_sends_to_both_hosts_at_once_and_returns_the_first(
    nursery: trio.Nursery,
) -> None:
    slow = await start_upstream(nursery, "slow")
    fast = await start_upstream(nursery, "fast")
    slow.hang_all = True
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", hedge_policy=HedgePolicy(initial_requests=2))],
            [cluster("svc", slow, fast)],
        ),
    )
    async with httpx.AsyncClient() as c:
        for _ in range(3):
            r = await c.get(url(server))
            assert r.status_code == 200
            assert r.headers["x-upstream"] == "fast"
    await settle(server)
    # Every request raced both hosts; each loser was reset, wherever it was:
    # dialling (the fast answer can beat a new connection to the slow host),
    # or waiting for the head (its HTTP/1.1 connection closed, never pooled
    # mid-message: the slow host sees it).
    assert len(fast.requests) == 3
    assert counter(server, "cluster.svc.upstream_rq_tx_reset") == 3
    assert len(slow.requests) >= 1
    await wait_for(lambda: slow.abandoned == len(slow.requests))
    assert {q["headers"]["x-envoy-attempt-count"] for q in fast.requests} <= {"1", "2"}
    assert counter(server, "cluster.svc.upstream_cx_destroy") == len(slow.requests)
    assert server.clusters.get("svc").hosts[0].pool.idle_count == 0  # type: ignore[union-attr]
    # The winners' connection went back to the pool and was reused.
    assert fast.connections == 1
    assert_quiet(server)


async def test_racing_with_a_body_sends_it_to_every_try(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        a = await start_upstream(n, "a", network=net)
        b = await start_upstream(n, "b", network=net)
        route = route_to("svc", hedge_policy=HedgePolicy(initial_requests=2))
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", a, b)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        body = bytes(range(256)) * 100
        resp = await client.request(
            "POST", headers=[("x-test-echo", "1"), ("x-test-delay", "1")], body=body
        )
        assert resp.status == 200
        assert resp.body == body
        # Both hosts read the whole body at once (before their 1 s delay).
        assert [q["body_length"] for q in a.requests + b.requests] == [len(body)] * 2
        assert [q["at"] for q in a.requests + b.requests] == [0.0, 0.0]
        await trio.testing.wait_all_tasks_blocked()
        assert_quiet(server)
        n.cancel_scope.cancel()


async def test_a_body_too_big_to_replay_gets_one_try(
    nursery: trio.Nursery, tmp_path: object
) -> None:
    a = await start_upstream(nursery, "a")
    b = await start_upstream(nursery, "b")
    log = f"{tmp_path}/access.log"
    server = await start_proxy(
        nursery,
        simple_mesh(
            [
                route_to(
                    "svc",
                    retry_policy=policy(max_replay_bytes=1000),
                    hedge_policy=HedgePolicy(initial_requests=2),
                )
            ],
            [cluster("svc", a, b)],
            access_logs=[AccessLog(path=log, format="%RESPONSE_CODE_DETAILS%\n")],
        ),
    )
    async with httpx.AsyncClient() as c:
        r = await c.post(url(server), content=b"x" * 5000, headers={"x-test-echo": "1"})
    assert r.status_code == 200
    assert r.content == b"x" * 5000
    await settle(server)
    assert len(a.requests) + len(b.requests) == 1
    assert_quiet(server)
    with trio.fail_after(5):
        while not (await trio.Path(log).exists() and await trio.Path(log).read_text()):
            await trio.sleep(0.01)
    assert (await trio.Path(log).read_text()).split() == [
        "via_upstream{hedge_skipped_body_too_large}"
    ]


async def test_a_failed_try_does_not_end_the_race(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One host refuses connections (no retry policy, so nothing is retried):
    the race waits for the other try, answering at 1 s, instead of 503 UF."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        good = await start_upstream(n, "good", network=net)
        route = route_to("svc", hedge_policy=HedgePolicy(initial_requests=2))
        mesh = simple_mesh([route], [cluster("svc", "127.0.0.1:9", good)])
        server = await start_proxy(n, mesh, net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        for _ in range(3):
            t0 = trio.current_time()
            resp = await client.request(headers=[("x-test-delay", "1")])
            assert resp.status == 200
            assert trio.current_time() - t0 == 1.0
        await trio.testing.wait_all_tasks_blocked()
        assert len(good.requests) == 3
        assert counter(server, "cluster.svc.upstream_cx_connect_fail") == 3
        assert_quiet(server)
        n.cancel_scope.cancel()


async def test_the_last_failure_is_the_answer(nursery: trio.Nursery) -> None:
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", hedge_policy=HedgePolicy(initial_requests=2))],
            [cluster("svc", dead_address(), dead_address())],
        ),
    )
    async with httpx.AsyncClient() as c:
        r = await c.get(url(server))
    assert r.status_code == 503
    assert r.text.endswith("connection failure")
    await settle(server)
    assert counter(server, "cluster.svc.upstream_cx_connect_fail") == 2
    assert_quiet(server)


async def test_a_retriable_answer_waits_for_the_other_tries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 503 that the policy would retry but may not (num_retries 0) does not
    win while another try is in flight; it is the answer only if it is last."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        bad = await start_upstream(n, "bad", network=net)
        slow = await start_upstream(n, "slow", network=net)
        bad.always_status = 503
        slow.delay_all = 1.0
        route = route_to(
            "svc",
            retry_policy=policy("5xx", num_retries=0),
            hedge_policy=HedgePolicy(initial_requests=2),
        )
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", bad, slow)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        resp = await client.request()
        assert resp.status == 200
        assert resp.headers["x-upstream"] == "slow"
        assert trio.current_time() - t0 == 1.0
        assert len(bad.requests) == 1

        # Both answer 503: the last one is relayed.
        slow.always_status = 503
        t0 = trio.current_time()
        resp = await client.request()
        assert resp.status == 503
        assert resp.headers["x-upstream"] == "slow"
        assert trio.current_time() - t0 == 1.0
        await trio.testing.wait_all_tasks_blocked()
        assert counter(server, "cluster.svc.upstream_rq_retry") == 0
        assert_quiet(server)
        n.cancel_scope.cancel()


async def test_delay_starts_the_second_try_only_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        a = await start_upstream(n, "a", network=net)
        b = await start_upstream(n, "b", network=net)
        route = route_to(
            "svc", hedge_policy=HedgePolicy(initial_requests=3, additional_request_delay=0.5)
        )
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", a, b)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)

        # Answers at 1.2 s: tries start at 0, 0.5 and 1.0; the first wins at 1.2.
        t0 = trio.current_time()
        resp = await client.request(headers=[("x-test-delay", "1.2")])
        assert resp.status == 200
        assert trio.current_time() - t0 == 1.2
        starts = sorted(q["at"] - t0 for q in a.requests + b.requests)
        assert starts == [0.0, 0.5, 1.0]
        assert json.loads(resp.body)["headers"]["x-envoy-attempt-count"] == "1"
        await trio.testing.wait_all_tasks_blocked()
        assert counter(server, "cluster.svc.upstream_rq_tx_reset") == 2
        assert_quiet(server)

        # Answers at 0.3 s, before the delay: no second try at all.
        a.requests.clear()
        b.requests.clear()
        t0 = trio.current_time()
        resp = await client.request(headers=[("x-test-delay", "0.3")])
        assert resp.status == 200
        assert abs(trio.current_time() - t0 - 0.3) < 1e-9
        assert len(a.requests) + len(b.requests) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert_quiet(server)
        n.cancel_scope.cancel()


# --------------------------------------------------------------- accounting


async def test_route_timeout_mid_race_leaks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        a = await start_upstream(n, "a", network=net)
        b = await start_upstream(n, "b", network=net)
        a.hang_all = b.hang_all = True
        route = route_to(
            "svc",
            timeout=2.0,
            retry_policy=policy(per_try_timeout=0.5, num_retries=3),
            hedge_policy=HedgePolicy(initial_requests=2, hedge_on_per_try_timeout=True),
        )
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", a, b)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        resp = await client.request()
        assert resp.status == 504
        assert trio.current_time() - t0 == 2.0
        await trio.testing.wait_all_tasks_blocked()
        # Two racing tries, then per-try hedges while retries were left.
        tries = len(a.requests) + len(b.requests)
        assert tries == 2 + counter(server, "cluster.svc.upstream_rq_retry")
        assert counter(server, "cluster.svc.upstream_rq_retry") == 3
        assert a.abandoned + b.abandoned == tries
        assert gauge(server, "cluster.svc.upstream_cx_active") == 0
        assert_quiet(server)
        n.cancel_scope.cancel()


@pytest.mark.parametrize("timeout", [0.001, 0.3, 0.5, 0.6, 0.9, 0.999, 1.25])
async def test_route_timeout_at_any_point_of_a_race_leaks_nothing(
    autojump_clock: trio.testing.MockClock, timeout: float
) -> None:
    """Tries start at 0, 0.3 and 0.6 (racing) and per-try hedges follow at
    0.5 + back-off; the hosts answer 1 s after each request, with a body. The
    route timeout cuts the race at each of these phases."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        a = await start_upstream(n, "a", network=net)
        b = await start_upstream(n, "b", network=net)
        a.delay_all = b.delay_all = 1.0
        route = route_to(
            "svc",
            timeout=timeout,
            retry_policy=policy(per_try_timeout=0.5, num_retries=2),
            hedge_policy=HedgePolicy(
                initial_requests=3, additional_request_delay=0.3, hedge_on_per_try_timeout=True
            ),
        )
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", a, b)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        resp = await client.request(
            "POST", headers=[("x-test-body-size", "100000")], body=b"q" * 5000
        )
        assert resp.status == (504 if timeout < 1.0 else 200)
        await trio.testing.wait_all_tasks_blocked()
        assert_quiet(server)
        assert gauge(server, "http.ingress_http.downstream_rq_active") == 0
        n.cancel_scope.cancel()


@pytest.mark.parametrize("leave_at", [0.0, 0.3, 0.55, 0.9])
async def test_client_leaving_mid_race_leaks_nothing(
    autojump_clock: trio.testing.MockClock, leave_at: float
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        a = await start_upstream(n, "a", network=net)
        b = await start_upstream(n, "b", network=net)
        a.hang_all = b.hang_all = True
        route = route_to(
            "svc",
            timeout=0.0,
            retry_policy=policy(per_try_timeout=0.5, num_retries=2),
            hedge_policy=HedgePolicy(
                initial_requests=2, additional_request_delay=0.25, hedge_on_per_try_timeout=True
            ),
        )
        server = await start_proxy(n, simple_mesh([route], [cluster("svc", a, b)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        await client.stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await trio.sleep(leave_at)
        await client.stream.aclose()
        await trio.sleep(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert a.abandoned + b.abandoned == len(a.requests) + len(b.requests)
        assert gauge(server, "cluster.svc.upstream_cx_active") == 0
        assert gauge(server, "http.ingress_http.downstream_rq_active") == 0
        assert_quiet(server)
        n.cancel_scope.cancel()


# --------------------------------------------------------------- HTTP/2 upstreams


async def test_http2_losers_are_reset_with_rst_stream(nursery: trio.Nursery) -> None:
    slow = await start_upstream_h2(nursery, "slow")
    fast = await start_upstream_h2(nursery, "fast")
    slow.hang_all = True
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", hedge_policy=HedgePolicy(initial_requests=2))],
            [cluster("svc", slow.address, fast.address, protocol="http2")],
        ),
    )
    async with httpx.AsyncClient() as c:
        for _ in range(3):
            r = await c.get(url(server))
            assert r.status_code == 200
            assert json.loads(r.content)["server"] == "fast"
    await settle(server)
    assert counter(server, "cluster.svc.upstream_rq_tx_reset") == 3
    # Every stream the slow host saw was reset (the first try may have been
    # cancelled while its connection was still being made: no stream yet).
    assert len(slow.requests) >= 2
    await wait_for(lambda: slow.resets_received == len(slow.requests))
    # A reset stream leaves its connection in use: one connection per host.
    assert slow.connections == fast.connections == 1
    assert gauge(server, "cluster.svc.upstream_cx_active") == 2
    assert_quiet(server)
