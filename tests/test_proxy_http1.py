"""The HTTP/1.1 data plane through real sockets, with httpx and curl as clients.

Each test starts real upstreams on 127.0.0.1 and a proxy in the test's loop.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio

from tests.conftest import (
    IN_CI,
    cluster,
    counter,
    gauge,
    proxy_url,
    require_tool,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)


async def test_get_reaches_upstream_with_envoy_headers(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        r = await c.get(
            proxy_url(server, "/a/b?q=1"),
            headers={
                "x-forwarded-for": "203.0.113.9",
                "connection": "keep-alive, x-secret",
                "x-secret": "1",
            },
        )
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/a/b?q=1"
    h = seen["headers"]
    # use_remote_address: the peer is appended to XFF and XFP is ours.
    assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert len(h["x-request-id"]) == 36
    # Hop-by-hop headers and those named in Connection never reach the upstream.
    assert "connection" not in h and "x-secret" not in h
    assert h["host"] == f"127.0.0.1:{server.listener_address('ingress').port}"
    assert r.headers["server"] == "trioproxy"
    assert int(r.headers["x-envoy-upstream-service-time"]) >= 0


async def test_request_id_is_kept_when_present(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy_url(server), headers={"x-request-id": "abc-123"})
    assert r.json()["headers"]["x-request-id"] == "abc-123"


async def test_keep_alive_reuses_both_connections(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        for i in range(20):
            r = await c.post(proxy_url(server, f"/{i}"), content=b"x" * i)
            assert r.status_code == 200
            assert r.json()["body_length"] == i
    await settle(server)
    assert counter(server, "http.ingress_http.downstream_cx_total") == 1
    assert counter(server, "cluster.svc.upstream_cx_total") == 1
    assert up.connections == 1
    assert counter(server, "cluster.svc.upstream_rq_200") == 20
    assert counter(server, "http.ingress_http.downstream_rq_2xx") == 20


async def test_upstream_closing_idle_connection_is_not_reused(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        # The upstream answers, then closes (no keep-alive on its side).
        r = await c.get(proxy_url(server), headers={"connection": "close"})
        assert r.status_code == 200
        for _ in range(3):
            r = await c.get(proxy_url(server))
            assert r.status_code == 200


async def test_large_bodies_stream_both_ways(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    body = bytes(range(256)) * 4096  # 1 MiB
    async with httpx.AsyncClient() as c:
        r = await c.post(proxy_url(server), content=body, headers={"x-test-echo": "1"})
        assert r.content == body

        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(body), 7000):
                yield body[i : i + 7000]

        r = await c.post(
            proxy_url(server), content=chunks(), headers={"x-test-echo": "1", "x-test-chunked": "1"}
        )
        assert r.content == body
        r = await c.get(proxy_url(server), headers={"x-test-body-size": str(3 * 1024 * 1024)})
        assert len(r.content) == 3 * 1024 * 1024


async def test_head_and_204_have_no_body(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        r = await c.head(proxy_url(server), headers={"x-test-body-size": "100"})
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == "100"
        r = await c.get(proxy_url(server), headers={"x-test-status": "204"})
        assert r.status_code == 204 and r.content == b""
        r = await c.get(proxy_url(server))  # the connection is still usable
        assert r.status_code == 200


async def test_expect_100_continue_with_curl(nursery: trio.Nursery) -> None:
    curl = require_tool("curl")
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    body = "y" * 5000
    result = await trio.run_process(
        [curl, "-sS", "-v", "-H", "Expect: 100-continue", "-H", "x-test-echo: 1",
         "--data-binary", body, proxy_url(server, "/upload")],
        capture_stdout=True, capture_stderr=True,
    )  # fmt: skip
    assert result.stdout.decode() == body
    assert "HTTP/1.1 100 Continue" in result.stderr.decode()
    # The proxy answered the Expect itself; the upstream never saw it.
    assert "expect" not in up.requests[-1]["headers"]


async def test_curl_gets_trailers_and_chunked(nursery: trio.Nursery) -> None:
    curl = require_tool("curl")
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    result = await trio.run_process(
        [curl, "-sS", "-i", "--raw", "-H", "x-test-trailers: 1", proxy_url(server)],
        capture_stdout=True,
    )
    out = result.stdout.decode()
    assert "transfer-encoding: chunked" in out.lower()
    assert "x-trailer: yes" in out


async def test_raw_pipelined_requests(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    port = server.listener_address("ingress").port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert [r["path"] for r in up.requests] == ["/one", "/two"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", 426),
        (b"GET / HTTP/1.1\r\nHost: a\r\nx: " + b"v" * (61 * 1024) + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"h%d: v\r\n" % i for i in range(101))
            + b"\r\n",
            431,
        ),
        (b"GET nope HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_get_status_and_clean_close(
    nursery: trio.Nursery, raw: bytes, status: int
) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    stream = await trio.open_tcp_stream("127.0.0.1", server.listener_address("ingress").port)
    await stream.send_all(raw)
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:100]
    assert b"connection: close" in data
    assert up.requests == []  # nothing reached the upstream
    # Other clients are unaffected.
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server))).status_code == 200


async def test_client_disconnect_mid_request_leaks_nothing(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up)])
    )
    port = server.listener_address("ingress").port
    # 1) The upstream hangs; the client gives up and closes.
    s = await trio.open_tcp_stream("127.0.0.1", port)
    await s.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nx-test-hang: 1\r\n\r\n")
    with trio.fail_after(5):
        while gauge(server, "cluster.svc.upstream_rq_active") != 1:
            await trio.sleep(0.01)
    await s.aclose()
    # 2) The client promises a body and leaves half way.
    s2 = await trio.open_tcp_stream("127.0.0.1", port)
    await s2.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"z" * 5000)
    with trio.fail_after(5):
        while len(up.requests) < 1 or gauge(server, "cluster.svc.upstream_rq_active") != 1:
            await trio.sleep(0.01)
    await s2.aclose()
    with trio.fail_after(5):
        while (
            gauge(server, "cluster.svc.upstream_rq_active")
            or gauge(server, "http.ingress_http.downstream_cx_active")
            or gauge(server, "cluster.svc.upstream_cx_active")
            or up.active_connections
        ):
            await trio.sleep(0.01)
    assert gauge(server, "http.ingress_http.downstream_rq_active") == 0
    host = server.clusters.get("svc").hosts[0]  # type: ignore[union-attr]
    assert host.active_requests == 0 and host.pool.active == 0
    assert counter(server, "server.connection_task_errors") == 0


async def test_upstream_dies_mid_response_closes_downstream(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(
                proxy_url(server), headers={"x-test-close-mid": "1", "x-test-body-size": "100000"}
            )
        # and the proxy keeps serving
        assert (await c.get(proxy_url(server))).status_code == 200


async def test_many_concurrent_clients(nursery: trio.Nursery) -> None:
    ups = [await start_upstream(nursery, f"u{i}") for i in range(3)]
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", *ups)]))
    results: list[int] = []

    async def client() -> None:
        async with httpx.AsyncClient() as c:
            for _ in range(10):
                results.append((await c.get(proxy_url(server))).status_code)

    async with trio.open_nursery() as inner:
        for _ in range(20):
            inner.start_soon(client)
    assert results == [200] * 200
    # Round robin spreads requests evenly across the three upstreams.
    assert sorted(len(u.requests) for u in ups) == [66, 67, 67]


async def test_ipv6_literal_upstream_is_reachable(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        # A platform capability, not a tool: CI machines have IPv6 loopback,
        # so there its absence fails the run.
        if IN_CI:
            pytest.fail("no IPv6 on this CI machine")
        pytest.skip("no IPv6 on this machine")
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy_url(server))
    assert json.loads(r.content)["server"] == "upstream"


async def test_client_closing_after_full_response_is_not_a_reset(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    port = server.listener_address("ingress").port
    for _ in range(20):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += await s.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await s.receive_some(65536)
        await s.aclose()
    await settle(server)
    assert counter(server, "http.ingress_http.downstream_rq_2xx") == 20
    assert counter(server, "http.ingress_http.downstream_rq_rx_reset") == 0
