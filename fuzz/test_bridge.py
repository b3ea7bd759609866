"""Invariant: a request bridged HTTP/1.1 -> HTTP/2 or HTTP/2 -> HTTP/1.1 reaches
the upstream with the same method, path, body bytes and end-to-end headers
(hop-by-hop ones removed, RFC 9110 7.6.1), and the client gets the
upstream's status, body and trailers wherever its protocol can carry them.

A drawn request (method, path and query, end-to-end `x-e2e-*` headers with
repeats, hop-by-hop headers — `connection` naming another header,
`keep-alive`, `proxy-connection`, `te`, `upgrade` without `connection:
upgrade` — a body split into drawn chunks, optional trailers) is sent

- as HTTP/1.1 (Content-Length, or chunked with the drawn chunks and
  trailers) to a proxy whose cluster speaks HTTP/2 (`tests/upstream_h2.py`);
- as HTTP/2 (one DATA frame per chunk, trailers as a final HEADERS) to a
  proxy whose cluster speaks HTTP/1.1 (`tests/upstream.py`).

The upstream echoes the body (`x-test-echo`), answers with a drawn status
(`x-test-status`) and, if asked, a trailer (`x-test-trailers`). Checked:

1. the upstream received exactly one request, with the method, path and
   body bytes sent (and the request trailers, both protocols carry them);
2. every end-to-end header arrived with its value, in order; no hop-by-hop
   header did (`te: trailers` excepted, as in Envoy);
3. the client got the status, the echoed body and the response trailer;
4. no crash, every `*_active` gauge back to 0.

Both run on the in-memory network under `MockClock(autojump_threshold=0)`.
"""

from __future__ import annotations

import string
from typing import Any

import attrs
import h11
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz._harness import Records, check_no_crash, quiet, run
from fuzz.conftest import fuzz_settings, time_capped
from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from tests.h2client import H2Client
from tests.memnet import MemoryNetwork
from tests.upstream_h2 import start_upstream_h2

Headers = list[tuple[bytes, bytes]]
# Never hop-by-hop, never touched by the proxy.
E2E_NAMES = st.text(string.ascii_lowercase, min_size=1, max_size=6).map(
    lambda s: b"x-e2e-" + s.encode()
)
VALUES = st.text(string.ascii_letters + string.digits + " -_.,;=/", max_size=16).map(
    lambda s: s.strip().encode()
)
# Hop-by-hop fields an HTTP/1.1 client may send (RFC 9110 7.6.1); HTTP/2
# forbids them all but `te: trailers`.
HOP_BY_HOP = [
    (b"connection", b"x-hop-a"),
    (b"connection", b"keep-alive, x-hop-b"),
    (b"x-hop-a", b"1"),
    (b"x-hop-b", b"2"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"keep-alive"),
    (b"te", b"trailers"),
    (b"te", b"gzip"),
    (b"upgrade", b"foo/1"),
]


@attrs.frozen
class Request:
    method: str
    path: str
    e2e: tuple[tuple[bytes, bytes], ...]
    hop: tuple[tuple[bytes, bytes], ...]
    chunks: tuple[bytes, ...]
    trailers: tuple[tuple[bytes, bytes], ...] | None
    status: int
    want_trailers: bool
    with_length: bool  # HTTP/1.1: Content-Length (else chunked); HTTP/2: content-length too

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def steering(self) -> Headers:
        out = [(b"x-test-echo", b"1"), (b"x-test-status", str(self.status).encode())]
        if self.want_trailers:
            out.append((b"x-test-trailers", b"1"))
        return out


@st.composite
def requests(draw: st.DrawFn) -> Request:
    trailers = None
    with_length = draw(st.booleans())
    if draw(st.booleans()):
        trailers = tuple(draw(st.lists(st.tuples(E2E_NAMES, VALUES), min_size=1, max_size=3)))
        with_length = False  # trailers need chunked framing on HTTP/1.1
    path = "/" + draw(st.text(string.ascii_letters + string.digits + "-._~%/", max_size=20))
    if draw(st.booleans()):
        path += "?" + draw(st.text(string.ascii_letters + "=&%", max_size=10))
    return Request(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])),
        path=path,
        e2e=tuple(draw(st.lists(st.tuples(E2E_NAMES, VALUES), max_size=5))),
        hop=tuple(draw(st.lists(st.sampled_from(HOP_BY_HOP), max_size=4, unique=True))),
        chunks=tuple(draw(st.lists(st.binary(min_size=1, max_size=200), max_size=5))),
        trailers=trailers,
        status=draw(st.sampled_from([200, 201, 404, 500, 503])),
        want_trailers=draw(st.booleans()),
        with_length=with_length,
    )


def _is_hop_by_hop(name: bytes, value: bytes, sent: Headers, framing: bool) -> bool:
    """Hop-by-hop (or named by the client's `connection`); with `framing`, the
    HTTP/1.1 upstream's own `transfer-encoding: chunked` is not counted."""
    if framing and (name, value) == (b"transfer-encoding", b"chunked"):
        return False
    named = {t.strip().lower() for k, v in sent if k == b"connection" for t in v.split(b",") if t}
    if name == b"te":
        return value.strip().lower() != b"trailers"
    return name in {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"
    } or name in named  # fmt: skip


def check_upstream(req: Request, record: dict[str, Any], sent: Headers, *, h1: bool) -> None:
    assert record["method"] == req.method
    assert record["path"] == req.path, (record["path"], req.path)
    got: Headers = [(k.encode(), v.encode("latin-1")) for k, v in record["header_list"]]
    it = iter(got)
    for header in req.e2e:
        assert header in it, f"end-to-end header {header} lost or reordered: {got}"
    hop = [(k, v) for k, v in got if _is_hop_by_hop(k, v, sent, h1)]
    assert not hop, f"hop-by-hop headers forwarded: {hop}"
    if req.trailers:
        trailers = [(k.encode(), v.encode("latin-1")) for k, v in record["trailers"]]
        assert trailers == list(req.trailers), (trailers, req.trailers)


# --------------------------------------------------------------------------- HTTP/1.1 -> HTTP/2


async def _h1_to_h2(req: Request, logs: Records) -> None:
    net = MemoryNetwork()
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            up = await start_upstream_h2(nursery, network=net)
            mesh = simple_mesh([route_to("svc")], [cluster("svc", up, protocol="http2")])
            server = await start_proxy(nursery, mesh, net)
            port = server.listener_address("ingress").port

            sent: Headers = [(b"host", b"example.com"), *req.e2e, *req.hop, *req.steering()]
            if req.with_length:
                sent.append((b"content-length", str(len(req.body)).encode()))
            else:
                sent.append((b"transfer-encoding", b"chunked"))
            conn = h11.Connection(h11.CLIENT)
            out = conn.send(h11.Request(method=req.method, target=req.path, headers=sent)) or b""
            for chunk in req.chunks:
                out += conn.send(h11.Data(data=chunk)) or b""
            out += conn.send(h11.EndOfMessage(headers=list(req.trailers or []))) or b""
            client = await net.connect_tcp("127.0.0.1", port, timeout=0)
            await client.send_all(out)
            status, body, trailers = 0, bytearray(), []
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await client.receive_some(65536)
                    assert data, "the proxy closed before the response ended"
                    conn.receive_data(data)
                elif type(ev) is h11.Response:
                    status = ev.status_code
                elif type(ev) is h11.Data:
                    body += ev.data
                elif type(ev) is h11.EndOfMessage:
                    trailers = [(bytes(k), bytes(v)) for k, v in ev.headers]
                    break
            await client.aclose()

            assert len(up.requests) == 1, up.requests
            record = up.requests[0]
            assert record["body"] == req.body
            check_upstream(req, record, sent, h1=False)
            assert (status, bytes(body)) == (req.status, req.body)
            if req.want_trailers:
                assert (b"x-trailer", b"yes") in trailers, trailers
            await quiet()
            check_no_crash(server, logs)
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- HTTP/2 -> HTTP/1.1


async def _h2_to_h1(req: Request, logs: Records) -> None:
    net = MemoryNetwork()
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, network=net)
            mesh = simple_mesh([route_to("svc")], [cluster("svc", up)])
            server = await start_proxy(nursery, mesh, net)
            port = server.listener_address("ingress").port

            # HTTP/2 carries no connection-specific field but `te: trailers`.
            hop = [h for h in req.hop if h == (b"te", b"trailers")]
            sent: Headers = [*req.e2e, *hop, *req.steering()]
            if req.with_length:
                sent.append((b"content-length", str(len(req.body)).encode()))
            async with H2Client(await net.connect_tcp("127.0.0.1", port, timeout=0)) as c:
                has_body = bool(req.chunks) or req.trailers is not None
                sid = await c.start(req.method, req.path, headers=sent, end_stream=not has_body)
                for i, chunk in enumerate(req.chunks):
                    last = i == len(req.chunks) - 1 and req.trailers is None
                    await c.send_body(sid, chunk, end=last)
                if req.trailers is not None:
                    await c.send_trailers(sid, list(req.trailers))
                resp = await c.wait(sid)

            assert len(up.requests) == 1, up.requests
            record = up.requests[0]
            assert record["body_length"] == len(req.body)
            check_upstream(req, record, sent, h1=True)
            assert resp.reset_code is None, resp
            assert (resp.status, resp.body) == (req.status, req.body)
            if req.want_trailers:
                assert (b"x-trailer", b"yes") in resp.trailers, resp
            await quiet()
            check_no_crash(server, logs)
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- targets

PLAIN = Request("POST", "/p?q=1", ((b"x-e2e-a", b"1"),), (), (b"ab", b"c"), None, 200, False, True)


@fuzz_settings()
@given(req=requests())
@example(req=PLAIN)
@example(req=attrs.evolve(PLAIN, hop=tuple(HOP_BY_HOP[:6]), trailers=((b"x-e2e-t", b"v"),),
                          with_length=False, want_trailers=True))  # fmt: skip
@time_capped
def test_h1_to_h2(req: Request) -> None:
    run(_h1_to_h2, req)


@fuzz_settings()
@given(req=requests())
@example(req=PLAIN)
@example(req=attrs.evolve(PLAIN, trailers=((b"x-e2e-t", b"v"),), with_length=False,
                          want_trailers=True))  # fmt: skip
@time_capped
def test_h2_to_h1(req: Request) -> None:
    run(_h2_to_h1, req)
