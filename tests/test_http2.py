"""HTTP/2 on both sides and bridged, through real sockets.

Downstream clients: httpx (h2 prior knowledge), curl --http2-prior-knowledge,
and `tests.h2client` for trailers and resets. Upstreams: the h11 test
upstream and the h2 test upstream (`tests.upstream_h2`).
"""

from __future__ import annotations

import json

import h2.errors
import httpx
import pytest
import trio

from tests.conftest import (
    cluster,
    counter,
    gauge,
    require_tool,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.h2client import H2Client
from tests.upstream_h2 import start_upstream_h2
from trioproxy.runtime.server import Server


def port_of(server: Server) -> int:
    return server.listener_address("ingress").port


async def h2_proxy_to_h1(nursery: trio.Nursery, **hcm: object) -> tuple[Server, object]:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)], **hcm))
    return server, up


async def test_httpx_h2_prior_knowledge_to_h1_upstream(nursery: trio.Nursery) -> None:
    server, _up = await h2_proxy_to_h1(nursery)
    url = f"http://127.0.0.1:{port_of(server)}"
    async with httpx.AsyncClient(http1=False, http2=True) as c:
        r = await c.get(url + "/a?b=1", headers={"cookie": "x=1"})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        assert r.headers["server"] == "trioproxy"
        seen = r.json()
        assert seen["path"] == "/a?b=1"
        # :authority became Host; no pseudo-headers or HTTP/2-only fields leak.
        assert seen["headers"]["host"] == f"127.0.0.1:{port_of(server)}"
        assert seen["headers"]["x-forwarded-proto"] == "http"
        assert not any(k.startswith(":") for k, _ in seen["header_list"])
        body = bytes(range(256)) * 1000
        r = await c.post(url + "/echo", content=body, headers={"x-test-echo": "1"})
        assert r.content == body
    await settle(server)
    assert counter(server, "http.ingress_http.downstream_cx_http2_total") == 1
    assert counter(server, "http.ingress_http.downstream_rq_http2_total") == 2
    assert counter(server, "http.ingress_http.downstream_cx_http1_total") == 0


async def test_curl_http2_prior_knowledge(nursery: trio.Nursery) -> None:
    curl = require_tool("curl")
    server, _up = await h2_proxy_to_h1(nursery)
    result = await trio.run_process(
        [curl, "-sS", "-i", "--http2-prior-knowledge", f"http://127.0.0.1:{port_of(server)}/c"],
        capture_stdout=True,
        capture_stderr=True,
    )
    out = result.stdout.decode()
    assert out.startswith("HTTP/2 200"), out[:200]
    assert "server: trioproxy" in out


async def test_cookies_are_folded_for_an_h1_upstream(nursery: trio.Nursery) -> None:
    server, _up = await h2_proxy_to_h1(nursery)
    async with await H2Client.connect(port_of(server)) as c:
        r = await c.request("GET", "/", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert r.status == 200
    seen = json.loads(r.body)
    assert seen["headers"]["cookie"] == "a=1; b=2"


async def test_codec_http1_refuses_the_h2_preface(nursery: trio.Nursery) -> None:
    server, _up = await h2_proxy_to_h1(nursery, codec="http1")
    s = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await s.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    data = await s.receive_some(4096)
    assert data.startswith(b"HTTP/1.1 4"), data  # h11 rejects the preface
    await s.aclose()


async def test_codec_http2_only(nursery: trio.Nursery) -> None:
    server, _up = await h2_proxy_to_h1(nursery, codec="http2")
    async with httpx.AsyncClient(http1=False, http2=True) as c:
        r = await c.get(f"http://127.0.0.1:{port_of(server)}/")
        assert r.http_version == "HTTP/2" and r.status_code == 200


async def test_settings_advertise_envoy_defaults(nursery: trio.Nursery) -> None:
    server, _up = await h2_proxy_to_h1(nursery)
    async with await H2Client.connect(port_of(server)) as c:
        with trio.fail_after(5):
            await c.remote_settings_received.wait()
        rs = c.conn.remote_settings
        assert rs.max_concurrent_streams == 1024
        assert rs.initial_window_size == 16 * 1024 * 1024
        # the connection window was raised to 24 MiB
        assert c.conn.outbound_flow_control_window == 24 * 1024 * 1024
        # PING is answered
        c.conn.ping(b"12345678")
        await c.flush()
        r = await c.request("GET", "/")
        assert r.status == 200


async def test_trailers_h2_to_h1_and_back(nursery: trio.Nursery) -> None:
    server, _up = await h2_proxy_to_h1(nursery)
    async with await H2Client.connect(port_of(server)) as c:
        r = await c.request(
            "POST",
            "/t",
            headers=[(b"te", b"trailers"), (b"x-test-trailers", b"1")],
            body=b"hello",
            trailers=[(b"x-req-trailer", b"1")],
        )
    assert r.status == 200
    seen = json.loads(r.body)
    assert seen["body_length"] == 5
    assert seen["headers"]["te"] == "trailers"
    assert seen["trailers"] == [["x-req-trailer", "1"]]
    assert r.trailers == [(b"x-trailer", b"yes")]


@pytest.mark.parametrize("downstream", ["h1", "h2"])
async def test_h2_upstream_multiplexes_one_connection(
    nursery: trio.Nursery, downstream: str
) -> None:
    up = await start_upstream_h2(nursery)
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc")], [cluster("svc", up.address, protocol="http2")])
    )
    url = f"http://127.0.0.1:{port_of(server)}"
    results: list[int] = []

    async def one(c: httpx.AsyncClient, i: int) -> None:
        r = await c.post(f"{url}/{i}", content=b"x" * i * 1000, headers={"x-test-echo": "1"})
        assert len(r.content) == i * 1000
        results.append(r.status_code)

    client = httpx.AsyncClient(http1=downstream == "h1", http2=downstream == "h2")
    async with client as c, trio.open_nursery() as inner:
        for i in range(30):
            inner.start_soon(one, c, i)
    assert results == [200] * 30
    assert up.connections == 1
    assert counter(server, "cluster.svc.upstream_cx_total") == 1
    seen = up.requests[0]
    assert seen["authority"] == f"127.0.0.1:{port_of(server)}"
    assert "host" not in seen["headers"]


async def test_h2_upstream_trailers_reach_an_h2_client(nursery: trio.Nursery) -> None:
    up = await start_upstream_h2(nursery)
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc")], [cluster("svc", up.address, protocol="http2")])
    )
    async with await H2Client.connect(port_of(server)) as c:
        r = await c.request(
            "POST",
            "/g",
            headers=[(b"te", b"trailers"), (b"x-test-trailers", b"1")],
            body=b"abc",
            trailers=[(b"grpc-timeout", b"1S")],
        )
    assert r.status == 200
    assert r.trailers == [(b"x-trailer", b"yes")]
    assert up.requests[0]["trailers"] == [("grpc-timeout", "1S")]
    assert up.requests[0]["headers"]["te"] == "trailers"


async def test_upstream_rst_stream_is_503_ur(nursery: trio.Nursery) -> None:
    up = await start_upstream_h2(nursery)
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc")], [cluster("svc", up.address, protocol="http2")])
    )
    async with httpx.AsyncClient() as c:
        url = f"http://127.0.0.1:{port_of(server)}/"
        r = await c.get(url, headers={"x-test-reset": "1"})
        assert r.status_code == 503
        assert r.text.endswith("reset reason: remote reset")
        r = await c.get(url, headers={"x-test-refuse": "1"})
        assert r.status_code == 503
        assert r.text.endswith("reset reason: remote refused stream reset")
        # The connection survived both resets.
        assert (await c.get(url)).status_code == 200
    assert up.connections == 1
    assert counter(server, "cluster.svc.upstream_rq_rx_reset") == 2


async def test_downstream_rst_stream_resets_the_upstream_stream(nursery: trio.Nursery) -> None:
    up = await start_upstream_h2(nursery)
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up.address, protocol="http2")]),
    )
    async with await H2Client.connect(port_of(server)) as c:
        sid = await c.start("GET", "/", headers=[(b"x-test-hang", b"1")])
        with trio.fail_after(5):
            while not up.requests:
                await trio.sleep(0.01)
        await c.reset(sid, h2.errors.ErrorCodes.CANCEL)
        with trio.fail_after(5):
            while up.resets_received < 1:
                await trio.sleep(0.01)
        # The downstream connection carries on.
        r = await c.request("GET", "/after")
        assert r.status == 200
    await settle(server)
    assert gauge(server, "cluster.svc.upstream_rq_active") == 0
    assert counter(server, "http.ingress_http.downstream_rq_rx_reset") == 1
    assert up.connections == 1  # the upstream connection was kept


async def test_downstream_rst_stream_closes_an_h1_upstream(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up)])
    )
    async with await H2Client.connect(port_of(server)) as c:
        sid = await c.start("GET", "/", headers=[(b"x-test-hang", b"1")])
        with trio.fail_after(5):
            while up.active_connections < 1 or not up.requests:
                await trio.sleep(0.01)
        await c.reset(sid)
        with trio.fail_after(5):
            while up.active_connections:
                await trio.sleep(0.01)
    await settle(server)
    assert gauge(server, "cluster.svc.upstream_cx_active") == 0


async def test_upstream_reset_mid_response_resets_only_that_stream(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with await H2Client.connect(port_of(server)) as c:
        r = await c.request(
            "GET", "/", headers=[(b"x-test-close-mid", b"1"), (b"x-test-body-size", b"100000")]
        )
        assert r.status == 200
        assert r.reset_code is not None  # truncated: the stream was reset
        assert len(r.body) < 100000
        r2 = await c.request("GET", "/ok")
        assert r2.status == 200 and r2.reset_code is None


async def test_upstream_goaway_moves_to_a_new_connection(nursery: trio.Nursery) -> None:
    up = await start_upstream_h2(nursery)
    server = await start_proxy(
        nursery, simple_mesh([route_to("svc")], [cluster("svc", up.address, protocol="http2")])
    )
    async with httpx.AsyncClient() as c:
        url = f"http://127.0.0.1:{port_of(server)}/"
        assert (await c.get(url, headers={"x-test-goaway": "1"})).status_code == 200
        with trio.fail_after(5):
            while up.active_connections:
                await trio.sleep(0.01)
        assert (await c.get(url)).status_code == 200
    assert up.connections == 2
    await settle(server)
    assert gauge(server, "cluster.svc.upstream_cx_active") == 1


async def test_stream_limit_opens_more_upstream_connections(nursery: trio.Nursery) -> None:
    up = await start_upstream_h2(nursery)
    up.max_concurrent_streams = 2
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up.address, protocol="http2")]),
    )
    url = f"http://127.0.0.1:{port_of(server)}/"
    statuses: list[int] = []

    async def one(c: httpx.AsyncClient) -> None:
        statuses.append((await c.get(url, headers={"x-test-delay": "0.2"})).status_code)

    async with httpx.AsyncClient() as c, trio.open_nursery() as inner:
        for _ in range(6):
            inner.start_soon(one, c)
    assert statuses == [200] * 6
    # Two streams per connection (the server's SETTINGS): three connections.
    assert up.connections == 3


async def test_slow_h2_reader_bounds_memory(nursery: trio.Nursery) -> None:
    """A client that stops reading stalls the relay at its window: the proxy
    does not buffer the rest of a large response."""
    server, _up = await h2_proxy_to_h1(nursery)
    async with await H2Client.connect(port_of(server)) as c:
        c.read_slowly = True  # never acknowledge DATA: the window closes at 64 KiB
        sid = await c.start("GET", "/", headers=[(b"x-test-body-size", b"20000000")])
        await trio.sleep(0.5)
        received = len(c.pending[sid].body)
        assert received <= 65535
        # Nothing beyond the client's window was written to it.
        tx = counter(server, "http.ingress_http.downstream_cx_tx_bytes_total")
        assert tx < 100_000
