"""Invariant: the two HTTP/1.1 parsers (`parser="h11"` and `parser="httptools"`)
read any byte sequence, split at any points, into the same events, or both
reject it with the same status and details.

Both sides are checked, sans-IO, with the codecs exactly as the proxy holds
them:

- server (`Http1ServerCodec`): the bytes are a client's; every request read
  to its end is answered (`200`, empty, or `100 Continue` first when the
  client waits for it) and the next cycle started, so pipelined requests,
  keep-alive and `connection: close` are all exercised;
- client (`Http1ClientCodec`): the bytes are an upstream's answer to a `GET`
  or a `HEAD` (drawn), and a second request follows on a kept-alive
  connection.

The input is delivered whole, byte by byte or at random split points, then
the peer's end of stream (or not). After each piece every event is drained
(until `NEED_DATA`, `PAUSED` or `CLOSED`) and recorded: heads with all their
fields, each body chunk, ends with their trailers, `keep_alive`,
`trailing_data` on a protocol switch, and an `Http1Error` as (status,
details). Inputs are raw `binary()` and near-valid messages (the downstream
and upstream targets' generators) with byte-level mutations.

The budget is ten times `TRIOPROXY_FUZZ_EXAMPLES` (a cheap, pure target).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.conftest import fuzz_settings, time_capped
from fuzz.test_http1_downstream import Delivery, deliveries, mutated, near_valid_input
from fuzz.test_http1_upstream import near_valid_response
from trioproxy.codec.http1 import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    EndOfMessage,
    Http1ClientCodec,
    Http1Error,
    Http1ServerCodec,
)
from trioproxy.codec.stream import RequestHead, ResponseHead

KIB = 1024
OK = ResponseHead(status=200, headers=[(b"content-length", b"0")])


def _drain_server(codec: Http1ServerCodec, trace: list[object]) -> bool:
    """Record every event now available; False once the codec is finished."""
    while True:
        try:
            ev = codec.next_event()
        except Http1Error as exc:
            trace.append(("error", exc.status, exc.details, codec.head_request))
            return False
        if ev is NEED_DATA:
            if codec.waiting_for_100_continue:
                trace.append("100-continue")
                codec.send_100_continue()
            return True
        if ev is PAUSED:
            trace.append(("paused", codec.trailing_data))
            return False
        if ev is CLOSED:
            trace.append("closed")
            return False
        if isinstance(ev, RequestHead):
            trace.append(("head", ev.method, ev.path, ev.authority, ev.scheme, tuple(ev.headers)))
        elif isinstance(ev, EndOfMessage):
            trace.append(("end", tuple(ev.trailers)))
            codec.send_response_head(OK)
            codec.send_end()
            trace.append(("keep_alive", codec.keep_alive))
            if not codec.start_next_cycle():
                trace.append("no next cycle")
                return False
        else:
            assert type(ev) is bytes and ev, ev
            trace.append(("data", ev))


def server_trace(parser: str, data: bytes, delivery: Delivery) -> list[object]:
    codec = Http1ServerCodec(parser=parser)
    trace: list[object] = []
    for piece in delivery.pieces(data):
        codec.receive_data(piece)
        if not _drain_server(codec, trace):
            return trace
    if delivery.half_close:
        codec.receive_data(b"")
        _drain_server(codec, trace)
    trace.append(("must_read", codec.must_read()))
    return trace


def _request(codec: Http1ClientCodec, method: bytes) -> None:
    codec.send_request_head(
        RequestHead(method=method, path=b"/x", authority=b"a", scheme=b"http", headers=[]),
        body=False,
        content_length=None,
    )


def _drain_client(codec: Http1ClientCodec, trace: list[object], method: bytes) -> bool:
    while True:
        try:
            ev = codec.next_event()
        except Http1Error as exc:
            trace.append(("error", exc.status, exc.details))
            return False
        if ev is NEED_DATA:
            return True
        if ev is PAUSED:
            trace.append(("paused", codec.trailing_data))
            return False
        if ev is CLOSED:
            trace.append("closed")
            return False
        if isinstance(ev, ResponseHead):
            trace.append(("head", ev.status, ev.reason, ev.http_version, tuple(ev.headers)))
        elif isinstance(ev, EndOfMessage):
            trace.append(("end", tuple(ev.trailers), codec.keep_alive))
            if not codec.start_next_cycle():
                trace.append("no next cycle")
                return False
            _request(codec, method)
        else:
            assert type(ev) is bytes and ev, ev
            trace.append(("data", ev))


def client_trace(parser: str, data: bytes, delivery: Delivery, method: bytes) -> list[object]:
    codec = Http1ClientCodec(parser=parser)
    _request(codec, method)
    trace: list[object] = []
    for piece in delivery.pieces(data):
        codec.receive_data(piece)
        if not _drain_client(codec, trace, method):
            return trace
    if delivery.half_close:
        codec.receive_data(b"")
        _drain_client(codec, trace, method)
    trace.append(("must_read", codec.must_read()))
    return trace


def check_server(data: bytes, delivery: Delivery) -> None:
    reference = server_trace("h11", data, delivery)
    assert server_trace("httptools", data, delivery) == reference


def check_client(data: bytes, delivery: Delivery, method: bytes) -> None:
    reference = client_trace("h11", data, delivery, method)
    assert client_trace("httptools", data, delivery, method) == reference


VALID = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
methods = st.sampled_from([b"GET", b"HEAD"])


@st.composite
def near_valid_responses(draw: st.DrawFn) -> bytes:
    responses = draw(st.lists(near_valid_response(), min_size=1, max_size=2))
    return draw(mutated(b"".join(responses)))


@fuzz_settings(scale=10)
@given(data=st.binary(max_size=2 * KIB), delivery=deliveries)
@example(data=b"", delivery=Delivery("whole"))
@example(data=VALID + VALID, delivery=Delivery("bytewise"))
@example(data=b"\r\n" + VALID, delivery=Delivery("whole"))
@example(data=b" " + VALID, delivery=Delivery("split", (3,)))
@time_capped
def test_any_request_bytes(data: bytes, delivery: Delivery) -> None:
    check_server(data, delivery)


@fuzz_settings(scale=10)
@given(data=near_valid_input(), delivery=deliveries)
# llhttp refuses these, h11 (strict) reads them: h11's answer stands.
@example(
    data=b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    delivery=Delivery("whole"),
)
@example(
    data=b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding:\tchunked\t\r\n\r\n0\r\n\r\n",
    delivery=Delivery("whole"),
)
@example(data=b"get / HTTP/1.1\r\nhost: a\r\n\r\n", delivery=Delivery("whole"))
@example(data=b"GET / HTTP/1.1\nhost: a\n\n", delivery=Delivery("bytewise"))
# Errors keep h11's status: 501 for an unknown transfer-coding, 431, 426.
@example(
    data=b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n",
    delivery=Delivery("whole"),
)
@example(
    data=b"HEAD / HTTP/1.1\r\nhost: a\r\nx: " + b"v" * (61 * KIB) + b"\r\n\r\n",
    delivery=Delivery("split", (1000, 30000)),
)
@example(data=b"GET / HTTP/1.0\r\n\r\n", delivery=Delivery("whole"))
# A protocol switch: the bytes after the head are the new protocol's.
@example(
    data=b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\x81\x00",
    delivery=Delivery("whole"),
)
@example(
    data=b"POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
    delivery=Delivery("split", (70,)),
)
@time_capped
def test_near_valid_requests(data: bytes, delivery: Delivery) -> None:
    check_server(data, delivery)


@fuzz_settings(scale=10)
@given(data=st.binary(max_size=2 * KIB), delivery=deliveries, method=methods)
@example(data=RESPONSE + RESPONSE, delivery=Delivery("bytewise"), method=b"GET")
@example(data=b"\r\n" + RESPONSE, delivery=Delivery("whole"), method=b"GET")
@time_capped
def test_any_response_bytes(data: bytes, delivery: Delivery, method: bytes) -> None:
    check_client(data, delivery, method)


@fuzz_settings(scale=10)
@given(data=near_valid_responses(), delivery=deliveries, method=methods)
@example(data=RESPONSE, delivery=Delivery("whole"), method=b"HEAD")
@example(
    data=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
    delivery=Delivery("split", (10, 40)),
    method=b"GET",
)
@example(
    data=b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    delivery=Delivery("whole"),
    method=b"GET",
)
@example(data=b"HTTP/1.0 200 OK\r\n\r\nbody", delivery=Delivery("whole"), method=b"GET")
@time_capped
def test_near_valid_responses(data: bytes, delivery: Delivery, method: bytes) -> None:
    check_client(data, delivery, method)
