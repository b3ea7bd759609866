"""The HTTP/1.1 codecs, sans-IO, as dialogues: each test runs once per parser
(`parser="h11"` and `parser="httptools"`), which must give the same events,
states and errors. fuzz/test_http1_differential.py compares the two on
arbitrary bytes; these pin the behaviour itself."""

from __future__ import annotations

import pytest

from trioproxy.codec.http1 import (
    CLOSED,
    NEED_DATA,
    PARSERS,
    PAUSED,
    EndOfMessage,
    Http1ClientCodec,
    Http1Error,
    Http1ServerCodec,
)
from trioproxy.codec.stream import RequestHead, ResponseHead

OK = ResponseHead(status=200, headers=[(b"content-length", b"0")])


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server(parser: str, data: bytes = b"", **kw: int) -> Http1ServerCodec:
    s = Http1ServerCodec(parser=parser, **kw)  # type: ignore[arg-type]
    if data:
        s.receive_data(data)
    return s


def client(parser: str, method: bytes = b"GET") -> Http1ClientCodec:
    c = Http1ClientCodec(parser=parser)
    c.send_request_head(
        RequestHead(method=method, path=b"/", authority=b"a"), body=False, content_length=None
    )
    return c


def answer(s: Http1ServerCodec) -> None:
    s.send_response_head(OK)
    s.send_end()


def test_unknown_parser_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown HTTP/1\.1 parser"):
        Http1ServerCodec(parser="picohttp")


def test_request_head_fields(parser: str) -> None:
    s = server(parser, b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-A:  v w \r\nx-b:\r\n\r\n")
    head = s.next_event()
    assert isinstance(head, RequestHead)
    assert (head.method, head.path, head.authority, head.scheme) == (
        b"GET",
        b"/a?b=c",
        b"example.com",
        b"http",
    )
    assert head.headers == [(b"x-a", b"v w"), (b"x-b", b"")]
    assert type(s.next_event()) is EndOfMessage
    assert s.next_event() is NEED_DATA
    answer(s)
    assert s.keep_alive
    assert s.start_next_cycle()
    assert s.must_read()


def test_absolute_form_and_asterisk(parser: str) -> None:
    s = server(parser, b"GET https://b.example/p HTTP/1.1\r\nhost: a\r\n\r\n")
    head = s.next_event()
    assert isinstance(head, RequestHead)
    assert (head.scheme, head.authority, head.path) == (b"https", b"b.example", b"/p")
    s = server(parser, b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n")
    head = s.next_event()
    assert isinstance(head, RequestHead) and head.path == b"*"


def test_extension_and_lowercase_methods_are_tokens(parser: str) -> None:
    # llhttp knows a fixed list of methods; h11 (and RFC 9110) any token.
    for method in (b"get", b"PURGE-X", b"M"):
        head = server(parser, method + b" / HTTP/1.1\r\nhost: a\r\n\r\n").next_event()
        assert isinstance(head, RequestHead) and head.method == method


def test_content_length_body_in_pieces(parser: str) -> None:
    s = server(parser, b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhe")
    assert isinstance(s.next_event(), RequestHead)
    assert s.next_event() == b"he"
    assert s.next_event() is NEED_DATA
    s.receive_data(b"llo")
    assert s.next_event() == b"llo"
    assert type(s.next_event()) is EndOfMessage


def test_repeated_identical_content_length_is_one(parser: str) -> None:
    # llhttp refuses it; h11 reads it as one length and its answer stands.
    s = server(
        parser, b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"
    )
    head = s.next_event()
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"content-length", b"2")]
    assert s.next_event() == b"ok"


def test_chunked_body_and_trailers(parser: str) -> None:
    s = server(
        parser,
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3;x=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
    )
    assert isinstance(s.next_event(), RequestHead)
    assert s.next_event() == b"abc"
    end = s.next_event()
    assert isinstance(end, EndOfMessage) and end.trailers == [(b"x-t", b"1")]


def test_pipelined_requests_wait_for_the_answer(parser: str) -> None:
    s = server(parser, b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nhost: a\r\n\r\n")
    assert isinstance(s.next_event(), RequestHead)
    assert type(s.next_event()) is EndOfMessage
    assert s.next_event() is PAUSED
    assert s.has_buffered_data and not s.must_read()
    answer(s)
    assert s.start_next_cycle()
    assert s.head_request  # known from the buffered bytes, before parsing
    head = s.next_event()
    assert isinstance(head, RequestHead) and head.path == b"/2"


def test_connection_close_ends_keep_alive(parser: str) -> None:
    s = server(parser, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    s.next_event()
    s.next_event()
    answer(s)
    assert not s.keep_alive
    assert not s.start_next_cycle()


def test_expect_100_continue(parser: str) -> None:
    s = server(
        parser, b"POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    )
    assert isinstance(s.next_event(), RequestHead)
    assert s.next_event() is NEED_DATA
    assert s.waiting_for_100_continue
    assert s.send_100_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.receive_data(b"ok")
    assert s.next_event() == b"ok"
    assert not s.waiting_for_100_continue


def test_upgrade_leaves_the_new_protocol_unparsed(parser: str) -> None:
    s = server(
        parser,
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\x81\x00",
    )
    head = s.next_event()
    assert isinstance(head, RequestHead)
    assert type(s.next_event()) is EndOfMessage
    assert s.next_event() is PAUSED
    s.send_switching_protocols([(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
    assert s.trailing_data == b"\x81\x00"


def test_head_request_answer_has_no_body(parser: str) -> None:
    s = server(parser, b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n")
    s.next_event()
    s.next_event()
    out = s.send_response_head(ResponseHead(status=200, headers=[(b"content-length", b"9")]))
    assert out.endswith(b"content-length: 9\r\n\r\n")
    assert s.send_end() == b""


@pytest.mark.parametrize(
    ("raw", "status", "details"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", 426, "low_version"),
        (b"GET / HTTP/2.0\r\nhost: a\r\n\r\n", 400, "http1.codec_error"),
        (
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n"
            b"transfer-encoding: chunked\r\n\r\n",
            400,
            "http1.content_length_and_chunked_not_allowed",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n",
            501,
            "http1.codec_error",
        ),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-a: a\x01b\r\n\r\n", 400, "http1.codec_error"),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-a : b\r\n\r\n", 400, "http1.codec_error"),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-a: a\r\n b\r\n\r\n", 400, "http1.codec_error"),
        (b"GET / HTTP/1.1\r\nx: 1\r\n\r\n", 400, "http1.codec_error"),
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400, "http1.codec_error"),
        (b"GET example.com HTTP/1.1\r\nhost: a\r\n\r\n", 400, "http1.invalid_url"),
        (b"\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n", 400, "http1.codec_error"),
        (b"\x16\x03\x01", 400, "http1.codec_error"),
    ],
)
def test_request_errors(parser: str, raw: bytes, status: int, details: str) -> None:
    s = server(parser, raw)
    with pytest.raises(Http1Error) as err:
        s.next_event()
    assert (err.value.status, err.value.details) == (status, details)


def test_header_limits(parser: str) -> None:
    many = b"".join(b"h%d: v\r\n" % i for i in range(5))
    s = server(parser, b"GET / HTTP/1.1\r\nhost: a\r\n" + many + b"\r\n", max_headers=4)
    with pytest.raises(Http1Error) as err:
        s.next_event()
    assert (err.value.status, err.value.details) == (431, "http1.too_many_headers")
    big = b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"v" * 2000
    s = server(parser, big + b"\r\n\r\n", max_header_bytes=1024)
    with pytest.raises(Http1Error) as err:
        s.next_event()
    assert err.value.status == 431
    s = server(parser, big, max_header_bytes=1024)  # incomplete, already too big
    assert s.head_request is False
    with pytest.raises(Http1Error) as err:
        s.next_event()
    assert (err.value.status, err.value.details) == (431, "http1.headers_too_large")


def test_eof_mid_head_is_closed(parser: str) -> None:
    s = server(parser, b"GET / HTTP/1.1\r\nhost")
    s.receive_data(b"")
    assert s.next_event() is CLOSED


def test_response_head_and_body(parser: str) -> None:
    c = client(parser)
    c.receive_data(b"HTTP/1.1 201 Made\r\nContent-Length: 2\r\nX-A: b \r\n\r\nok")
    head = c.next_event()
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.http_version) == (201, b"Made", b"1.1")
    assert head.headers == [(b"content-length", b"2"), (b"x-a", b"b")]
    assert c.next_event() == b"ok"
    assert type(c.next_event()) is EndOfMessage
    assert c.keep_alive and c.start_next_cycle() and c.must_read() is False


def test_informational_then_final(parser: str) -> None:
    c = client(parser)
    c.receive_data(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    first = c.next_event()
    assert isinstance(first, ResponseHead) and first.status == 103
    final = c.next_event()
    assert isinstance(final, ResponseHead) and final.status == 204
    assert type(c.next_event()) is EndOfMessage


def test_head_response_has_no_body(parser: str) -> None:
    c = client(parser, b"HEAD")
    c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    assert isinstance(c.next_event(), ResponseHead)
    assert type(c.next_event()) is EndOfMessage


def test_close_delimited_response(parser: str) -> None:
    c = client(parser)
    c.receive_data(b"HTTP/1.1 200 OK\r\n\r\nabc")
    c.receive_data(b"")
    assert isinstance(c.next_event(), ResponseHead)
    assert c.next_event() == b"abc"
    assert type(c.next_event()) is EndOfMessage
    assert c.next_event() is CLOSED


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) + b"\r\n",
    ],
)
def test_response_errors(parser: str, raw: bytes) -> None:
    c = client(parser)
    c.receive_data(raw)
    with pytest.raises(Http1Error):
        c.next_event()
