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
  against `h11_strict`'s grammar (all names in one regex call, all values in
  another). The event is built with h11's constructors, which run h11's
  semantic checks (Content-Length values, Transfer-Encoding, Host, method and
  target characters).
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
from h11._receivebuffer import ReceiveBuffer

from trioproxy.codec import h11_strict

__all__ = ["HttptoolsConnection"]

# The same blank-line search h11's `ReceiveBuffer.maybe_extract_lines` uses.
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")
# h11's start lines (h11._abnf via h11._readers), matched on the first line.
_REQUEST_LINE: Final = _readers.request_line_re
_STATUS_LINE: Final = _readers.status_line_re
# All names joined by newlines, all values likewise (neither grammar admits a
# newline, so the joined string matches exactly when every item does).
_NAMES: Final = re.compile(h11_strict.TOKEN + rb"(?:\n" + h11_strict.TOKEN + rb")*")
_VALUES: Final = re.compile(
    rb"(?:" + h11_strict.FIELD_CONTENT + rb")?(?:\n(?:" + h11_strict.FIELD_CONTENT + rb")?)*"
)
_OWS: Final = b" \t"

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


def _fields(parser_class: Any, head: bytes) -> list[tuple[bytes, bytes]] | None:
    """The header fields of `head` as llhttp splits them, names and values
    checked against h11_strict's grammar; None if anything is off."""
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
    out = fields.fields
    if not out:
        return out
    names = b"\n".join([k for k, _ in out])
    # llhttp drops the whitespace before a value, not after it.
    values = [v.rstrip(_OWS) for _, v in out]
    joined = b"\n".join(values)
    seps = len(out) - 1
    if (
        names.count(b"\n") != seps
        or joined.count(b"\n") != seps
        or _NAMES.fullmatch(names) is None
        or _VALUES.fullmatch(joined) is None
    ):
        return None
    return [(k, values[i]) for i, (k, _) in enumerate(out)]


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


def read_request_head(buf: ReceiveBuffer) -> h11.Request | None:
    """h11's `(CLIENT, IDLE)` reader, with the head split by llhttp."""
    if buf._data[:1] == b"\n" or buf._data[:2] == b"\r\n":
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
    """h11's `(SERVER, SEND_RESPONSE)` reader, with the head split by llhttp."""
    if buf._data[:1] == b"\n" or buf._data[:2] == b"\r\n":
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


class HttptoolsConnection(h11.Connection):
    """An `h11.Connection` whose head readers are `read_request_head` and
    `read_response_head`; every other reader, every state and every writer
    is h11's."""

    def __init__(self, our_role: type[h11._util.Sentinel], max_incomplete_event_size: int) -> None:
        super().__init__(our_role, max_incomplete_event_size=max_incomplete_event_size)
        self._swap_reader()

    def _swap_reader(self) -> None:
        reader = self._reader
        if reader is _H11_REQUEST_READER:
            self._reader = read_request_head
        elif reader is _H11_RESPONSE_READER:
            self._reader = read_response_head

    def _respond_to_state_changes(
        self,
        old_states: dict[type[h11._util.Sentinel], type[h11._util.Sentinel]],
        event: Any = None,
    ) -> None:
        super()._respond_to_state_changes(old_states, event)
        self._swap_reader()
