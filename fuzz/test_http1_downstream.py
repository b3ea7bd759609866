"""Invariant: no byte sequence a client sends makes the HTTP/1 downstream path misbehave.

Whatever bytes arrive on a downstream connection (whole, byte by byte, or at
random split points; then half-closed or left open):

1. the proxy answers with syntactically valid HTTP/1.1 responses (parsed by
   h11 as the client) or closes cleanly, never with a partial response;
2. it forwards nothing a reference parser would not: every request the
   upstream receives is well-formed and is, in order, the method and exact
   body h11 reads from the same bytes (no smuggling, no desync);
3. it never crashes: `server.connection_task_errors` stays 0, `trio.run`
   never sees an exception, and the upstream never sees a protocol error;
4. it never leaks: once the client is gone every `*_active` gauge is back
   to 0 and the pool lends no connection (only idle ones stay, on both ends);
5. a valid request on a fresh connection still gets its answer.

Inputs are raw `binary()` and near-valid requests: valid ones mutated with
bad header names, huge/negative/duplicated content-length, conflicting
Transfer-Encoding and Content-Length, bare LF, NUL bytes, obs-fold, wrong
versions, oversized heads, pipelining and truncation.

Each example runs a fresh proxy and echo upstream on a `MemoryNetwork` under
`MockClock(autojump_threshold=0)`: the proxy's own timeouts (request headers
10 s, idle 30 s here) fire instantly, so an input that leaves the proxy waiting
costs no wall time. The budget is `TRIOPROXY_FUZZ_EXAMPLES` per target.
"""

from __future__ import annotations

import itertools

import attrs
import h11
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz._harness import Records, active, check_no_crash, framed_payload, framing_lines, quiet, run
from fuzz.conftest import fuzz_examples
from tests.conftest import cluster, route_to, simple_mesh, start_proxy
from tests.memnet import MemoryNetwork, RawClient
from tests.serving import LoopbackServer

KIB = 1024
# With the default `codec="auto"` a cleartext connection that opens with the
# HTTP/2 preface is served as h2c; such inputs are checked for crashes and
# leaks only (HTTP/2 framing is another target's invariant).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FUZZ = settings(
    max_examples=fuzz_examples(),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# --------------------------------------------------------------------------- network


# --------------------------------------------------------------------------- upstream


@attrs.define
class Seen:
    method: bytes
    body: bytes


class EchoUpstream(LoopbackServer):
    """An h11 upstream that answers every request with its body (no body for HEAD).

    It is strict on purpose: a request h11 cannot parse is recorded in
    `errors`, because the proxy must never forward one.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self.open_connections = 0

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.open_connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * KIB)
        try:
            async with stream:
                while True:
                    req: h11.Request | None = None
                    body = bytearray()
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            if not data:
                                # The proxy abandoned the request (its client left):
                                # a close mid-message is a reset, not invalid bytes.
                                return
                            conn.receive_data(data)
                        elif type(ev) is h11.Request:
                            req = ev
                        elif type(ev) is h11.Data:
                            body += ev.data
                        elif type(ev) is h11.EndOfMessage:
                            break
                        else:  # ConnectionClosed (or PAUSED: nothing to do with it)
                            return
                    assert req is not None
                    self.seen.append(Seen(bytes(req.method), bytes(body)))
                    payload = b"" if req.method == b"HEAD" else bytes(body)
                    out = conn.send(
                        h11.Response(
                            status_code=200,
                            headers=[("content-length", str(len(body)))],
                        )
                    )
                    if payload:
                        out += conn.send(h11.Data(data=payload))
                    out += conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except h11.ProtocolError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.open_connections -= 1


# --------------------------------------------------------------------------- reference


def reference_requests(data: bytes) -> tuple[list[bytes], list[Seen]]:
    """What h11, as a server, reads from `data` before it would stop.

    Returns the method of every request begun, complete or not (the proxy
    answers a head whose body never comes, or rejects one h11 cannot parse:
    then the method is read from the request's first bytes, as the client
    that sent them knows it), and the complete requests.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * KIB)
    conn.receive_data(data)
    methods: list[bytes] = []
    complete: list[Seen] = []
    req: h11.Request | None = None
    body = bytearray()

    def begin() -> None:
        start = conn.trailing_data[0].lstrip(b"\r\n")
        if start:
            methods.append(b"HEAD" if start.startswith(b"HEAD ") else b"?")

    begin()
    try:
        while True:
            ev = conn.next_event()
            if type(ev) is h11.Request:
                req, body = ev, bytearray()
                methods[-1] = bytes(ev.method)
            elif type(ev) is h11.Data:
                body += ev.data
            elif type(ev) is h11.EndOfMessage:
                assert req is not None
                complete.append(Seen(bytes(req.method), bytes(body)))
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
                begin()
            else:
                break
    except h11.ProtocolError:
        pass
    return methods, complete


def check_responses(data: bytes, methods: list[bytes]) -> int:
    """Parse everything the proxy wrote as a sequence of responses; their count.

    Response `i` is read as the answer to request `i`'s method (HEAD has no
    body), GET past the reference's requests. Fails on any syntax error, on
    bytes after a `connection: close` response, or on a response cut short.
    Ending after only `1xx` informational responses is a clean close (the
    client left mid-request).
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024 * KIB)
    conn.receive_data(data)
    count = 0
    while True:
        if conn.our_state is h11.IDLE:
            if not conn.trailing_data[0]:
                return count  # ends at a message boundary
            method = methods[count] if count < len(methods) else b"GET"
            conn.send(
                h11.Request(
                    method=b"HEAD" if method == b"HEAD" else b"GET",
                    target="/",
                    headers=[("host", "x")],
                )
            )
            conn.send(h11.EndOfMessage())
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise AssertionError(
                f"response {count}: invalid HTTP/1.1 ({exc}); proxy wrote {data[:2000]!r}"
            ) from None
        if type(ev) is h11.EndOfMessage:
            count += 1
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
        elif ev is h11.NEED_DATA or ev is h11.PAUSED:
            # All the proxy wrote has been read: it closed here.
            assert not conn.trailing_data[0], (
                f"response {count} cut short: {conn.trailing_data[0][:500]!r}"
            )
            assert conn.their_state is not h11.SEND_BODY, f"response {count} body cut short"
            return count


# --------------------------------------------------------------------------- harness


@attrs.frozen
class Delivery:
    """How the input reaches the proxy."""

    mode: str  # "whole" | "bytewise" | "split"
    points: tuple[int, ...] = ()
    half_close: bool = True  # send EOF after the input, else leave the connection open

    def pieces(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if self.mode == "whole":
            return [data]
        if self.mode == "bytewise" and len(data) <= 2 * KIB:
            return [data[i : i + 1] for i in range(len(data))]
        cuts = sorted({p % len(data) for p in self.points} - {0})
        edges = [0, *cuts, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


deliveries = st.builds(
    Delivery,
    mode=st.sampled_from(["whole", "bytewise", "split"]),
    points=st.lists(st.integers(0, 2**20), max_size=8).map(tuple),
    half_close=st.booleans(),
)


async def _fuzz_one(data: bytes, delivery: Delivery, logs: Records) -> None:
    net = MemoryNetwork()
    up = EchoUpstream()
    with trio.fail_after(4 * 3600):  # virtual time: a hang fails at once
        async with trio.open_nursery() as nursery:
            await nursery.start(up.run, net)
            # A 30 s connection idle timeout (Envoy's is 1 h): an input that
            # leaves the connection open costs 30 virtual seconds, not 3600
            # turns of the server's once-a-second uptime ticker.
            mesh = simple_mesh(
                [route_to("svc")], [cluster("svc", f"127.0.0.1:{up.port}")], idle_timeout=30.0
            )
            server = await start_proxy(nursery, mesh, net)
            port = server.listener_address("ingress").port
            client = await net.connect_tcp("127.0.0.1", port, timeout=0)

            # Write the input; a proxy that already closed may refuse the rest.
            try:
                for i, piece in enumerate(delivery.pieces(data)):
                    if i:
                        await trio.testing.wait_all_tasks_blocked()
                    await client.send_all(piece)
                await trio.testing.wait_all_tasks_blocked()
                if delivery.half_close:
                    await client.send_eof()  # type: ignore[attr-defined]
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            # Read until the proxy closes (its timeouts run on the virtual clock).
            received = bytearray()
            while chunk := await client.receive_some(65536):
                received += chunk
            await client.aclose()
            await quiet()

            # 1. valid responses; 2. the upstream saw exactly what h11 reads.
            methods, reference = reference_requests(data)
            if not data.startswith(H2_PREFACE):  # h2c prior knowledge: not this target's syntax
                check_responses(bytes(received), methods)
            assert not up.errors, f"the proxy forwarded an invalid request: {up.errors}"
            assert len(up.seen) <= len(reference), (
                f"upstream saw {len(up.seen)} requests, the client sent {len(reference)}"
            )
            for i, (got, want) in enumerate(zip(up.seen, reference, strict=False)):
                assert got.method == want.method, f"request {i}: method"
                assert got.body == want.body, (
                    f"request {i}: body ({len(got.body)} vs {len(want.body)})"
                )
            # 3. no crash; 4. no leak.
            check_no_crash(server, logs)
            pool = server.clusters.get("svc").hosts[0].pool  # type: ignore[union-attr]
            assert pool.active == pool.idle_count == up.open_connections, (
                f"pool active {pool.active}, idle {pool.idle_count}, "
                f"upstream open {up.open_connections}"
            )
            # 5. the proxy still serves.
            seen_before = len(up.seen)
            fresh = await RawClient.connect(net, port)
            resp = await fresh.request("POST", "/after", body=b"still here")
            assert (resp.status, resp.body) == (200, b"still here")
            assert len(up.seen) == seen_before + 1
            await fresh.stream.aclose()
            await quiet()
            assert not active(server)
            nursery.cancel_scope.cancel()


def fuzz_one(data: bytes, delivery: Delivery) -> None:
    run(_fuzz_one, data, delivery)


# --------------------------------------------------------------------------- near-valid requests

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"]
TARGETS = [b"/", b"/a/b?c=d", b"http://example.com/x", b"/%41%00"]
# Valid, but each steers the proxy somewhere interesting.
BENIGN_LINES = [
    b"connection: close", b"connection: keep-alive", b"expect: 100-continue",
    b"x-forwarded-for: 1.2.3.4", b"connection: x-hop, close", b"x-hop: 1", b"te: trailers",
    b"upgrade: websocket", b"connection: upgrade", b"host: other.example.com",
    b"x-request-id: abc", b"accept: */*",
]  # fmt: skip
# Each one is a defect: bad names and values, framing conflicts and oddities.
BAD_LINES = [
    b"bad name: x", b": empty-name", b"x\x00y: z", b"nocolon", b" folded-continuation",
    b"x-a :space-before-colon", b"\x7f: del", b"x-\xff: high", b"x-nul: a\x00b",
    b"x-cr: a\rb", b"content-length: -1", b"content-length: 99999999999999999999999999",
    b"content-length: 1, 2", b"content-length: +3", b"content-length: 0x10",
    b"content-length: 3", b"transfer-encoding: chunked", b"transfer-encoding: gzip, chunked",
    b"transfer-encoding: identity", b"transfer-encoding: chunked, chunked",
    b"Transfer-Encoding : chunked", b"host:", b"host: a b", b"host: a, b",
]  # fmt: skip
DEFECTS = [
    "method", "target", "version", "no_host", "line", "line", "line", "both_framing",
    "wrong_length", "chunk_size", "trailer", "many_headers", "huge_header",
]  # fmt: skip


@st.composite
def near_valid_request(draw: st.DrawFn) -> bytes:
    """A valid request with zero to two defects (half of them have none)."""
    defects = (
        set(draw(st.lists(st.sampled_from(DEFECTS), max_size=2))) if draw(st.booleans()) else set()
    )
    method = draw(st.sampled_from(METHODS))
    if "method" in defects:
        method = draw(st.sampled_from([b"get", b"G\x00T", b"GET\t", b"", b"M" * 300]))
    target = draw(st.sampled_from(TARGETS))
    if "target" in defects:
        target = draw(st.sampled_from([b"*", b"example.com:443", b"", b"/sp ace", b"\x00"]))
    version = b"HTTP/1.1"
    if "version" in defects:
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"]))
    lines = [method + b" " + target + b" " + version]
    if "no_host" not in defects:
        lines.append(b"host: example.com")
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "none":
        body = b""
    lines += framing_lines(draw, defects, body, framing)
    lines += draw(st.lists(st.sampled_from(BENIGN_LINES), max_size=2))
    if "line" in defects:
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from(BAD_LINES)))
    if "many_headers" in defects:
        lines += [b"x-many-%d: v" % i for i in range(draw(st.integers(95, 130)))]
    if "huge_header" in defects:
        lines.append(b"x-huge: " + b"v" * draw(st.integers(59 * KIB, 70 * KIB)))
    payload = framed_payload(draw, defects, body, framing)
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Apply a few byte-level mutations: bare LF, NULs, flips, cuts, duplications."""
    out = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        kind = draw(
            st.sampled_from(["bare_lf", "nul", "flip", "insert", "delete", "dup", "truncate"])
        )
        if not out:
            break
        pos = draw(st.integers(0, len(out) - 1))
        if kind == "bare_lf":
            crlf = out.find(b"\r\n", pos)
            if crlf >= 0:
                del out[crlf]
        elif kind == "nul":
            out.insert(pos, 0)
        elif kind == "flip":
            out[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 8))]
        elif kind == "dup":
            out[pos:pos] = out[pos : pos + draw(st.integers(1, 64))]
        else:
            del out[pos:]
    return bytes(out)


@st.composite
def near_valid_input(draw: st.DrawFn) -> bytes:
    """One to three (pipelined) near-valid requests, then byte-level mutations."""
    requests = draw(st.lists(near_valid_request(), min_size=1, max_size=3))
    return draw(mutated(b"".join(requests)))


# --------------------------------------------------------------------------- targets

VALID = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"


@FUZZ
@given(data=st.binary(max_size=2 * KIB), delivery=deliveries)
@example(data=b"", delivery=Delivery("whole"))
@example(data=VALID + b"\x00", delivery=Delivery("whole"))
@example(data=b"\r\n" * 3 + VALID, delivery=Delivery("bytewise"))
@example(data=H2_PREFACE + b"\x00\x00", delivery=Delivery("whole"))
def test_any_bytes(data: bytes, delivery: Delivery) -> None:
    fuzz_one(data, delivery)


@FUZZ
@given(data=near_valid_input(), delivery=deliveries)
# Regression: Content-Length and Transfer-Encoding together were forwarded with
# the Content-Length, while the body was read chunked (request smuggling).
@example(
    data=b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
    b"a\r\n0123456789\r\n0\r\n\r\n",
    delivery=Delivery("whole"),
)
# Regression: a HEAD rejected before routing (426, 431, 400, 408) was answered
# with content, which a client reads as the start of the next response.
@example(
    data=b"HEAD / HTTP/1.1\r\nhost: a\r\nx-huge: " + b"v" * (61 * KIB) + b"\r\n\r\n",
    delivery=Delivery("whole"),
)
@example(data=b"HEAD / HTTP/1.1\r\nbad name: x\r\n\r\n", delivery=Delivery("whole"))
@example(data=b"HEAD / HTTP/1.1\r\nhost: a\r\n", delivery=Delivery("bytewise", half_close=False))
@example(data=b"HEAD / HTTP/1.0\r\nhost: a\r\n\r\n", delivery=Delivery("whole", half_close=False))
@example(
    data=b"HEAD / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    delivery=Delivery("whole"),
)
# Regression: a body cut short by the client (CL 1, no byte, then EOF or idle)
# must leave nothing lent from the pool and close the upstream connection.
@example(
    data=b"GET / HTTP/1.1\r\nhost: example.com\r\ncontent-length: 1\r\n\r\n",
    delivery=Delivery("whole", half_close=False),
)
# A HEAD whose announced body never comes: 408 after the stream idle timeout,
# with content-length but no content.
@example(
    data=b"HEAD / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n",
    delivery=Delivery("whole", half_close=False),
)
# The client half-closes inside a chunked body after `100 Continue`: a clean close.
@example(
    data=b"GET / HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n"
    b"expect: 100-continue\r\n\r\n6\r\n\x00\r\n0\r\n\r\n",
    delivery=Delivery("whole"),
)
def test_near_valid_requests(data: bytes, delivery: Delivery) -> None:
    fuzz_one(data, delivery)
