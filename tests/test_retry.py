"""Retries and the request circuit breakers, through real upstreams.

Upstreams are steered per test: `always_status` makes one host always
fail, `next_statuses` fails the next few requests; a closed port is a
connect failure; `x-test-hang` is a try that never answers.
"""

from __future__ import annotations

import json
from functools import partial

import httpx
import trio

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
from trioproxy.config import AccessLog, CircuitBreakers, RetryPolicy
from trioproxy.runtime.server import Server


def policy(on: str, **kw: object) -> RetryPolicy:
    return RetryPolicy(retry_on=frozenset(on.split(",")), **kw)  # type: ignore[arg-type]


def url(server: Server, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.listener_address('ingress').port}{path}"


async def test_5xx_is_retried_on_another_host(nursery: trio.Nursery) -> None:
    bad = await start_upstream(nursery, "bad")
    good = await start_upstream(nursery, "good")
    bad.always_status = 503
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=policy("5xx", num_retries=2))],
            [cluster("svc", bad, good)],
        ),
    )
    async with httpx.AsyncClient() as c:
        for _ in range(10):
            r = await c.get(url(server))
            assert r.status_code == 200
            assert r.headers["x-upstream"] == "good"
    await settle(server)
    # Every try on the bad host was retried once, on the good one. (With two
    # hosts, a retry's pick moves round robin on, so most first tries land
    # on the bad host: Envoy behaves the same.)
    assert len(bad.requests) >= 5
    assert counter(server, "cluster.svc.upstream_rq_retry") == len(bad.requests)
    assert counter(server, "cluster.svc.upstream_rq_retry_success") == len(bad.requests)
    attempts = [r["headers"]["x-envoy-attempt-count"] for r in good.requests]
    assert "2" in attempts and set(attempts) <= {"1", "2"}


async def test_connect_failure_is_retried(nursery: trio.Nursery) -> None:
    good = await start_upstream(nursery, "good")
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=policy("connect-failure"))],
            [cluster("svc", dead_address(), good)],
        ),
    )
    async with httpx.AsyncClient() as c:
        statuses = [(await c.get(url(server))).status_code for _ in range(6)]
    assert statuses == [200] * 6
    await settle(server)
    fails = counter(server, "cluster.svc.upstream_cx_connect_fail")
    assert fails >= 3
    assert counter(server, "cluster.svc.upstream_rq_retry") == fails


async def test_exhausted_retries_relay_the_last_answer_with_urx(
    nursery: trio.Nursery, tmp_path: object
) -> None:
    bad = await start_upstream(nursery, "bad")
    bad.always_status = 503
    log = f"{tmp_path}/access.log"
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=policy("5xx", num_retries=2))],
            [cluster("svc", bad)],
            access_logs=[AccessLog(path=log, format="%RESPONSE_CODE% %RESPONSE_FLAGS%\n")],
        ),
    )
    async with httpx.AsyncClient() as c:
        r = await c.get(url(server))
    assert r.status_code == 503
    assert r.headers["x-upstream"] == "bad"  # the upstream's own answer, relayed
    assert len(bad.requests) == 3
    await settle(server)
    assert counter(server, "cluster.svc.upstream_rq_retry") == 2
    assert counter(server, "cluster.svc.upstream_rq_retry_limit_exceeded") == 1
    with trio.fail_after(5):
        while True:
            text = await trio.Path(log).read_text() if await trio.Path(log).exists() else ""
            if text:
                break
            await trio.sleep(0.05)
    assert text.split() == ["503", "URX"]


async def test_request_body_is_replayed(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    up.next_statuses = [503]
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc", retry_policy=policy("5xx"))], [cluster("svc", up)]),
    )
    body = bytes(range(256)) * 400
    async with httpx.AsyncClient() as c:
        r = await c.post(url(server), content=body, headers={"x-test-echo": "1"})
    assert r.status_code == 200
    assert r.content == body
    assert [q["body_length"] for q in up.requests] == [len(body), len(body)]


async def test_body_larger_than_the_replay_buffer_is_not_retried(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    up.next_statuses = [503]
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=policy("5xx", max_replay_bytes=1000))],
            [cluster("svc", up)],
        ),
    )
    async with httpx.AsyncClient() as c:
        r = await c.post(url(server), content=b"x" * 5000)
    assert r.status_code == 503
    assert len(up.requests) == 1
    await settle(server)
    assert counter(server, "cluster.svc.upstream_rq_retry") == 0


async def test_per_try_timeout_moves_on(nursery: trio.Nursery) -> None:
    slow = await start_upstream(nursery, "slow")
    fast = await start_upstream(nursery, "fast")
    slow.hang_all = True
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=policy("5xx", per_try_timeout=0.3))],
            [cluster("svc", slow, fast)],
        ),
    )
    async with httpx.AsyncClient() as c:
        for _ in range(4):
            r = await c.get(url(server))
            assert r.status_code == 200
            assert r.headers["x-upstream"] == "fast"
    await settle(server)
    timeouts = counter(server, "cluster.svc.upstream_rq_per_try_timeout")
    assert timeouts >= 2
    assert counter(server, "cluster.svc.upstream_rq_retry") == timeouts


async def test_retry_on_header_from_a_trusted_client(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    up.next_statuses = [502, 502]
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        r = await c.get(
            url(server), headers={"x-envoy-retry-on": "gateway-error", "x-envoy-max-retries": "3"}
        )
    assert r.status_code == 200
    assert len(up.requests) == 3
    seen = json.loads(r.content)["headers"]
    assert "x-envoy-retry-on" not in seen and "x-envoy-max-retries" not in seen


async def test_retry_breaker_overflow(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    up.always_status = 503
    breakers = CircuitBreakers(max_retries=0)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=policy("5xx"))],
            [cluster("svc", up, circuit_breakers=breakers)],
        ),
    )
    async with httpx.AsyncClient() as c:
        assert (await c.get(url(server))).status_code == 503
    await settle(server)
    assert counter(server, "cluster.svc.upstream_rq_retry_overflow") == 1
    assert gauge(server, "cluster.svc.circuit_breakers.default.rq_retry_open") == 1
    assert len(up.requests) == 1


async def test_max_requests_overflow_is_503_uo(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", timeout=0.0)],
            [cluster("svc", up, circuit_breakers=CircuitBreakers(max_requests=1))],
        ),
    )
    async with httpx.AsyncClient() as c, trio.open_nursery() as inner:
        inner.start_soon(partial(c.get, url(server, "/hang"), headers={"x-test-hang": "1"}))
        with trio.fail_after(5):
            while gauge(server, "cluster.svc.upstream_rq_active") < 1:
                await trio.sleep(0.01)
        r = await c.get(url(server, "/second"))
        assert r.status_code == 503
        assert r.headers["x-envoy-overloaded"] == "true"
        inner.cancel_scope.cancel()
    assert counter(server, "cluster.svc.upstream_rq_pending_overflow") == 1


async def test_max_connections_queues_then_overflows_pending(nursery: trio.Nursery) -> None:
    """One connection allowed, one pending request allowed: the second
    request waits for the first's connection; a third overflows with UO."""
    up = await start_upstream(nursery)
    breakers = CircuitBreakers(max_connections=1, max_pending_requests=1)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", timeout=0.0)], [cluster("svc", up, circuit_breakers=breakers)]
        ),
    )
    results: dict[str, int] = {}

    async def get(name: str, **headers: str) -> None:
        async with httpx.AsyncClient() as c:
            results[name] = (await c.get(url(server, "/" + name), headers=headers)).status_code

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(get, "slow", **{"x-test-delay": "0.5"}))
            while gauge(server, "cluster.svc.upstream_cx_active") < 1:
                await trio.sleep(0.01)
            inner.start_soon(get, "queued")
            while counter(server, "cluster.svc.upstream_cx_overflow") < 1:
                await trio.sleep(0.01)
            assert gauge(server, "cluster.svc.circuit_breakers.default.cx_open") == 1
            await get("overflow")
            assert results["overflow"] == 503
            assert gauge(server, "cluster.svc.circuit_breakers.default.rq_pending_open") == 1
    assert results == {"slow": 200, "queued": 200, "overflow": 503}
    assert counter(server, "cluster.svc.upstream_rq_pending_overflow") == 1
    assert counter(server, "cluster.svc.upstream_cx_total") == 1  # the queued one reused it
    await settle(server)
    assert gauge(server, "cluster.svc.upstream_rq_active") == 0


async def test_cancelled_pending_request_releases_its_slot(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    breakers = CircuitBreakers(max_connections=1, max_pending_requests=1)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", timeout=0.0)], [cluster("svc", up, circuit_breakers=breakers)]
        ),
    )
    port = server.listener_address("ingress").port
    hold = await trio.open_tcp_stream("127.0.0.1", port)
    await hold.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nx-test-hang: 1\r\n\r\n")
    waiting = await trio.open_tcp_stream("127.0.0.1", port)
    await waiting.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    pool_stats = server.clusters.get("svc").pool_stats  # type: ignore[union-attr]
    with trio.fail_after(5):
        while pool_stats.pending < 1:
            await trio.sleep(0.01)
    await waiting.aclose()  # the pending client gives up
    await hold.aclose()
    with trio.fail_after(5):
        while pool_stats.pending or gauge(server, "cluster.svc.upstream_rq_active"):
            await trio.sleep(0.01)
    async with httpx.AsyncClient() as c:
        assert (await c.get(url(server))).status_code == 200
