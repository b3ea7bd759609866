"""Bodies and trailers pass byte-exact through all four protocol bridges:
h1→h1, h1→h2, h2→h1, h2→h2 (Hypothesis property over sizes and chunkings).

Each example runs a fresh trio loop with a real h1 upstream, a real h2
upstream and a proxy with one route per upstream, all on 127.0.0.1; the
client is httpx (HTTP/1.1, chunked when the body comes as pieces) or
`tests.h2client` (DATA frames split at the drawn points).
"""

from __future__ import annotations

from itertools import pairwise

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from tests.h2client import H2Client
from tests.upstream_h2 import start_upstream_h2


def _pieces(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in pairwise(points)]


async def _through(
    downstream: str, upstream: str, body: bytes, cuts: list[int], chunked_response: bool
) -> None:
    async with trio.open_nursery() as n:
        up1 = await start_upstream(n)
        up2 = await start_upstream_h2(n)
        mesh = simple_mesh(
            [route_to("h1", "/h1"), route_to("h2", "/h2")],
            [cluster("h1", up1), cluster("h2", up2.address, protocol="http2")],
        )
        server = await start_proxy(n, mesh)
        port = server.listener_address("ingress").port
        path = f"/{upstream}/echo"
        headers = {"x-test-echo": "1"}
        if chunked_response:
            headers["x-test-chunked"] = "1"
        pieces = _pieces(body, cuts)
        with trio.fail_after(20):
            if downstream == "h1":

                async def gen():  # type: ignore[no-untyped-def]
                    for p in pieces:
                        yield p

                async with httpx.AsyncClient() as c:
                    content = gen() if len(pieces) > 1 else body
                    r = await c.post(
                        f"http://127.0.0.1:{port}{path}", content=content, headers=headers
                    )
                    assert r.status_code == 200
                    assert r.content == body
            else:
                async with await H2Client.connect(port) as c:
                    h = [(k.encode(), v.encode()) for k, v in headers.items()]
                    sid = await c.start("POST", path, headers=h, end_stream=False)
                    for p in pieces:
                        await c.send_body(sid, p, end=False)
                    await c.send_trailers(sid, [(b"x-client-trailer", b"t")])
                    resp = await c.wait(sid)
                    assert resp.status == 200, resp
                    assert resp.body == body
                    assert resp.reset_code is None
            seen = (up1 if upstream == "h1" else up2).requests[-1]
            assert seen["body_length"] == len(body)
            if downstream == "h2":
                # Request trailers survive every bridge that can carry them.
                assert [tuple(t) for t in seen["trailers"]] == [("x-client-trailer", "t")]
        n.cancel_scope.cancel()


bodies = st.one_of(
    st.binary(max_size=2048),
    st.integers(min_value=0, max_value=300_000).map(lambda n: bytes(i % 251 for i in range(n))),
    st.sampled_from([16383, 16384, 16385, 65535, 65536, 65537]).map(lambda n: b"\xff" * n),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    downstream=st.sampled_from(["h1", "h2"]),
    upstream=st.sampled_from(["h1", "h2"]),
    body=bodies,
    cuts=st.lists(st.integers(min_value=0, max_value=400_000), max_size=6),
    chunked_response=st.booleans(),
)
def test_bodies_are_byte_exact_across_bridges(
    downstream: str, upstream: str, body: bytes, cuts: list[int], chunked_response: bool
) -> None:
    trio.run(_through, downstream, upstream, body, cuts, chunked_response)


def test_every_bridge_once() -> None:
    """The four combinations, deterministically, so none is left to chance."""
    for downstream in ("h1", "h2"):
        for upstream in ("h1", "h2"):
            trio.run(_through, downstream, upstream, b"hello" * 5000, [7, 9000], True)
