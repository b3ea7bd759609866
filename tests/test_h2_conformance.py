"""HTTP/2 conformance of the downstream listener, driven by raw frames.

Each test is a dialogue with a real proxy over a real socket: a `RawH2`
client writes frames byte for byte (hyperframe + hpack, so it can send what
no well-behaved library would) and reads back every frame the proxy sends.
What is checked is RFC 9113's split between stream errors (RST_STREAM, the
connection carries on) and connection errors (GOAWAY), SETTINGS, PING,
GOAWAY on drain, the idle timeout, and Envoy's limits.

h2load (nghttp2's load generator) drives the listener at the end. h2spec
(the usual HTTP/2 conformance suite) cannot be installed here or in CI: it is
a Go program with no Debian package, no PyPI or npm package, and the Go
module proxy (`go install github.com/summerwind/h2spec/cmd/h2spec@latest`) is
unreachable from these machines; so the cases of its suite that concern a
server's own logic rather than h2's framing are written out here.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.events
import hpack
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conftest import (
    cluster,
    counter,
    require_tool,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.h2client import H2Client
from tests.upstream import Upstream
from tests.upstream_h2 import start_upstream_h2
from trioproxy.codec.http2 import PREFACE, Http2Settings, new_server_connection
from trioproxy.http.h2_conn_manager import begin_drain
from trioproxy.runtime.server import Server

E = h2.errors.ErrorCodes

# --------------------------------------------------------------------------- raw client


class RawH2:
    """A frame-level HTTP/2 client: sends exactly what it is told to."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.frames: list[Frame] = []  # everything received, in order
        self._taken: set[int] = set()  # frames `expect` already returned
        self.closed = False
        self.auto_window = True

    @classmethod
    async def connect(cls, port: int, *, settings: dict[int, int] | None = None) -> RawH2:
        c = cls(await trio.open_tcp_stream("127.0.0.1", port))
        f = SettingsFrame(0)
        f.settings = dict(settings or {})
        await c.stream.send_all(PREFACE + f.serialize())
        return c

    async def send(self, *frames: Frame) -> None:
        await self.stream.send_all(b"".join(f.serialize() for f in frames))

    def headers_frame(
        self,
        sid: int,
        headers: list[tuple[bytes, bytes]],
        *,
        end_stream: bool = True,
        end_headers: bool = True,
    ) -> HeadersFrame:
        f = HeadersFrame(sid)
        f.data = self.encoder.encode(headers)
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    async def request(
        self,
        sid: int,
        path: str = "/",
        *,
        method: bytes = b"GET",
        extra: list[tuple[bytes, bytes]] | None = None,
        end_stream: bool = True,
    ) -> None:
        await self.send(
            self.headers_frame(sid, request_block(path, method, extra), end_stream=end_stream)
        )

    async def data(self, sid: int, payload: bytes, *, end_stream: bool = False) -> None:
        f = DataFrame(sid)
        f.data = payload
        if end_stream:
            f.flags.add("END_STREAM")
        await self.send(f)

    async def _read_frame(self) -> Frame | None:
        """The next frame; SETTINGS are acknowledged and DATA credited back
        (as a client must) unless `auto_window` is off."""
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    f.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    await self._on_frame(f)
                    return f
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                return None
            self.buf += data

    async def _on_frame(self, f: Frame) -> None:
        if isinstance(f, HeadersFrame | ContinuationFrame) and f.data:
            f.decoded = self.decoder.decode(f.data, raw=True)  # type: ignore[attr-defined]
        self.frames.append(f)
        try:
            if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                await self.send(ack)
            elif isinstance(f, DataFrame) and f.flow_controlled_length and self.auto_window:
                credit = [_window(0, f.flow_controlled_length)]
                if "END_STREAM" not in f.flags:
                    credit.append(_window(f.stream_id, f.flow_controlled_length))
                await self.send(*credit)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def expect(self, match: Callable[[Frame], bool], timeout: float = 5) -> Frame:
        """The first frame, received so far or from now on, that matches."""
        with trio.fail_after(timeout):
            for f in self.frames:
                if match(f) and id(f) not in self._taken:
                    self._taken.add(id(f))
                    return f
            while True:
                f = await self._read_frame()
                if f is None:
                    raise AssertionError(f"connection closed; frames: {self.frames}")
                if match(f):
                    self._taken.add(id(f))
                    return f

    async def expect_closed(self, timeout: float = 5) -> None:
        with trio.fail_after(timeout):
            while await self._read_frame() is not None:
                pass

    async def response(self, sid: int, timeout: float = 5) -> tuple[int, bytes]:
        """The status and body of stream `sid` (fails on RST_STREAM)."""
        with trio.fail_after(timeout):
            while True:
                mine = [f for f in self.frames if f.stream_id == sid]
                for f in mine:
                    if isinstance(f, RstStreamFrame):
                        raise AssertionError(f"stream {sid} reset with {E(f.error_code)!r}")
                if any("END_STREAM" in f.flags for f in mine):
                    break
                if await self._read_frame() is None:
                    raise AssertionError(f"connection closed; frames: {self.frames}")
        status = 0
        for f in mine:
            if isinstance(f, HeadersFrame):
                status = int(dict(f.decoded)[b":status"])  # type: ignore[attr-defined]
                break
        return status, b"".join(f.data for f in mine if isinstance(f, DataFrame))

    async def aclose(self) -> None:
        await self.stream.aclose()


def _window(sid: int, n: int) -> WindowUpdateFrame:
    f = WindowUpdateFrame(sid)
    f.window_increment = n
    return f


def request_block(
    path: str = "/", method: bytes = b"GET", extra: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"test.local"),
        (b":path", path.encode()),
        *(extra or []),
    ]


def is_rst(sid: int, code: int | None = None) -> Callable[[Frame], bool]:
    def match(f: Frame) -> bool:
        return (
            isinstance(f, RstStreamFrame)
            and f.stream_id == sid
            and (code is None or f.error_code == code)
        )

    return match


def is_goaway(f: Frame) -> bool:
    return isinstance(f, GoAwayFrame)


async def h2_proxy(
    nursery: trio.Nursery, upstream: Any = None, **hcm: object
) -> tuple[Server, Upstream, int]:
    up = upstream or await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)], **hcm))
    return server, up, server.listener_address("ingress").port


async def still_usable(c: RawH2, sid: int) -> None:
    """The connection survived: a PING is answered and a request succeeds."""
    ping = PingFrame(0)
    ping.opaque_data = b"liveness"
    await c.send(ping)
    await c.expect(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags)
    await c.request(sid, "/alive")
    status, _ = await c.response(sid)
    assert status == 200
    assert not any(isinstance(f, GoAwayFrame) for f in c.frames)


# --------------------------------------------------------------------------- SETTINGS, PING


async def test_server_settings_and_ack(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000})
    first = await c.expect(lambda f: True)
    # The server preface is a SETTINGS frame (RFC 9113 3.4), with Envoy's values.
    assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
    assert first.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 1024
    assert first.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 16 * 1024 * 1024
    assert first.settings[SettingsFrame.ENABLE_PUSH] == 0
    # Connection window raised to 24 MiB.
    wu = await c.expect(lambda f: isinstance(f, WindowUpdateFrame) and f.stream_id == 0)
    assert wu.window_increment == 24 * 1024 * 1024 - 65535
    # Our SETTINGS are acknowledged.
    await c.expect(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    await c.aclose()


async def test_ping_is_answered_with_the_same_payload(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    await c.send(ping)
    ack = await c.expect(lambda f: isinstance(f, PingFrame))
    assert "ACK" in ack.flags and ack.opaque_data == b"12345678"
    await c.aclose()


async def test_ping_on_a_stream_is_a_connection_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    # hyperframe refuses to build it; write the bytes: PING, stream 1.
    await c.stream.send_all(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"x" * 8)
    g = await c.expect(is_goaway)
    assert g.error_code == E.PROTOCOL_ERROR
    await c.expect_closed()


async def test_settings_with_bad_length_is_a_frame_size_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.stream.send_all(b"\x00\x00\x03\x04\x00\x00\x00\x00\x00abc")
    g = await c.expect(is_goaway)
    assert g.error_code == E.FRAME_SIZE_ERROR
    await c.expect_closed()


# --------------------------------------------------------------------------- concurrency


async def test_streams_beyond_max_concurrent_streams_are_refused(nursery: trio.Nursery) -> None:
    server, _up, port = await h2_proxy(nursery, max_concurrent_streams=2)
    c = await RawH2.connect(port)
    first = await c.expect(lambda f: isinstance(f, SettingsFrame))
    assert first.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 2
    slow = [(b"x-test-delay", b"0.5")]
    await c.request(1, "/slow", extra=slow)
    await c.request(3, "/slow", extra=slow)
    await c.request(5, "/third")
    # RFC 9113 5.1.2: a stream error REFUSED_STREAM, not a connection error.
    await c.expect(is_rst(5, E.REFUSED_STREAM))
    assert (await c.response(1))[0] == 200
    assert (await c.response(3))[0] == 200
    # Room again: the connection is still usable.
    await still_usable(c, 7)
    await c.aclose()
    await settle(server)
    # The refused stream never reached the router.
    assert counter(server, "http.ingress_http.downstream_rq_http2_total") == 3


# --------------------------------------------------------------------------- malformed requests


MALFORMED: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("uppercase name", [*request_block(), (b"X-Upper", b"1")]),
    ("connection header", [*request_block(), (b"connection", b"keep-alive")]),
    ("keep-alive header", [*request_block(), (b"keep-alive", b"timeout=5")]),
    ("proxy-connection header", [*request_block(), (b"proxy-connection", b"x")]),
    ("transfer-encoding", [*request_block(), (b"transfer-encoding", b"chunked")]),
    ("upgrade header", [*request_block(), (b"upgrade", b"websocket")]),
    ("te other than trailers", [*request_block(), (b"te", b"gzip")]),
    ("missing :path", [h for h in request_block() if h[0] != b":path"]),
    ("missing :method", [h for h in request_block() if h[0] != b":method"]),
    ("missing :scheme", [h for h in request_block() if h[0] != b":scheme"]),
    ("empty :path", [(k, b"" if k == b":path" else v) for k, v in request_block()]),
    ("unknown pseudo-header", [*request_block()[:2], (b":foo", b"x"), *request_block()[2:]]),
    ("response pseudo-header", [*request_block(), (b":status", b"200")]),
    ("duplicate pseudo-header", [*request_block(), (b":path", b"/again")]),
    ("pseudo after regular", [*request_block()[:3], (b"x-a", b"1"), request_block()[3]]),
    ("CR in a value", [*request_block(), (b"x-a", b"1\r\nx-b: 2")]),
    ("NUL in a value", [*request_block(), (b"x-a", b"a\x00b")]),
    ("space in a name", [*request_block(), (b"x a", b"1")]),
    ("colon in a name", [*request_block(), (b"x:a", b"1")]),
    ("value with leading space", [*request_block(), (b"x-a", b" 1")]),
    ("content-length not a number", [*request_block(), (b"content-length", b"abc")]),
    ("content-length with no body", [*request_block(), (b"content-length", b"5")]),
]


@pytest.mark.parametrize(("what", "block"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_request_is_a_stream_error(
    nursery: trio.Nursery, what: str, block: list[tuple[bytes, bytes]]
) -> None:
    server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.send(c.headers_frame(1, block))
    # RFC 9113 8.1.1: malformed -> stream error PROTOCOL_ERROR; the connection
    # and its HPACK state carry on.
    await c.expect(is_rst(1, E.PROTOCOL_ERROR))
    await still_usable(c, 3)
    await c.aclose()
    await settle(server)
    assert [r["path"] for r in up.requests] == ["/alive"], what
    assert counter(server, "http.ingress_http.rx_messaging_error") == 1


async def test_te_trailers_is_accepted(nursery: trio.Nursery) -> None:
    _server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/te", extra=[(b"te", b"trailers")])
    assert (await c.response(1))[0] == 200
    await c.aclose()
    assert up.requests[0]["path"] == "/te"


async def test_malformed_trailers_are_a_stream_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/t", method=b"POST", end_stream=False, extra=[(b"x-test-echo", b"1")])
    await c.data(1, b"abc")
    await c.send(c.headers_frame(1, [(b":path", b"/nope")], end_stream=True))
    await c.expect(is_rst(1, E.PROTOCOL_ERROR))
    await still_usable(c, 3)
    await c.aclose()


async def test_trailers_without_end_stream_are_a_stream_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/t", method=b"POST", end_stream=False, extra=[(b"x-test-hang", b"1")])
    await c.data(1, b"abc")
    await c.send(c.headers_frame(1, [(b"x-trailer", b"1")], end_stream=False))
    await c.expect(is_rst(1, E.PROTOCOL_ERROR))
    await still_usable(c, 3)
    await c.aclose()


@pytest.mark.parametrize(("declared", "sent"), [(10, 5), (3, 5)])
async def test_content_length_mismatch_is_a_stream_error(
    nursery: trio.Nursery, declared: int, sent: int
) -> None:
    server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(
        1,
        "/cl",
        method=b"POST",
        end_stream=False,
        extra=[(b"content-length", str(declared).encode()), (b"x-test-echo", b"1")],
    )
    await c.data(1, b"x" * sent, end_stream=True)
    await c.expect(is_rst(1, E.PROTOCOL_ERROR))
    await still_usable(c, 3)
    await c.aclose()
    await settle(server)
    # The upstream never saw a complete request with the wrong length.
    assert [r["path"] for r in up.requests] == ["/alive"]


async def test_data_after_end_stream_is_a_stream_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/x", extra=[(b"x-test-delay", b"0.3")])
    await c.data(1, b"late")
    # RFC 9113 5.1, half-closed (remote): STREAM_CLOSED as a stream error.
    await c.expect(is_rst(1, E.STREAM_CLOSED))
    await still_usable(c, 3)
    await c.aclose()


async def test_stream_depending_on_itself_is_a_stream_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    f = c.headers_frame(1, request_block())
    f.flags.add("PRIORITY")
    f.depends_on = 1
    f.stream_weight = 15
    await c.send(f)
    await c.expect(is_rst(1, E.PROTOCOL_ERROR))
    await still_usable(c, 3)
    await c.aclose()


async def test_priority_frames_are_ignored(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    p = PriorityFrame(9)
    p.depends_on = 0
    p.stream_weight = 200
    await c.send(p)
    f = c.headers_frame(1, request_block())
    f.flags.add("PRIORITY")
    f.depends_on = 9
    f.stream_weight = 15
    await c.send(f)
    assert (await c.response(1))[0] == 200
    await c.aclose()


# --------------------------------------------------------------------------- limits


async def test_oversized_header_list_resets_the_stream(nursery: trio.Nursery) -> None:
    server, up, port = await h2_proxy(nursery, max_request_headers_kb=8)
    c = await RawH2.connect(port)
    big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(10)]
    # Split over CONTINUATION frames, as a large block must be.
    block = c.encoder.encode([*request_block("/big"), *big])
    first = HeadersFrame(1)
    first.data = block[:4000]
    first.flags.add("END_STREAM")
    cont = ContinuationFrame(1)
    cont.data = block[4000:]
    cont.flags.add("END_HEADERS")
    await c.send(first, cont)
    # Envoy resets the stream (its header_overflow), the connection carries on.
    await c.expect(is_rst(1))
    await still_usable(c, 3)
    await c.aclose()
    await settle(server)
    assert [r["path"] for r in up.requests] == ["/alive"]


async def test_too_many_headers_resets_the_stream(nursery: trio.Nursery) -> None:
    _server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    many = [(b"x-h-%d" % i, b"1") for i in range(101)]
    await c.request(1, "/many", extra=many)
    await c.expect(is_rst(1))
    await still_usable(c, 3)
    await c.aclose()
    assert [r["path"] for r in up.requests] == ["/alive"]


async def test_undecodable_header_block_is_a_connection_error(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    f = HeadersFrame(1)
    f.data = b"\xff\xff\xff\xff\xff"  # an index far past the tables
    f.flags.add("END_HEADERS")
    f.flags.add("END_STREAM")
    await c.send(f)
    g = await c.expect(is_goaway)
    assert g.error_code == E.COMPRESSION_ERROR
    await c.expect_closed()


# --------------------------------------------------------------------------- GOAWAY, idle


async def test_drain_sends_goaway_notice_then_final_and_finishes_streams(
    nursery: trio.Nursery,
) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/inflight", extra=[(b"x-test-delay", b"0.6")])
    await c.expect(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    await trio.sleep(0.05)
    hcm = server.listeners["ingress"].hcm
    begin_drain(hcm, notice=0.2)
    notice = await c.expect(is_goaway)
    assert notice.last_stream_id == 2**31 - 1 and notice.error_code == E.NO_ERROR
    # During the notice period new streams are still served.
    await c.request(3, "/during-notice", extra=[(b"x-test-delay", b"0.4")])
    final = await c.expect(is_goaway)
    assert final.last_stream_id == 3 and final.error_code == E.NO_ERROR
    # Above the last stream id: refused (safe for the client to retry).
    await c.request(5, "/after")
    await c.expect(is_rst(5, E.REFUSED_STREAM))
    # Streams in flight finish; then the proxy closes the connection.
    assert (await c.response(1))[0] == 200
    assert (await c.response(3))[0] == 200
    await c.expect_closed()


async def test_client_goaway_lets_open_streams_finish(nursery: trio.Nursery) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/inflight", extra=[(b"x-test-delay", b"0.2")])
    g = GoAwayFrame(0)
    g.last_stream_id = 0
    await c.send(g)
    assert (await c.response(1))[0] == 200
    await c.expect_closed()


async def test_idle_timeout_sends_goaway_and_closes(nursery: trio.Nursery) -> None:
    server, _up, port = await h2_proxy(nursery, idle_timeout=0.3)
    c = await RawH2.connect(port)
    await c.request(1, "/one")
    assert (await c.response(1))[0] == 200
    start = trio.current_time()
    # PINGs are not activity: Envoy's idle timer counts time without streams.
    for _ in range(3):
        ping = PingFrame(0)
        ping.opaque_data = b"keepaliv"
        await c.send(ping)
        await trio.sleep(0.05)
    g = await c.expect(is_goaway)
    assert g.error_code == E.NO_ERROR and g.last_stream_id == 1
    await c.expect_closed()
    assert trio.current_time() - start < 2
    assert counter(server, "http.ingress_http.downstream_cx_idle_timeout") == 1


async def test_client_that_floods_pings_without_reading_is_not_buffered(
    nursery: trio.Nursery,
) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    ping = PingFrame(0)
    ping.opaque_data = b"floodppp"
    burst = ping.serialize() * 256  # 4 KiB of PINGs
    sent = 0
    closed = False

    async def flood() -> None:
        nonlocal sent, closed
        try:
            while True:
                await c.stream.send_all(burst)
                sent += len(burst)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed = True

    # Write PINGs and never read: the acks the proxy cannot write pile up
    # until more than max_outbound_control_frames (1000) wait, and the
    # proxy closes the connection (Envoy's outbound_control_flood). Before
    # that, the 1 MiB output backlog stops it reading.
    async with trio.open_nursery() as n:
        n.start_soon(flood)
        with trio.move_on_after(20):
            while not closed:
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    print(f"PINGs accepted from a client that never reads: {sent / 2**20:.1f} MiB")
    assert closed, f"the proxy kept reading PINGs it could not answer ({sent} bytes)"
    assert sent < 16 * 2**20
    assert counter(server, "http2.outbound_control_flood") == 1
    await c.aclose()


async def test_client_reset_mid_response_is_not_a_server_error(nursery: trio.Nursery) -> None:
    server, _up, port = await h2_proxy(nursery)
    for _ in range(3):
        c = await RawH2.connect(port)
        c.auto_window = False
        await c.request(1, "/big", extra=[(b"x-test-body-size", b"%d" % (8 * 1024 * 1024))])
        await c.expect(lambda f: isinstance(f, DataFrame))
        # Close with a TCP RST (SO_LINGER 0): the proxy's next read or write fails.
        c.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await c.aclose()
    await settle(server)
    assert counter(server, "server.connection_task_errors") == 0
    assert counter(server, "http.ingress_http.downstream_rq_rx_reset") == 3


class GoawayUpstream:
    """An h2c upstream that answers GOAWAY(NO_ERROR, last-stream-id = this
    stream) as soon as a request starts, then still reads the whole request
    body and answers with its length, as a server shutting down gracefully does."""

    def __init__(self) -> None:
        self.port = 0

    async def run(self, task_status: trio.TaskStatus[GoawayUpstream]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, s: trio.SocketStream) -> None:
        conn = new_server_connection(Http2Settings())
        received: dict[int, int] = {}
        while True:
            data = await s.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    received[ev.stream_id] = 0
                    conn.send_goaway(ev.stream_id)
                elif isinstance(ev, h2.events.DataReceived):
                    received[ev.stream_id] += len(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    body = b"%d" % received[ev.stream_id]
                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                    conn.send_data(ev.stream_id, body, end_stream=True)
            await s.send_all(conn.data_to_send())


async def test_upstream_graceful_goaway_lets_the_request_body_finish(
    nursery: trio.Nursery,
) -> None:
    up = await nursery.start(GoawayUpstream().run)
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc")], [cluster("svc", f"127.0.0.1:{up.port}", protocol="http2")]),
    )
    port = server.listener_address("ingress").port
    body = b"x" * (1024 * 1024)  # many frames after the GOAWAY
    async with await H2Client.connect(port) as c:
        r = await c.request("POST", "/upload", body=body)
    assert r.status == 200, r
    assert r.body == b"%d" % len(body)
    await settle(server)
    assert counter(server, "server.connection_task_errors") == 0


# --------------------------------------------------------------------------- h2load


def parse_h2load(out: str) -> dict[str, float]:
    """The figures of h2load's summary (requests, status codes, req/s)."""
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    assert m, out
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes, out
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    assert rps, out
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    result = {k: float(v) for k, v in zip(keys, m.groups(), strict=True)}
    result.update({f"{k}xx": float(v) for k, v in zip("2345", codes.groups(), strict=True)})
    result["rps"] = float(rps.group(1))
    return result


@pytest.mark.parametrize("upstream", ["http1", "http2"])
async def test_h2load_completes_without_errors(nursery: trio.Nursery, upstream: str) -> None:
    h2load = require_tool("h2load")
    if upstream == "http2":
        up: Any = await start_upstream_h2(nursery)
        clusters = [cluster("svc", up.address, protocol="http2")]
    else:
        up = await start_upstream(nursery)
        clusters = [cluster("svc", up)]
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], clusters))
    port = server.listener_address("ingress").port
    n = 2000
    result = await trio.run_process(
        [h2load, "-c", "10", "-m", "10", "-n", str(n), f"http://127.0.0.1:{port}/"],
        capture_stdout=True,
        capture_stderr=True,
    )
    out = result.stdout.decode()
    figures = parse_h2load(out)
    print(f"h2load -> {upstream} upstream: {figures['rps']:.0f} req/s")
    assert figures["done"] == n and figures["succeeded"] == n, out
    assert figures["failed"] == figures["errored"] == figures["timeout"] == 0, out
    assert figures["2xx"] == n, out
    await settle(server)
    assert counter(server, "http.ingress_http.downstream_rq_2xx") == n
