"""HTTP/1.1 codecs for both sides of the proxy: sans-IO adapters over h11.

Rules of this file:
- Bytes in (`receive_data`), neutral events out (`next_event`), bytes to write
  returned by every `send_*`. No trio, no sockets, no clock.
- Events are `RequestHead` / `ResponseHead`, `bytes` (a body chunk, never
  empty), `EndOfMessage` (with trailers), `NEED_DATA`, `PAUSED` and `CLOSED`.
- Header names arrive lower-case (h11 normalises them); `Host` becomes the
  request's `authority` and is not kept in the header list.
- Every peer error raises `Http1Error` carrying the status to answer with
  (400, 413, 431, 426 ...) and Envoy's response-code details. A limit we
  enforce ourselves (header count) raises the same way.
- Framing headers are re-derived on the way out: `Transfer-Encoding` is never
  copied from one side to the other; a body without a length is sent chunked.
"""

from __future__ import annotations

import inspect
import re
from typing import ClassVar, Final

import h11

from trioproxy.codec import h11_strict, http1_httptools
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead

h11_strict.apply()

__all__ = [
    "CLOSED",
    "HOP_BY_HOP",
    "NEED_DATA",
    "PARSERS",
    "PAUSED",
    "REASONS",
    "EndOfMessage",
    "Http1ClientCodec",
    "Http1Error",
    "Http1ServerCodec",
    "strip_hop_by_hop",
]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")
CLOSED: Final = _Sentinel("CLOSED")


class EndOfMessage:
    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers) -> None:
        self.trailers = trailers


class Http1Error(Exception):
    """A protocol error with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400, details: str = "codec_error") -> None:
        super().__init__(message)
        self.status = status
        self.details = details


# Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy ones Envoy also strips.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
        b"proxy-authenticate",
    }
)


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Remove hop-by-hop headers and those named in `Connection`.

    `te: trailers` is kept (gRPC needs it end to end, as in Envoy).
    """
    named: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            named.update(t.strip().lower() for t in v.split(b","))
    out: Headers = []
    for k, v in headers:
        if k in HOP_BY_HOP or k in named:
            if k == b"te" and v.strip().lower() == b"trailers":
                out.append((k, v))
            continue
        out.append((k, v))
    return out


# Standard reason phrases (RFC 9110 section 15).
REASONS: Final = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
    202: b"Accepted", 203: b"Non-Authoritative Information", 204: b"No Content",
    205: b"Reset Content", 206: b"Partial Content", 300: b"Multiple Choices",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 402: b"Payment Required", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 406: b"Not Acceptable", 407: b"Proxy Authentication Required",
    408: b"Request Timeout", 409: b"Conflict", 410: b"Gone", 411: b"Length Required",
    412: b"Precondition Failed", 413: b"Payload Too Large", 414: b"URI Too Long",
    415: b"Unsupported Media Type", 416: b"Range Not Satisfiable", 417: b"Expectation Failed",
    421: b"Misdirected Request", 422: b"Unprocessable Content", 425: b"Too Early",
    426: b"Upgrade Required", 428: b"Precondition Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 451: b"Unavailable For Legal Reasons",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}  # fmt: skip

Event = RequestHead | ResponseHead | bytes | EndOfMessage | _Sentinel

# Who reads message heads (`parser=` of both codecs): "h11" (h11's own
# readers, with h11_strict) or "httptools" (llhttp splits the header section,
# h11 keeps every state, body reader and writer; see http1_httptools).
PARSERS: Final = ("h11", "httptools")


def _connection(
    role: type[h11._util.Sentinel], max_header_bytes: int, parser: str
) -> h11.Connection:
    if parser == "httptools":
        return http1_httptools.new_connection(role, max_header_bytes)
    if parser != "h11":
        raise ValueError(f"unknown HTTP/1.1 parser {parser!r} (one of {', '.join(PARSERS)})")
    return h11.Connection(role, max_incomplete_event_size=max_header_bytes)


# h11 checks each outgoing header name and value with its own regex call
# (`h11._headers.normalize_and_validate`), the largest single item of its send
# path. The same grammar checked once over all names and once over all values,
# joined by a newline (which neither grammar admits, so a joined list with no
# newline of its own matches exactly when every item does), costs a fraction;
# the event is then built with `_parsed=True`, which skips only those per-item
# checks (the framing checks, the Host rule and the method/target checks still run). A list that
# fails, or holds anything but bytes, takes h11's own path, so the error
# raised is h11's, as before.
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"  # h11._abnf.field_name
_FIELD_CONTENT: Final = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"  # h11._abnf.field_content
_NAMES: Final = re.compile(_TOKEN + rb"(?:\n" + _TOKEN + rb")*")
_VALUES: Final = re.compile(rb"(?:" + _FIELD_CONTENT + rb")?(?:\n(?:" + _FIELD_CONTENT + rb")?)*")

# `_parsed` is private to h11 (0.16): fail on import, not on every request, if
# a release drops it (h11_strict guards its own private names the same way).
for _event in (h11.Request, h11.Response):
    if "_parsed" not in inspect.signature(_event).parameters:
        raise ImportError(
            f"h11 {getattr(h11, '__version__', '?')}: {_event.__name__} takes no _parsed; "
            "trioproxy.codec.http1 must be updated for this h11"
        )


def _valid_headers(headers: Headers) -> bool:
    """True if h11 would accept every name and value of `headers` as they are."""
    if not headers:
        return True
    names: list[bytes] = []
    values: list[bytes] = []
    for k, v in headers:
        if type(k) is not bytes or type(v) is not bytes:
            return False  # h11 converts it (or says why not)
        names.append(k)
        values.append(v)
    joined_names = b"\n".join(names)
    joined_values = b"\n".join(values)
    # A newline inside an item would split it into two that each match.
    seps = len(headers) - 1
    return (
        joined_names.count(b"\n") == seps
        and joined_values.count(b"\n") == seps
        and _NAMES.fullmatch(joined_names) is not None
        and _VALUES.fullmatch(joined_values) is not None
    )


# The peer's end of stream, as seen by `_Base` (see its docstring).
_OPEN, _EOF_PENDING, _EOF_FED, _EOF_BROKEN = range(4)
_CONNECTION_CLOSED: Final = h11.ConnectionClosed()
# Bytes of a request's start kept to recognise its method without h11 (leading
# blank lines, which h11 skips, included).
_START_BYTES: Final = 64


class _Base:
    """What both sides share: feeding bytes, the end of the stream, cycles.

    The peer's end of stream (`receive_data(b"")`) is handed to h11 only once
    h11 has parsed every byte before it and asks for more. If h11 then finds
    the message incomplete, the peer went away mid-message: that is `CLOSED`
    (a reset: Envoy's UC upstream, DC downstream), not a protocol error (UPE,
    400), because no byte the peer sent was invalid. A close-delimited body
    still ends with `EndOfMessage`.
    """

    __slots__ = ("_conn", "_eof", "_max_headers")

    _conn: h11.Connection
    _max_headers: int
    _eof: int  # _OPEN, _EOF_PENDING (not yet given to h11), _EOF_FED, _EOF_BROKEN

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; `b""` means the peer closed its side."""
        if not data:
            if self._eof == _OPEN:
                self._eof = _EOF_PENDING
            return
        if self._eof != _OPEN:
            raise Http1Error("data received after the end of the stream")
        try:
            self._conn.receive_data(data)
        except h11.RemoteProtocolError as exc:  # pragma: no cover - guarded above
            raise Http1Error(str(exc)) from None

    @property
    def keep_alive(self) -> bool:
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    def message_complete(self) -> bool:
        """The peer's current message has been read to its end."""
        return self._conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received past the last parsed message (after a protocol
        switch: the start of the new protocol)."""
        return bytes(self._conn.trailing_data[0])

    def start_next_cycle(self) -> bool:
        """Reset for the next message on a kept-alive connection; False if impossible."""
        try:
            self._conn.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    # The peer's state in which a message of theirs starts (see `must_read`).
    _AWAITING: ClassVar[object]

    def must_read(self) -> bool:
        """`next_event()` would return `NEED_DATA` now: the peer's next
        message has not started, no byte of it is buffered and their side is
        open. A shortcut for the common keep-alive case, where asking h11
        costs a parse attempt."""
        conn = self._conn
        return (
            self._eof == _OPEN and conn.their_state is self._AWAITING and not conn.trailing_data[0]
        )

    def _next(self) -> object:
        if self._eof == _EOF_BROKEN:
            return _CONNECTION_CLOSED
        try:
            ev = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise Http1Error(str(exc), exc.error_status_hint, _details(exc)) from None
        if ev is h11.NEED_DATA and self._eof == _EOF_PENDING:
            # Every byte before the close is parsed: now the close itself.
            self._eof = _EOF_FED
            self._conn.receive_data(b"")
            try:
                ev = self._conn.next_event()
            except h11.RemoteProtocolError:
                # Closed mid-message (head or body): the peer left, nothing was invalid.
                self._eof = _EOF_BROKEN
                return _CONNECTION_CLOSED
        return ev

    def _body_event(self, ev: object) -> Event:
        if type(ev) is h11.Data:
            return bytes(ev.data)
        if type(ev) is h11.EndOfMessage:
            return EndOfMessage(list(ev.headers) if ev.headers else [])
        if ev is h11.NEED_DATA:
            return NEED_DATA
        if ev is h11.PAUSED:
            return PAUSED
        if type(ev) is h11.ConnectionClosed:
            return CLOSED
        raise Http1Error(f"unexpected event {ev!r}")  # pragma: no cover


def _details(exc: h11.RemoteProtocolError) -> str:
    if exc.error_status_hint == 431:
        return "http1.headers_too_large"
    return "http1.codec_error"


class Http1ServerCodec(_Base):
    """The downstream side: parses requests, serialises responses.

    Args:
        max_header_bytes: the request line plus headers (Envoy's
            `max_request_headers_kb`, 60 KiB); past it, 431.
        max_headers: header count (Envoy's `max_headers_count`, 100); past it, 431.
        parser: who reads request heads, one of `PARSERS`; the events and
            errors are the same either way.
    """

    __slots__ = ("_head_method", "_max_header_bytes", "_start")

    _AWAITING = h11.IDLE

    def __init__(
        self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100, parser: str = "h11"
    ) -> None:
        self._conn = _connection(h11.SERVER, max_header_bytes, parser)
        self._eof = _OPEN
        self._max_headers = max_headers
        self._max_header_bytes = max_header_bytes
        self._head_method = b""
        # The first bytes of the request being read, so that a request rejected
        # before its head parses (431, 408, bad header) is still known as a
        # HEAD, whose answer must carry no content (RFC 9110 9.3.2).
        self._start = bytearray()

    @property
    def waiting_for_100_continue(self) -> bool:
        return bool(self._conn.they_are_waiting_for_100_continue)

    @property
    def has_buffered_data(self) -> bool:
        return bool(self._conn.trailing_data[0])

    @property
    def head_request(self) -> bool:
        """The request being read (or just rejected) is a HEAD: answer without content."""
        if self._head_method:
            return self._head_method == b"HEAD"
        return bytes(self._start).lstrip(b"\r\n").startswith(b"HEAD ")

    def receive_data(self, data: bytes) -> None:
        if self._conn.their_state is h11.IDLE and len(self._start) < _START_BYTES:
            self._start += data[: _START_BYTES - len(self._start)]
        super().receive_data(data)

    def start_next_cycle(self) -> bool:
        if not super().start_next_cycle():
            return False
        self._head_method = b""
        # Pipelined bytes already buffered are the start of the next request.
        self._start = bytearray(self._conn.trailing_data[0][:_START_BYTES])
        return True

    def next_event(self) -> Event:
        ev = self._next()
        if type(ev) is h11.Request:
            return self._request(ev)
        return self._body_event(ev)

    def _request(self, ev: h11.Request) -> RequestHead:
        self._head_method = bytes(ev.method)
        raw = list(ev.headers)
        if len(raw) > self._max_headers:
            raise Http1Error(
                f"too many headers ({len(raw)} > {self._max_headers})",
                431,
                "http1.too_many_headers",
            )
        # h11 only bounds a head that arrives in pieces; one that arrives
        # whole is measured here, like Envoy's header map byte size.
        size = len(ev.target) + sum(len(k) + len(v) for k, v in raw)
        if size > self._max_header_bytes:
            raise Http1Error(
                f"request headers too large ({size} > {self._max_header_bytes} bytes)",
                431,
                "http1.headers_too_large",
            )
        names = {k for k, _ in raw}
        if b"content-length" in names and b"transfer-encoding" in names:
            # h11 lets Transfer-Encoding win (RFC 9112 6.3), but the length
            # would then travel upstream with a chunked body: the classic
            # request-smuggling desync. Envoy rejects it unless
            # `allow_chunked_length` is set; so do we.
            raise Http1Error(
                "both content-length and transfer-encoding",
                400,
                "http1.content_length_and_chunked_not_allowed",
            )
        if ev.http_version != b"1.1":
            if ev.http_version != b"1.0":
                raise Http1Error("invalid HTTP version", 400, "http1.codec_error")
            # Envoy rejects HTTP/1.0 unless accept_http_10 is set: 426.
            raise Http1Error("HTTP/1.0 is not accepted", 426, "low_version")
        authority = b""
        headers: Headers = []
        for k, v in raw:
            if k == b"host":
                authority = v
            else:
                headers.append((k, v))
        target = bytes(ev.target)
        scheme = b"http"
        if not target.startswith(b"/"):
            if target == b"*" and ev.method == b"OPTIONS":
                pass
            elif target.startswith((b"http://", b"https://")):
                # absolute-form (RFC 9112 3.2.2): the target's authority wins.
                scheme, _, rest = target.partition(b"://")
                slash = rest.find(b"/")
                authority = rest if slash < 0 else rest[:slash]
                target = b"/" if slash < 0 else rest[slash:]
            else:
                raise Http1Error("invalid request target", 400, "http1.invalid_url")
        return RequestHead(
            method=self._head_method,
            path=target,
            authority=authority,
            scheme=scheme,
            headers=headers,
        )

    # ------------------------------------------------------------------ output

    def send_switching_protocols(self, headers: Headers) -> bytes:
        """`101 Switching Protocols` for an upgrade the client asked for."""
        try:
            return (
                self._conn.send(
                    h11.InformationalResponse(
                        status_code=101, headers=headers, reason=b"Switching Protocols"
                    )
                )
                or b""
            )
        except h11.LocalProtocolError as exc:
            raise Http1Error(f"cannot switch protocols: {exc}", 502, "upgrade_failed") from None

    def send_100_continue(self) -> bytes:
        return (
            self._conn.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
            or b""
        )

    def send_response_head(self, head: ResponseHead) -> bytes:
        try:
            return (
                self._conn.send(
                    h11.Response(
                        status_code=head.status,
                        headers=head.headers,
                        # Like Envoy, write the standard phrase, not the upstream's.
                        reason=REASONS.get(head.status, b""),
                        _parsed=type(head.status) is int and _valid_headers(head.headers),
                    )
                )
                or b""
            )
        except h11.LocalProtocolError as exc:
            raise Http1Error(
                f"cannot send response head: {exc}", 502, "upstream_protocol"
            ) from None

    def send_data(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data)) or b""

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b""

    @property
    def response_started(self) -> bool:
        state = self._conn.our_state
        return state is not h11.IDLE and state is not h11.SEND_RESPONSE


class Http1ClientCodec(_Base):
    """The upstream side: serialises requests, parses responses.

    Args: as `Http1ServerCodec`'s (the limits apply to response heads).
    """

    __slots__ = ("_informational",)

    _AWAITING = h11.SEND_RESPONSE

    def __init__(
        self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100, parser: str = "h11"
    ) -> None:
        self._conn = _connection(h11.CLIENT, max_header_bytes, parser)
        self._eof = _OPEN
        self._max_headers = max_headers

    def send_request_head(
        self, head: RequestHead, *, body: bool, content_length: bytes | None
    ) -> bytes:
        """Serialise a request head.

        Args:
            body: whether a body follows. Without `content_length` it is sent
                chunked; with neither, the request has no body and is ended here.
            content_length: the downstream's `Content-Length`, passed on as is.
        """
        headers: Headers = [(b"host", head.authority)]
        headers += [(k, v) for k, v in head.headers if k != b"content-length"]
        if content_length is not None:
            headers.append((b"content-length", content_length))
        elif body:
            headers.append((b"transfer-encoding", b"chunked"))
        try:
            data = (
                self._conn.send(
                    h11.Request(
                        method=head.method,
                        target=head.path,
                        headers=headers,
                        _parsed=type(head.method) is bytes
                        and type(head.path) is bytes
                        and _valid_headers(headers),
                    )
                )
                or b""
            )
            if not body:
                data += self._conn.send(h11.EndOfMessage()) or b""
            return data
        except h11.LocalProtocolError as exc:
            raise Http1Error(f"cannot send request: {exc}", 400, "http1.codec_error") from None

    def send_data(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data)) or b""

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b""

    def next_event(self) -> Event:
        ev = self._next()
        if type(ev) is h11.Response or type(ev) is h11.InformationalResponse:
            raw = list(ev.headers)
            if len(raw) > self._max_headers:
                raise Http1Error("too many response headers", 502, "upstream_protocol")
            names = {k for k, _ in raw}
            if b"content-length" in names and b"transfer-encoding" in names:
                # RFC 9112 6.3: "ought to be handled as an error" (response
                # splitting); h11 would let Transfer-Encoding win.
                raise Http1Error(
                    "response has both content-length and transfer-encoding",
                    502,
                    "upstream_protocol",
                )
            return ResponseHead(
                status=ev.status_code,
                headers=list(raw),
                reason=bytes(ev.reason),
                http_version=bytes(ev.http_version),
            )
        return self._body_event(ev)

    @property
    def request_complete(self) -> bool:
        return self._conn.our_state is h11.DONE
