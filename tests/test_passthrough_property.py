"""Property: HTTP/1.1 bodies pass byte-exact through the proxy, both ways.

For random bodies (empty, small, around the 16 KiB / 64 KiB read and chunk
boundaries, up to ~300 KB), random downstream framing (content-length or
chunked with random chunk sizes, optional chunk extensions and trailers),
random write split points of the raw request bytes, and random upstream
response framing (content-length, chunked with random chunk sizes, or
close-delimited; optionally `connection: close`) also written at random split
points, the upstream receives exactly the client's body and the client
receives exactly the upstream's body. Several requests share one downstream
connection (sequential keep-alive or pipelined), and afterwards nothing is
left active.

Every example builds a fresh proxy and upstream on a `MemoryNetwork` under
`MockClock(autojump_threshold=0)`: no ports, no sleeps, deterministic. Between
two writes the writer waits until every other task is blocked, so the reader
sees each piece on its own (memory streams would otherwise merge them).

The upstream here is a small raw-bytes server (`PlanUpstream`) rather than
`tests/upstream.py`, because it must frame responses exactly as the example
says (chunk sizes, close-delimited bodies), which h11 as a server cannot do.
The memory network's streams close synchronously, like sockets
(`close_stream_nowait` closes both halves of a memory stream pair), so a
connection the pool destroys really reaches its peer as EOF.

At the end, plain dialogues pin the bugs this harness ran into.
"""

from __future__ import annotations

import random

import attrs
import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from tests.memnet import MemoryNetwork, RawClient
from trioproxy.codec.http1 import (
    CLOSED,
    PARSERS,
    EndOfMessage,
    Http1ClientCodec,
    Http1Error,
    Http1ServerCodec,
)
from trioproxy.codec.stream import RequestHead
from trioproxy.runtime.server import Server

KIB = 1024
# Sizes that straddle the proxy's 64 KiB reads, h11's and the test upstream's
# 16 KiB pieces, and the empty body.
BOUNDARY_SIZES = (
    0, 1, 2,
    16 * KIB - 1, 16 * KIB, 16 * KIB + 1,
    32 * KIB,
    64 * KIB - 1, 64 * KIB, 64 * KIB + 1,
    128 * KIB + 3,
    300_000,
)  # fmt: skip
MAX_BODY = 300_000
# Bytes that look like framing, to catch a relay that parses what it should copy.
TRICKY = (b"", b"\r\n", b"0\r\n\r\n", b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"\x00", b"\n0\n\n")


# --------------------------------------------------------------------------- strategies


@attrs.frozen
class Body:
    """A body described by its recipe, so failing examples print short and replay.

    The bytes are a framing-like `prefix` then `size` seeded random bytes
    (`fill` instead, when given, repeats one byte: easier to read in a diff).
    """

    size: int
    seed: int = 0
    prefix: bytes = b""
    fill: bytes = b""

    @property
    def data(self) -> bytes:
        rest = self.fill * self.size if self.fill else random.Random(self.seed).randbytes(self.size)
        return self.prefix + rest


@st.composite
def bodies(draw: st.DrawFn, max_size: int = MAX_BODY) -> Body:
    sizes = [s for s in BOUNDARY_SIZES if s <= max_size]
    size = draw(st.one_of(st.sampled_from(sizes), st.integers(0, max_size)))
    prefix = draw(st.sampled_from(TRICKY))
    return Body(size=max(0, size - len(prefix)), seed=draw(st.integers(0, 2**16)), prefix=prefix)


EMPTY = Body(0)


def maybe_empty(max_size: int) -> st.SearchStrategy[Body]:
    """A body, empty one time in five."""
    return st.integers(0, 4).flatmap(lambda k: st.just(EMPTY) if k == 0 else bodies(max_size))


splits = st.lists(st.integers(0, 2**20), max_size=6)
# Chunk sizes cycle over the body; a few straddle the 64 KiB read size.
chunk_sizes = st.lists(
    st.one_of(st.integers(1, 40), st.integers(1, 70 * KIB), st.sampled_from([16 * KIB, 64 * KIB])),
    min_size=1,
    max_size=4,
)


@attrs.define
class RequestPlan:
    method: bytes
    body: Body
    chunked: bool  # else content-length (or no framing header for an empty body)
    explicit_zero: bool  # empty body with content-length: 0 rather than no header
    chunks: list[int]
    chunk_ext: bool
    trailers: bool
    expect_continue: bool


@attrs.define
class ResponsePlan:
    status: int
    body: Body
    framing: str  # "length" | "chunked" | "close"
    chunks: list[int]
    upper_hex: bool
    trailers: bool
    connection_close: bool
    splits: list[int]


@st.composite
def request_plans(draw: st.DrawFn, max_body: int = MAX_BODY) -> RequestPlan:
    body = draw(maybe_empty(max_body))
    chunked = draw(st.booleans())
    return RequestPlan(
        method=draw(st.sampled_from([b"POST", b"PUT"])) if body.data or chunked else b"GET",
        body=body,
        chunked=chunked,
        explicit_zero=draw(st.booleans()),
        chunks=draw(chunk_sizes),
        chunk_ext=draw(st.booleans()),
        trailers=chunked and draw(st.booleans()),
        expect_continue=bool(body.data) and draw(st.booleans()),
    )


@st.composite
def response_plans(draw: st.DrawFn, max_body: int = MAX_BODY) -> ResponsePlan:
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    return ResponsePlan(
        status=draw(st.sampled_from([200, 200, 201, 404, 500])),
        body=draw(maybe_empty(max_body)),
        framing=framing,
        chunks=draw(chunk_sizes),
        upper_hex=draw(st.booleans()),
        trailers=framing == "chunked" and draw(st.booleans()),
        connection_close=framing == "close" or draw(st.booleans()),
        splits=draw(splits),
    )


@attrs.define
class Exchange:
    request: RequestPlan
    response: ResponsePlan


exchanges = st.builds(Exchange, request_plans(), response_plans())


# --------------------------------------------------------------------------- wire helpers


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut at `points` (taken modulo its length); never an empty piece."""
    cuts = sorted({p % len(data) for p in points if len(data)} - {0})
    pieces, last = [], 0
    for c in cuts:
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    return [p for p in pieces if p]


# Chunks per body at most (about): 1-byte chunks over 300 KB cost seconds and
# find nothing 1-byte chunks over 3 KB do not.
MAX_CHUNKS = 1000


def chunk(body: bytes, sizes: list[int]) -> list[bytes]:
    """`body` cut into chunks of the given sizes, cycled."""
    floor = -(-len(body) // MAX_CHUNKS)
    out, i, k = [], 0, 0
    while i < len(body):
        n = max(sizes[k % len(sizes)], floor)
        out.append(body[i : i + n])
        i += n
        k += 1
    return out


def encode_chunked(
    body: bytes, sizes: list[int], *, upper: bool, ext: bool, trailers: bool
) -> bytes:
    out = bytearray()
    for piece in chunk(body, sizes):
        size = b"%X" % len(piece) if upper else b"%x" % len(piece)
        out += size + (b";ext=1" if ext else b"") + b"\r\n" + piece + b"\r\n"
    out += b"0\r\n"
    if trailers:
        out += b"x-checksum: %d\r\n" % (sum(body) & 0xFFFF)
    out += b"\r\n"
    return bytes(out)


def encode_request(plan: RequestPlan, index: int) -> bytes:
    head = [b"%s /echo/%d HTTP/1.1" % (plan.method, index), b"host: example.com"]
    head.append(b"x-plan: %d" % index)
    if plan.expect_continue:
        head.append(b"expect: 100-continue")
    if plan.chunked:
        head.append(b"transfer-encoding: chunked")
        body = encode_chunked(
            plan.body.data, plan.chunks, upper=False, ext=plan.chunk_ext, trailers=plan.trailers
        )
    else:
        body = plan.body.data
        if body or plan.explicit_zero:
            head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


REASON = {200: b"OK", 201: b"Created", 404: b"Not Found", 500: b"Internal Server Error"}


def encode_response(plan: ResponsePlan) -> bytes:
    head = [b"HTTP/1.1 %d %s" % (plan.status, REASON[plan.status]), b"content-type: x/y"]
    if plan.connection_close:
        head.append(b"connection: close")
    if plan.framing == "length":
        body = plan.body.data
        head.append(b"content-length: %d" % len(body))
    elif plan.framing == "chunked":
        head.append(b"transfer-encoding: chunked")
        body = encode_chunked(
            plan.body.data, plan.chunks, upper=plan.upper_hex, ext=False, trailers=plan.trailers
        )
    else:
        body = plan.body.data
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def write_in_pieces(stream: trio.abc.SendStream, data: bytes, points: list[int]) -> None:
    """Write `data` cut at `points`, letting the peer read each piece on its own."""
    for i, piece in enumerate(split_at(data, points)):
        if i:
            await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(piece)


# --------------------------------------------------------------------------- network


# --------------------------------------------------------------------------- upstream


class PlanUpstream:
    """An HTTP/1.1 upstream that answers request `x-plan: i` with `plans[i]`.

    It parses requests with h11, records each body it received (byte-exact)
    in `received[i]`, and writes the planned response as raw bytes (so chunk
    sizes and close-delimited bodies are exactly as planned), cut at the
    plan's split points.
    """

    def __init__(self, plans: dict[int, ResponsePlan]) -> None:
        self.plans = plans
        self.received: dict[int, bytes] = {}
        self.port = 0
        self.connections = 0
        self.open_connections = 0

    async def run(
        self,
        net: MemoryNetwork,
        *,
        task_status: trio.TaskStatus[PlanUpstream] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener, (_, self.port) = await net.listen_tcp("127.0.0.1", 0)
        task_status.started(self)
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(self._handle, await listener.accept())

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        self.open_connections += 1
        buffered = b""
        try:
            async with stream:
                while True:
                    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * KIB)
                    if buffered:  # (h11 reads b"" as end of stream)
                        conn.receive_data(buffered)
                    plan_id, body = await self._read_request(conn, stream)
                    if plan_id is None:
                        return
                    self.received[plan_id] = body
                    plan = self.plans[plan_id]
                    await write_in_pieces(stream, encode_response(plan), plan.splits)
                    if plan.connection_close:
                        return
                    buffered = conn.trailing_data[0]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.open_connections -= 1

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[int | None, bytes]:
        plan_id: int | None = None
        body = bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:  # the proxy abandoned the request
                    return None, b""
                conn.receive_data(data)
            elif type(ev) is h11.Request:
                plan_id = int(dict(ev.headers)[b"x-plan"])
            elif type(ev) is h11.Data:
                body += ev.data
            elif type(ev) is h11.EndOfMessage:
                return plan_id, bytes(body)
            else:  # ConnectionClosed
                return None, b""


# --------------------------------------------------------------------------- client


async def read_responses(
    stream: trio.abc.Stream, conn: h11.Connection, methods: list[bytes], count: int
) -> list[tuple[int, bytes]]:
    """Read `count` responses with h11 as the client (so their syntax is checked)."""
    out: list[tuple[int, bytes]] = []
    for i in range(count):
        conn.send(h11.Request(method=methods[i], target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, body = 0, bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif type(ev) is h11.InformationalResponse:
                continue
            elif type(ev) is h11.Response:
                status = ev.status_code
            elif type(ev) is h11.Data:
                body += ev.data
            elif type(ev) is h11.EndOfMessage:
                break
            else:
                raise AssertionError(f"response {i}: unexpected {ev!r}")
        out.append((status, bytes(body)))
        assert conn.our_state is h11.DONE and conn.their_state is h11.DONE, (
            f"response {i} ended the downstream connection: {conn.their_state}"
        )
        conn.start_next_cycle()
    return out


def active_gauges(server: Server) -> dict[str, int]:
    """Every non-zero `*_active` gauge except pooled upstream connections (idle ones stay)."""
    return {
        name: g.value
        for name, g in server.stats.gauges.items()
        if name.endswith("_active") and not name.endswith("upstream_cx_active") and g.value
    }


async def run_exchanges(
    items: list[Exchange], *, pipelined: bool, request_splits: list[int]
) -> tuple[PlanUpstream, list[tuple[int, bytes]]]:
    net = MemoryNetwork()
    up = PlanUpstream({i: ex.response for i, ex in enumerate(items)})
    with trio.fail_after(3600):  # virtual seconds: a hang fails, it does not wait
        async with trio.open_nursery() as nursery:
            await nursery.start(up.run, net)
            mesh = simple_mesh([route_to("svc")], [cluster("svc", f"127.0.0.1:{up.port}")])
            server = await start_proxy(nursery, mesh, net)
            client = await net.connect_tcp(
                "127.0.0.1", server.listener_address("ingress").port, timeout=0
            )
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * KIB)
            methods = [ex.request.method for ex in items]
            wire = [encode_request(ex.request, i) for i, ex in enumerate(items)]
            if pipelined:
                await write_in_pieces(client, b"".join(wire), request_splits)
                responses = await read_responses(client, conn, methods, len(items))
            else:
                responses = []
                for i, data in enumerate(wire):
                    await write_in_pieces(client, data, request_splits)
                    responses += await read_responses(client, conn, methods[i:], 1)
            await client.aclose()
            for _ in range(3):  # other tasks may be waiting for quiet too
                await trio.testing.wait_all_tasks_blocked()
            leaks = active_gauges(server)
            pool = server.clusters.get("svc").hosts[0].pool  # type: ignore[union-attr]
            assert not leaks, f"still active after the client left: {leaks}"
            assert server.stats.counters["server.connection_task_errors"].value == 0
            # Only idle pooled connections may stay open, on both ends.
            assert pool.active == pool.idle_count == up.open_connections
            nursery.cancel_scope.cancel()
    return up, responses


def check(items: list[Exchange], pipelined: bool, request_splits: list[int]) -> None:
    up, responses = trio.run(
        lambda: run_exchanges(items, pipelined=pipelined, request_splits=request_splits),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    for i, ex in enumerate(items):
        got = up.received.get(i)
        assert got is not None, f"request {i} never reached the upstream"
        want = ex.request.body.data
        assert len(got) == len(want), f"request {i}: body length"
        assert got == want, f"request {i}: body bytes differ"
        status, body = responses[i]
        assert status == ex.response.status, f"response {i}: status"
        want = ex.response.body.data
        assert len(body) == len(want), f"response {i}: body length"
        assert body == want, f"response {i}: body bytes differ"


def _req(
    body: Body, *, chunked: bool = False, chunks: tuple[int, ...] = (16 * KIB,)
) -> RequestPlan:
    return RequestPlan(
        method=b"POST",
        body=body,
        chunked=chunked,
        explicit_zero=False,
        chunks=list(chunks),
        chunk_ext=False,
        trailers=False,
        expect_continue=False,
    )


def _resp(body: Body, framing: str = "length", *, close: bool = False) -> ResponsePlan:
    return ResponsePlan(
        status=200,
        body=body,
        framing=framing,
        chunks=[16 * KIB],
        upper_hex=False,
        trailers=False,
        connection_close=close or framing == "close",
        splits=[],
    )


# --------------------------------------------------------------------------- the properties


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=st.lists(exchanges, min_size=1, max_size=3),
    pipelined=st.booleans(),
    request_splits=splits,
)
@example(
    items=[
        Exchange(
            _req(Body(64 * KIB + 1, fill=b"x"), chunked=True),
            _resp(Body(64 * KIB, fill=b"y"), "close"),
        )
    ],
    pipelined=False,
    request_splits=[1, 17, 64 * KIB],
)
@example(
    items=[
        Exchange(_req(EMPTY), _resp(EMPTY)),
        Exchange(_req(Body(300_000, fill=b"a")), _resp(Body(300_000, fill=b"b"))),
    ],
    pipelined=True,
    request_splits=[5],
)
def test_bodies_pass_byte_exact(
    items: list[Exchange], pipelined: bool, request_splits: list[int]
) -> None:
    check(items, pipelined, request_splits)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    items=st.lists(
        st.builds(
            Exchange,
            request_plans(4 * KIB),
            response_plans(4 * KIB),
        ),
        min_size=2,
        max_size=6,
    ),
    pipelined=st.booleans(),
    request_splits=splits,
)
def test_keep_alive_many_small_requests(
    items: list[Exchange], pipelined: bool, request_splits: list[int]
) -> None:
    """Many small exchanges on one downstream connection, every framing mixed."""
    check(items, pipelined, request_splits)


# --------------------------------------------------------------------------- regressions
# Bugs the harness above ran into, pinned as plain dialogues.


async def test_upstream_closing_before_the_response_is_503_uc(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An upstream that closes without answering was a 502 UPE (h11 calls an EOF
    before the response a protocol error); Envoy says 503 UC, connection termination."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        up = await start_upstream(nursery, network=net)
        mesh = simple_mesh([route_to("svc")], [cluster("svc", up)])
        server = await start_proxy(nursery, mesh, net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        resp = await client.request(headers=[("x-test-close", "1")])
        assert resp.status == 503
        assert resp.body.endswith(b"reset reason: connection termination")
        assert server.stats.counters["cluster.svc.upstream_rq_rx_reset"].value == 1
        assert server.stats.counters["cluster.svc.upstream_cx_protocol_error"].value == 0
        # The downstream connection is fine.
        assert (await client.request()).status == 200
        nursery.cancel_scope.cancel()


async def test_client_leaving_mid_body_is_a_reset_not_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that sends half its body then closes was counted as a downstream
    protocol error (and answered 400); it is a reset (DC)."""
    net = MemoryNetwork()
    plans = {0: _resp(EMPTY)}
    up = PlanUpstream(plans)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run, net)
        mesh = simple_mesh([route_to("svc")], [cluster("svc", f"127.0.0.1:{up.port}")])
        server = await start_proxy(nursery, mesh, net)
        client = await net.connect_tcp(
            "127.0.0.1", server.listener_address("ingress").port, timeout=0
        )
        await client.send_all(
            b"POST / HTTP/1.1\r\nhost: a\r\nx-plan: 0\r\ncontent-length: 10\r\n\r\n12345"
        )
        await trio.testing.wait_all_tasks_blocked()
        await client.send_eof()  # type: ignore[attr-defined]
        assert await client.receive_some(65536) == b""  # closed, no 400
        await trio.testing.wait_all_tasks_blocked()
        stats = server.stats.counters
        assert stats["http.ingress_http.downstream_cx_protocol_error"].value == 0
        assert stats["http.ingress_http.downstream_rq_rx_reset"].value == 1
        assert not active_gauges(server)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("parser", PARSERS)
def test_codec_end_of_stream_mid_message_is_closed_not_an_error(parser: str) -> None:
    """Sans-IO: an EOF inside a message is CLOSED; after a close-delimited body it ends it."""

    def client() -> Http1ClientCodec:
        c = Http1ClientCodec(parser=parser)
        c.send_request_head(
            RequestHead(method=b"GET", path=b"/", authority=b"a"), body=False, content_length=None
        )
        return c

    c = client()
    c.receive_data(b"")
    assert c.next_event() is CLOSED  # no response at all
    c = client()
    c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-le")
    c.receive_data(b"")
    assert c.next_event() is CLOSED  # head cut short
    assert c.next_event() is CLOSED  # and stays so
    c = client()
    c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
    c.receive_data(b"")
    c.next_event()
    assert c.next_event() == b"ab"
    assert c.next_event() is CLOSED  # body cut short
    c = client()
    c.receive_data(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc")
    c.receive_data(b"")
    c.next_event()
    assert c.next_event() == b"abc"
    assert type(c.next_event()) is EndOfMessage  # close-delimited: EOF ends it
    s = Http1ServerCodec(parser=parser)
    s.receive_data(b"GARBAGE\r\n\r\n")
    s.receive_data(b"")
    with pytest.raises(Http1Error) as err:  # invalid bytes before the EOF stay an error
        s.next_event()
    assert err.value.status == 400
