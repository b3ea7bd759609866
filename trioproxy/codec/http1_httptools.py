"""HTTP/1.1 message heads read by httptools (llhttp) inside h11's state machine.

Rules of this file:
- Only the *head* of a message (request or status line and header section)
  is read here. Everything else stays h11's, patched by `h11_strict`: the
  connection states (keep-alive, 100-continue, protocol switches, pipelined
  trailing data, a peer closing mid-message), body framing, chunked bodies,
  trailers, the 431 bound on an incomplete head, and serialisation.
- A head is taken from h11's receive buffer exactly where h11 would take it
  (the same blank-line search, the same early refusal of a first byte that
  cannot start a request line), so both readers see the same bytes at the
  same moment, however the stream was chunked.
- The start line is matched with h11's own start-line regex; llhttp splits
  the header section into fields; each name and value is then checked
  against `h11_strict`'s grammar (as byte sets: llhttp has already found
  the field boundaries). The event is built with h11's constructors, which
  run h11's semantic checks (Host, method and target characters); a head
  with Transfer-Encoding or anything but one plain Content-Length also goes
  through h11's header normalisation (conflicting lengths, codings: 501).
- `install()` (on import) puts these readers in h11's reader table. They
  read with llhttp only a connection made by `new_connection` (its receive
  buffer is a `_Buffer`); any other `h11.Connection` gets h11's own reader,
  one type check later. (A per-connection reader would have to be picked on
  every change of state, which cost more than llhttp saved.)
- Whatever the fast path does not accept (llhttp refuses the head, a field
  fails the grammar, an unusual start line such as an unregistered method)
  is read again by h11's reader, and its answer stands: its error, with its
  status, or its event. The two therefore cannot disagree about a head
  (`fuzz/test_http1_differential.py` checks that for arbitrary bytes).
- No I/O, no clock, as every codec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, cast

import h11
import httptools
from h11 import _readers
from h11._headers import CONTENT_LENGTH_MAX_DIGITS, Headers
from h11._receivebuffer import ReceiveBuffer

__all__ = ["install", "new_connection", "read_request_head", "read_response_head"]

# The same blank-line search h11's `ReceiveBuffer.maybe_extract_lines` uses.
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")
# h11's start lines (h11._abnf via h11._readers), matched on the first line.
_REQUEST_LINE: Final = _readers.request_line_re
_STATUS_LINE: Final = _readers.status_line_re
# h11_strict's grammar as byte sets (llhttp has split the fields already, so
# a set check per field is the whole grammar): a name is 1*tchar; a value,
# once llhttp has dropped the whitespace before it and we the whitespace
# after it, is empty or VCHAR / obs-text with SP and HTAB only inside it.
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIELD_BYTES: Final = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100)) + b" \t"
_OWS: Final = b" \t"
_MAX_LENGTH_DIGITS: Final = CONTENT_LENGTH_MAX_DIGITS

_Reader = Callable[[ReceiveBuffer], Any]
_H11_REQUEST_READER: Final = cast(_Reader, _readers.READERS[(h11.CLIENT, h11.IDLE)])
_H11_RESPONSE_READER: Final = cast(_Reader, _readers.READERS[(h11.SERVER, h11.SEND_RESPONSE)])


class _Fields:
    """httptools' protocol object: collects the header fields of one head."""

    __slots__ = ("complete", "fields")

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _take_head(buf: ReceiveBuffer) -> bytes | None:
    """The next head's bytes, removed from `buf`; None if it is incomplete.

    Mirrors `ReceiveBuffer.maybe_extract_lines` (same search, same
    bookkeeping) but keeps the bytes whole. A head starting with a blank line
    is left in place for h11's reader, which refuses it.
    """
    data = buf._data
    search = _BLANK_LINE.search(data, buf._multiple_lines_search)
    if search is None:
        buf._multiple_lines_search = max(0, len(data) - 2)
        if buf.is_next_line_obviously_invalid_request_line():
            raise h11.LocalProtocolError("illegal request line")
        return None
    return bytes(buf._extract(search.end()))


def _fields(parser_class: Any, head: bytes) -> Headers | list[tuple[bytes, bytes]] | None:
    """The header fields of `head` as llhttp splits them, each checked
    against h11_strict's grammar; None if llhttp or the grammar refuses one.

    Without Transfer-Encoding and with at most one plain Content-Length (1 to
    20 digits), the fields are returned as h11's `Headers`, which is exactly
    what h11's own normalisation would build from them; otherwise as pairs,
    for the event's constructor to normalise and check as h11 does.
    """
    fields = _Fields()
    parser = parser_class(fields)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # the head is whole; what follows is h11's business
    except httptools.HttpParserError:
        return None
    if not fields.complete:
        return None
    items: list[tuple[bytes, bytes, bytes]] = []
    plain = True
    length_seen = False
    for name, value in fields.fields:
        if value and value[-1] in (0x20, 0x09):
            value = value.rstrip(_OWS)  # llhttp drops the whitespace before a value only
        if not name or name.translate(None, _TCHAR) or value.translate(None, _FIELD_BYTES):
            return None
        if value[:1] in (b" ", b"\t"):
            return None  # not from llhttp; kept exact anyway
        lower = name.lower()
        if lower == b"content-length":
            if length_seen or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                plain = False
            length_seen = True
        elif lower == b"transfer-encoding":
            plain = False
        items.append((name, lower, value))
    if plain:
        return Headers(items)
    return [(name, value) for name, _, value in items]


def _start_line(head: bytes) -> int:
    """The end of the first line if it ends in CRLF, else -1."""
    nl = head.find(b"\n")
    if nl <= 0 or head[nl - 1] != 0x0D:
        return -1
    return nl - 1


def _fallback(reader: _Reader, head: bytes) -> Any:
    rb = ReceiveBuffer()
    rb += head
    return reader(rb)


class _Buffer(ReceiveBuffer):
    """The receive buffer of a connection whose heads llhttp splits."""


def read_request_head(buf: ReceiveBuffer) -> h11.Request | None:
    """h11's `(CLIENT, IDLE)` reader; for a `_Buffer`, the head split by llhttp."""
    if type(buf) is not _Buffer or buf._data[:1] == b"\n" or buf._data[:2] == b"\r\n":
        return _H11_REQUEST_READER(buf)  # type: ignore[no-any-return]
    head = _take_head(buf)
    if head is None:
        return None
    end = _start_line(head)
    line = _REQUEST_LINE.fullmatch(head, 0, end) if end > 0 else None
    fields = _fields(httptools.HttpRequestParser, head) if line is not None else None
    if line is None or fields is None:
        return _fallback(_H11_REQUEST_READER, head)  # type: ignore[no-any-return]
    return h11.Request(
        method=line["method"],
        target=line["target"],
        http_version=line["http_version"],
        headers=fields,
        _parsed=True,
    )


def read_response_head(
    buf: ReceiveBuffer,
) -> h11.Response | h11.InformationalResponse | None:
    """h11's `(SERVER, IDLE)` and `(SERVER, SEND_RESPONSE)` reader; for a
    `_Buffer`, the head split by llhttp."""
    if type(buf) is not _Buffer or buf._data[:1] == b"\n" or buf._data[:2] == b"\r\n":
        return _H11_RESPONSE_READER(buf)  # type: ignore[no-any-return]
    head = _take_head(buf)
    if head is None:
        return None
    end = _start_line(head)
    line = _STATUS_LINE.fullmatch(head, 0, end) if end > 0 else None
    fields = _fields(httptools.HttpResponseParser, head) if line is not None else None
    if line is None or fields is None:
        return _fallback(_H11_RESPONSE_READER, head)  # type: ignore[no-any-return]
    version = line["http_version"]
    reason = line["reason"]
    status = int(line["status_code"])
    cls = h11.InformationalResponse if status < 200 else h11.Response
    return cls(
        headers=fields,
        _parsed=True,
        status_code=status,
        reason=b"" if reason is None else reason,
        http_version=b"1.1" if version is None else version,
    )


def new_connection(
    role: type[h11._util.Sentinel], max_incomplete_event_size: int
) -> h11.Connection:
    """An `h11.Connection` whose message heads llhttp splits; every state,
    body reader and writer stays h11's."""
    conn = h11.Connection(role, max_incomplete_event_size=max_incomplete_event_size)
    conn._receive_buffer = _Buffer()
    return conn


_installed = False


def install() -> None:
    """Make h11's head readers `read_request_head` / `read_response_head`
    (idempotent). For a plain `ReceiveBuffer` they are h11's own readers, so
    every other `h11.Connection` is unchanged; checking the buffer's type
    costs less than picking a reader per connection on each change of state.
    """
    global _installed
    if _installed:
        return
    readers = _readers.READERS
    expected = {
        (h11.CLIENT, h11.IDLE): _H11_REQUEST_READER,
        (h11.SERVER, h11.IDLE): _H11_RESPONSE_READER,
        (h11.SERVER, h11.SEND_RESPONSE): _H11_RESPONSE_READER,
    }
    for key, reader in expected.items():
        if readers.get(key) is not reader or not callable(reader):
            raise ImportError(
                f"h11 {getattr(h11, '__version__', '?')}: READERS[{key}] is not the reader "
                "trioproxy.codec.http1_httptools expects; it must be updated for this h11"
            )
    readers[(h11.CLIENT, h11.IDLE)] = read_request_head
    readers[(h11.SERVER, h11.IDLE)] = read_response_head
    readers[(h11.SERVER, h11.SEND_RESPONSE)] = read_response_head
    _installed = True


install()
