"""`http1_parser="httptools"`: the DSL option reaches the config graph, and a
proxy built from it serves real clients and upstreams over 127.0.0.1 with
httptools reading both request and response heads."""

from __future__ import annotations

import httpx
import pytest
import trio
from trioproxy.dsl import MeshError, cluster, http, listener, mesh, prefix

from tests.conftest import counter, proxy_url, settle, start_proxy, start_upstream
from trioproxy.config import HttpConnectionManager, Mesh
from trioproxy.runtime.server import Server


def _mesh(upstream: str, parser: str = "httptools") -> Mesh:
    svc = cluster("svc", upstream).http1(parser=parser)  # type: ignore[arg-type]
    ingress = (
        listener("ingress", "127.0.0.1:0")
        .chain(http("ingress_http", http1_parser=parser))  # type: ignore[arg-type]
        .route(prefix("/"), svc)
    )
    return mesh(ingress).compile()


def test_defaults_and_option_reach_the_graph() -> None:
    default = mesh(
        listener("ingress", "127.0.0.1:0").route(prefix("/"), cluster("svc", "127.0.0.1:1"))
    ).compile()
    hcm = default.listeners[0].filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    assert (hcm.http1_parser, default.clusters[0].http1_parser) == ("httptools", "httptools")
    picked = _mesh("127.0.0.1:1", "h11")
    hcm = picked.listeners[0].filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    assert (hcm.http1_parser, picked.clusters[0].http1_parser) == ("h11", "h11")


def test_unknown_parser_is_a_compile_error() -> None:
    with pytest.raises(MeshError, match="unknown http1_parser 'llhttp'"):
        _mesh("127.0.0.1:1", "llhttp")
    with pytest.raises(MeshError, match="unknown http1 parser 'fast'"):
        mesh(
            listener("ingress", "127.0.0.1:0").route(
                prefix("/"),
                cluster("svc", "127.0.0.1:1").http1(parser="fast"),  # type: ignore[arg-type]
            )
        ).compile()


async def test_requests_through_a_proxy_reading_heads_with_httptools(
    nursery: trio.Nursery,
) -> None:
    up = await start_upstream(nursery)
    server: Server = await start_proxy(nursery, _mesh(up.address))
    async with httpx.AsyncClient() as c:
        for i in range(5):
            r = await c.post(
                proxy_url(server, f"/p/{i}?q=1"),
                content=b"x" * (i * 1000),
                headers={"x-a": f"value {i}", "x-test-trailers": "1" if i == 4 else "0"},
            )
            assert r.status_code == 200
            seen = r.json()
            assert seen["path"] == f"/p/{i}?q=1"
            assert seen["body_length"] == i * 1000
            assert seen["headers"]["x-a"] == f"value {i}"
        r = await c.head(proxy_url(server, "/h"))
        assert r.status_code == 200 and r.content == b""
        r = await c.get(proxy_url(server, "/e"), headers={"x-test-chunked": "1"})
        assert r.status_code == 200 and r.json()["path"] == "/e"
    # Pipelined, on a raw socket: both answered, in order.
    port = server.listener_address("ingress").port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
    assert out.count(b"HTTP/1.1 200 ") == 2
    assert out.index(b'"path": "/1"') < out.index(b'"path": "/2"')
    # A smuggling attempt is still refused.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        with trio.fail_after(5):
            answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    await settle(server)
    assert counter(server, "http.ingress_http.downstream_rq_2xx") == 9
    assert counter(server, "cluster.svc.upstream_rq_200") == 9
