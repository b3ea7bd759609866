"""Sans-IO HTTP/2 pieces on top of `h2`: settings, connection set-up, and the
translation between h2 header blocks and the proxy's `RequestHead` /
`ResponseHead`.

No I/O and no trio here: the runtime (`trioproxy.http.h2_conn_manager` and
`trioproxy.net.h2_pool`) owns the sockets, the tasks and flow control waits.

Translation rules (RFC 9113 section 8, and what Envoy does when bridging):
- `:method :scheme :authority :path` ↔ the head's fields; `host` is folded
  into `:authority` when `:authority` is absent (and dropped otherwise);
- several `cookie` fields are joined with `"; "` (RFC 9113 8.2.3) on the way
  in, so an HTTP/1.1 upstream sees one header;
- connection-specific fields (`connection`, `keep-alive`, `proxy-connection`,
  `transfer-encoding`, `upgrade`, and what `connection` names) never go out on
  HTTP/2; `te` only as `te: trailers` (gRPC needs it);
- header names are lower case on both sides already (h11 and h2 both give
  lower-case names).

`ServerConnection` is h2's server connection with RFC 9113's stream errors
where h2 raises connection errors (h2 4.x closes the whole connection for
any bad header block). Rules, in the order they are checked for a client's
HEADERS frame (every header block is HPACK-decoded first, so the shared
compression state stays in step whatever happens to the stream):

  stream id / stream state wrong (h2's own checks) -> connection error
  HPACK undecodable, or larger than the hard cap     -> connection error
  new stream above the last id of our GOAWAY         -> RST_STREAM REFUSED_STREAM
  new stream beyond SETTINGS_MAX_CONCURRENT_STREAMS  -> RST_STREAM REFUSED_STREAM
  header list over max_header_list_size / count      -> RST_STREAM INTERNAL_ERROR
                                                        (Envoy's header_overflow)
  malformed block (RFC 9113 8.1.1, 8.2, 8.3)         -> RST_STREAM PROTOCOL_ERROR
  trailers without END_STREAM                        -> RST_STREAM PROTOCOL_ERROR

and for DATA: a body longer or shorter than its content-length (8.1.1) is
RST_STREAM PROTOCOL_ERROR. Each of these yields a `StreamRejected` event so
the runtime can count it and stop the stream's task.

Flood limits (Envoy's `http2_protocol_options`; `FloodGuard` counts, the
frame buffer checks every inbound frame before h2 sees it). Each is a
connection error GOAWAY ENHANCE_YOUR_CALM raised as `FloodError`, whose
`stat` names Envoy's `http2.*` counter:

  more than N consecutive HEADERS/CONTINUATION/DATA frames with an empty
  payload and no END_STREAM (N = 1)                  -> inbound_empty_frames_flood
  PRIORITY frames > N * (1 + streams opened) (N = 100)
                                                     -> inbound_priority_frames_flood
  WINDOW_UPDATE frames > 1 + 2 * (streams opened + N * DATA frames sent)
  (N = 10)                                           -> inbound_window_update_frames_flood
  one header block (HEADERS + CONTINUATION) over max_header_list_size plus
  one frame of compressed bytes, or over 64 CONTINUATION frames
                                                     -> header_overflow
  decoded header list over the HPACK hard cap        -> header_overflow

The outbound limits (frames queued and not yet written: `max_outbound_frames`,
`max_outbound_control_frames` for PING/SETTINGS acks and RST_STREAM) are
counted here (`FloodGuard.queued*`; the runtime's writer sets `written*`).
While `receive_data` runs, crossing one raises `FloodError` at the frame
that crosses it (outbound_flood / outbound_control_flood), as Envoy checks
while dispatching downstream data, so one read cannot queue more than the
limit; the runtime checks again after each read. A GOAWAY from the client
with NO_ERROR does not end the streams already open (6.8), and
`send_goaway()` announces a drain without closing the connection either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Literal

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
import h2.utilities
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

from trioproxy.codec.http1 import strip_hop_by_hop
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead

__all__ = [
    "PREFACE",
    "ClientConnection",
    "FloodError",
    "FloodGuard",
    "Http2Error",
    "Http2Settings",
    "ServerConnection",
    "StreamRejected",
    "new_client_connection",
    "new_server_connection",
    "request_from_h2",
    "request_to_h2",
    "response_from_h2",
    "response_to_h2",
    "trailers_to_h2",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface; an h2c prior-knowledge client starts with it."""

_PSEUDO_REQUEST: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


class Http2Error(Exception):
    """A header block that cannot be translated (a malformed request or response)."""


@attrs.frozen(kw_only=True)
class Http2Settings:
    """Envoy's `http2_protocol_options` that we honour, with Envoy's defaults.

    Attributes:
        max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS we advertise.
        initial_stream_window_size: per-stream receive window (16 MiB).
        initial_connection_window_size: connection receive window (24 MiB).
        max_frame_size: SETTINGS_MAX_FRAME_SIZE we accept (16 KiB, the RFC minimum).
        max_header_list_size: SETTINGS_MAX_HEADER_LIST_SIZE we advertise and
            enforce per request (Envoy's max_request_headers_kb, 60 KiB).
        max_headers_count: header fields per block (Envoy's max_headers_count).
    """

    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024
    max_frame_size: int = 16384
    max_header_list_size: int = 60 * 1024
    max_headers_count: int = 100
    # RFC 8441 SETTINGS_ENABLE_CONNECT_PROTOCOL (WebSocket over HTTP/2).
    enable_connect_protocol: bool = False
    # Flood limits, Envoy's http2_protocol_options names and defaults (see
    # the module docstring for what each one counts).
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10


_DEFAULT_WINDOW: Final = 65535

# HPACK-decoded size past which a header block is a connection error rather
# than a stream error: the block must be decoded whole to keep the shared
# compression state, so this bounds the memory one block can make us spend
# (an "HPACK bomb"). Four times the advertised list size, at least 256 KiB.
_HPACK_HARD_CAP_FACTOR: Final = 4
_HPACK_HARD_CAP_MIN: Final = 256 * 1024

# CONTINUATION frames one header block may span. h2 stops at the same
# number (h2.frame_buffer.CONTINUATION_BACKLOG); we check it first so it is
# counted as a header overflow. With 16 KiB frames that is 1 MiB, so the
# byte limit below (the list size plus one frame) is what binds by default.
MAX_CONTINUATION_FRAMES: Final = h2.frame_buffer.CONTINUATION_BACKLOG

RejectKind = Literal["refused", "draining", "too_large", "malformed"]

FloodKind = Literal[
    "outbound_flood",
    "outbound_control_flood",
    "inbound_empty_frames_flood",
    "inbound_priority_frames_flood",
    "inbound_window_update_frames_flood",
    "header_overflow",
]


class FloodError(h2.exceptions.DenialOfServiceError):
    """A flood limit was crossed: a connection error, GOAWAY ENHANCE_YOUR_CALM.

    Attributes:
        stat: the Envoy `http2.*` counter that counts it.
    """

    def __init__(self, stat: FloodKind, message: str) -> None:
        super().__init__(message)
        self.stat: FloodKind = stat


class FloodGuard:
    """Per-connection counters for Envoy's HTTP/2 flood limits.

    Plain integers bumped once per frame: the inbound ones by the frame
    buffer, the outbound ones by `ServerConnection._prepare_for_sending`
    (`queued*`) and by the runtime's writer once bytes are written
    (`written*`, a copy of `queued*` taken when the bytes left h2).
    """

    __slots__ = (
        "data_frames_sent",
        "empty_run",
        "max_control",
        "max_empty",
        "max_frames",
        "max_priority",
        "max_window_update",
        "priority_frames",
        "queued",
        "queued_control",
        "streams_opened",
        "window_update_frames",
        "written",
        "written_control",
    )

    def __init__(self, settings: Http2Settings) -> None:
        self.max_frames = settings.max_outbound_frames
        self.max_control = settings.max_outbound_control_frames
        self.max_empty = settings.max_consecutive_inbound_frames_with_empty_payload
        self.max_priority = settings.max_inbound_priority_frames_per_stream
        self.max_window_update = settings.max_inbound_window_update_frames_per_data_frame_sent
        self.empty_run = 0
        self.priority_frames = 0
        self.window_update_frames = 0
        self.streams_opened = 0
        self.data_frames_sent = 0
        self.queued = self.queued_control = 0
        self.written = self.written_control = 0

    def outbound_flood(self) -> Literal["outbound_flood", "outbound_control_flood"] | None:
        """Which outbound limit the frames not yet written exceed, if any."""
        if self.queued - self.written > self.max_frames:
            return "outbound_flood"
        if self.queued_control - self.written_control > self.max_control:
            return "outbound_control_flood"
        return None

    def mark(self) -> tuple[int, int]:
        """The frames queued so far (taken by the writer with the bytes)."""
        return self.queued, self.queued_control

    def mark_written(self, mark: tuple[int, int]) -> None:
        """The frames counted up to `mark` are in the kernel now."""
        self.written, self.written_control = mark


class _GuardedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, checking every inbound frame against the flood
    limits before h2 merges CONTINUATION frames or dispatches anything."""

    def __init__(self, guard: FloodGuard, max_block: int) -> None:
        super().__init__(server=True)
        self._guard = guard
        self._max_block = max_block
        self._block = 0  # compressed bytes of the header block being received

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        g = self._guard
        t = type(f)
        if t is DataFrame or t is HeadersFrame or t is ContinuationFrame:
            assert f is not None
            data: bytes = f.data  # type: ignore[attr-defined]
            if data or "END_STREAM" in f.flags:
                g.empty_run = 0
            else:
                g.empty_run += 1
                if g.empty_run > g.max_empty:
                    raise FloodError(
                        "inbound_empty_frames_flood",
                        f"more than {g.max_empty} consecutive frames with an empty payload",
                    )
            if t is not DataFrame:
                self._block = len(data) if t is HeadersFrame else self._block + len(data)
                if self._block > self._max_block:
                    raise FloodError(
                        "header_overflow", f"header block over {self._max_block} bytes"
                    )
                if len(self._headers_buffer) >= MAX_CONTINUATION_FRAMES:
                    raise FloodError(
                        "header_overflow", f"over {MAX_CONTINUATION_FRAMES} CONTINUATION frames"
                    )
        elif t is PriorityFrame:
            g.priority_frames += 1
            if g.priority_frames > g.max_priority * (1 + g.streams_opened):
                raise FloodError("inbound_priority_frames_flood", "too many PRIORITY frames")
        elif t is WindowUpdateFrame:
            g.window_update_frames += 1
            allowed = 1 + 2 * (g.streams_opened + g.max_window_update * g.data_frames_sent)
            if g.window_update_frames > allowed:
                raise FloodError(
                    "inbound_window_update_frames_flood", "too many WINDOW_UPDATE frames"
                )
        return super()._update_header_buffer(f)


class StreamRejected(h2.events.Event):
    """We reset a client's stream ourselves (a stream error, RFC 9113 5.4.2).

    Attributes:
        stream_id: the stream.
        error_code: the RST_STREAM code sent.
        kind: `refused` (over SETTINGS_MAX_CONCURRENT_STREAMS), `draining`
            (opened after our GOAWAY), `too_large` (header list over the
            limits), `malformed` (RFC 9113 8.1.1).
        reason: what was wrong, for logs.
    """

    def __init__(self, stream_id: int, error_code: int, kind: RejectKind, reason: str) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.kind: RejectKind = kind
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"<StreamRejected stream_id:{self.stream_id}, error_code:{self.error_code}, "
            f"kind:{self.kind}, reason:{self.reason}>"
        )


_REQUEST_FLAGS: Final = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_TRAILER_FLAGS: Final = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=True, is_response_header=False, is_push_promise=False
)


def _without_content_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k != b"content-length"]


class _Connection(h2.connection.H2Connection):
    """h2's connection, except that the peer's GOAWAY with NO_ERROR lets the
    streams already open finish (RFC 9113 6.8): h2 would close its state
    machine and drop every queued frame, so no response or request body
    could be sent any more. `peer_goaway` tells that one arrived; the
    runtime opens no stream above its last-stream-id."""

    peer_goaway = False

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        self.peer_goaway = True
        ev = h2.events.ConnectionTerminated()
        ev.error_code = h2.errors.ErrorCodes.NO_ERROR
        ev.last_stream_id = frame.last_stream_id
        ev.additional_data = frame.additional_data or None
        return [], [ev]


class ClientConnection(_Connection):
    """The upstream side: h2's client connection with a graceful GOAWAY."""


class ServerConnection(_Connection):
    """h2's server connection with stream errors for stream-level faults.

    See the module docstring for the rules. Uses h2 internals
    (`_receive_headers_frame`, `_receive_data_frame`, `_receive_goaway_frame`,
    stream state machines) as of h2 4.x; `tests/test_h2_conformance.py`
    pins the behaviour with raw frames.
    """

    def __init__(self, config: h2.config.H2Configuration, settings: Http2Settings) -> None:
        super().__init__(config=config)
        self._max_list = settings.max_header_list_size
        self._max_count = settings.max_headers_count
        self._hard_cap = max(_HPACK_HARD_CAP_MIN, _HPACK_HARD_CAP_FACTOR * self._max_list)
        # The last stream id of the GOAWAY we sent (None: none sent).
        self.goaway_last_stream_id: int | None = None
        self.guard = FloodGuard(settings)
        # True while receive_data runs: the outbound limits are enforced
        # then (frames queued by our own streams are bounded by flushing).
        self._dispatching = False
        self._flooded = False
        # A compressed header block may exceed the decoded list we accept by
        # at most one frame (an encoder never makes a block much larger than
        # its list): past that it is buffered for nothing.
        self.incoming_buffer = _GuardedFrameBuffer(
            self.guard, self._max_list + settings.max_frame_size
        )

    # ------------------------------------------------------------ outbound

    def send_goaway(self, last_stream_id: int, error_code: int = 0) -> None:
        """Queue a GOAWAY that lets streams up to `last_stream_id` finish.

        h2's `close_connection()` closes its state machine, after which no
        response could be sent; a drain needs the connection to carry on.
        Streams the client opens above `last_stream_id` are refused.
        """
        f = GoAwayFrame(0)
        f.last_stream_id = last_stream_id
        f.error_code = error_code
        self.goaway_last_stream_id = last_stream_id
        self._prepare_for_sending([f])

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        # Count what Envoy's flood limits count: every frame, the control
        # frames a peer can make us send (PING and SETTINGS acks, RST_STREAM)
        # and DATA frames (they earn the peer WINDOW_UPDATEs).
        g = self.guard
        for f in frames:
            t = type(f)
            if t is DataFrame:
                g.data_frames_sent += 1
            elif t is RstStreamFrame or (
                (t is PingFrame or t is SettingsFrame) and "ACK" in f.flags
            ):
                g.queued_control += 1
        g.queued += len(frames)
        if self._dispatching and not self._flooded:
            flood = g.outbound_flood()
            if flood is not None:
                # h2 answers with GOAWAY (queued through here: not again).
                self._flooded = True
                raise FloodError(flood, f"{flood}: frames queued and not written")
        super()._prepare_for_sending(frames)

    def receive_data(self, data: bytes) -> list[h2.events.Event]:  # type: ignore[override]
        self._dispatching = True
        try:
            return super().receive_data(data)
        finally:
            self._dispatching = False

    # ------------------------------------------------------------ inbound

    def _receive_headers_frame(
        self, frame: HeadersFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        new = sid not in self.streams
        refuse: tuple[RejectKind, str] | None = None
        if new:
            self.guard.streams_opened += 1
            last = self.goaway_last_stream_id
            if last is not None and sid > last:
                refuse = ("draining", "stream opened after GOAWAY")
            elif self.open_inbound_streams >= self.local_settings.max_concurrent_streams:
                refuse = ("refused", "SETTINGS_MAX_CONCURRENT_STREAMS exceeded")
        # Decode whatever happens next: HPACK state is shared by all streams.
        self.decoder.max_header_list_size = self._hard_cap
        try:
            headers = list(h2.connection._decode_headers(self.decoder, frame.data))
        except h2.exceptions.DenialOfServiceError as exc:
            # Over the hard cap (an HPACK bomb): ENHANCE_YOUR_CALM.
            raise FloodError("header_overflow", str(exc)) from exc
        except h2.exceptions.ProtocolError as exc:
            # RFC 9113 4.3: COMPRESSION_ERROR (h2 says PROTOCOL_ERROR).
            err = h2.exceptions.ProtocolError(str(exc))
            err.error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR
            raise err from exc
        events = self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(sid, h2.connection.AllowedStreamIDs.ODD)
        end_stream = "END_STREAM" in frame.flags
        problem: tuple[int, RejectKind, str] | None = None
        if refuse is not None:
            problem = (h2.errors.ErrorCodes.REFUSED_STREAM, *refuse)
        else:
            problem = self._check_block(headers, trailers=not new, end_stream=end_stream)
        try:
            frames, stream_events = stream.receive_headers(
                headers if problem is None else _without_content_length(headers),
                end_stream,
                self.config.header_encoding,
            )
        except h2.exceptions.ProtocolError as exc:
            if stream.state_machine.state == h2.stream.StreamState.CLOSED:
                raise  # a state violation: h2 made it a connection error
            # A bad content-length value: malformed, a stream error.
            problem = (h2.errors.ErrorCodes.PROTOCOL_ERROR, "malformed", str(exc))
            frames, stream_events = [], []
        if problem is None and end_stream:
            # h2 checks content-length only against DATA frames; a stream that
            # ends with its headers or trailers must match it too (8.1.1).
            expected = stream._expected_content_length
            if expected is not None and expected != stream._actual_content_length:
                problem = (
                    h2.errors.ErrorCodes.PROTOCOL_ERROR,
                    "malformed",
                    f"content-length {expected} but {stream._actual_content_length} body bytes",
                )
        if "PRIORITY" in frame.flags and problem is None and frame.depends_on == sid:
            problem = (h2.errors.ErrorCodes.PROTOCOL_ERROR, "malformed", "depends on itself")
        if problem is not None:
            code, kind, reason = problem
            frames = [*frames, *stream.reset_stream(code)]
            return frames, [*events, StreamRejected(sid, code, kind, reason)]
        if "PRIORITY" in frame.flags:
            # Priority signals are deprecated (RFC 9113 5.3.2) and ignored.
            self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_PRIORITY)
        return frames, events + stream_events

    def _check_block(
        self, headers: list[tuple[bytes, bytes]], *, trailers: bool, end_stream: bool
    ) -> tuple[int, RejectKind, str] | None:
        """Why the header block is to be rejected as a stream error, or None."""
        if len(headers) > self._max_count:
            return (h2.errors.ErrorCodes.INTERNAL_ERROR, "too_large", "too many header fields")
        size = sum(len(k) + len(v) + 32 for k, v in headers)
        if size > self._max_list:
            return (h2.errors.ErrorCodes.INTERNAL_ERROR, "too_large", "header list too large")
        if trailers and not end_stream:
            return (h2.errors.ErrorCodes.PROTOCOL_ERROR, "malformed", "trailers without END_STREAM")
        try:
            for _ in h2.utilities.validate_headers(
                headers, _TRAILER_FLAGS if trailers else _REQUEST_FLAGS
            ):
                pass
        except h2.exceptions.ProtocolError as exc:
            return (h2.errors.ErrorCodes.PROTOCOL_ERROR, "malformed", str(exc))
        return None

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        try:
            return super()._receive_data_frame(frame)
        except h2.exceptions.InvalidBodyLengthError as exc:
            # The frame was counted against both windows and will never be
            # read: give the connection's share back, then reset the stream.
            frames: list[Frame] = []
            increment = self._inbound_flow_control_window_manager.process_bytes(
                frame.flow_controlled_length
            )
            if increment:
                wu = WindowUpdateFrame(0)
                wu.window_increment = increment
                frames.append(wu)
            code = h2.errors.ErrorCodes.PROTOCOL_ERROR
            frames.extend(self.streams[frame.stream_id].reset_stream(code))
            return frames, [StreamRejected(frame.stream_id, code, "malformed", str(exc))]


def _config(*, client_side: bool, validate_inbound: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=validate_inbound,
        normalize_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


def _connection(settings: Http2Settings, *, client_side: bool) -> h2.connection.H2Connection:
    conn: h2.connection.H2Connection
    if client_side:
        conn = ClientConnection(config=_config(client_side=True, validate_inbound=True))
    else:
        # ServerConnection validates request blocks itself, as stream errors.
        conn = ServerConnection(_config(client_side=False, validate_inbound=False), settings)
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_stream_window_size,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        },
    )
    if settings.enable_connect_protocol and not client_side:
        conn.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        conn.local_settings.acknowledge()
    conn.initiate_connection()
    extra = settings.initial_connection_window_size - _DEFAULT_WINDOW
    if extra > 0:
        conn.increment_flow_control_window(extra)
    return conn


def new_server_connection(settings: Http2Settings) -> ServerConnection:
    """A server-side h2 connection with our SETTINGS and window already queued."""
    conn = _connection(settings, client_side=False)
    assert isinstance(conn, ServerConnection)
    return conn


def new_client_connection(settings: Http2Settings) -> ClientConnection:
    """A client-side h2 connection (preface, SETTINGS, window update queued)."""
    conn = _connection(settings, client_side=True)
    assert isinstance(conn, ClientConnection)
    return conn


def request_from_h2(headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """The request head of an h2 header block.

    Raises:
        Http2Error: a pseudo-header is missing, repeated or unknown.
    """
    method = scheme = authority = path = b""
    protocol: bytes | None = None
    host: bytes | None = None
    out: Headers = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            if name not in _PSEUDO_REQUEST:
                raise Http2Error(f"unknown pseudo-header {name!r}")
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            else:
                protocol = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = value
        else:
            out.append((name, value))
    if not method:
        raise Http2Error("missing :method")
    if method == b"CONNECT" and protocol is None:
        if not authority:
            raise Http2Error("CONNECT without :authority")
    elif not path or not scheme:
        raise Http2Error("missing :path or :scheme")
    if not authority and host is not None:
        authority = host
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    if protocol is not None:
        # RFC 8441 extended CONNECT; kept for the WebSocket bridge.
        out.append((b":protocol", protocol))
    return RequestHead(method=method, path=path, authority=authority, scheme=scheme, headers=out)


def _outbound(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    return [(k, v) for k, v in strip_hop_by_hop(list(headers)) if k != b"host" and k[:1] != b":"]


def request_to_h2(head: RequestHead) -> Headers:
    """An h2 header block for `head` (pseudo-headers first)."""
    block: Headers = [
        (b":method", head.method),
        (b":scheme", head.scheme or b"http"),
        (b":authority", head.authority),
        (b":path", head.path),
    ]
    if head.method == b"CONNECT":
        block = [(b":method", head.method), (b":authority", head.authority)]
    block.extend(_outbound(head.headers))
    return block


def response_from_h2(headers: Iterable[tuple[bytes, bytes]]) -> ResponseHead:
    """The response head of an h2 header block.

    Raises:
        Http2Error: `:status` is missing or not a number.
    """
    status = -1
    out: Headers = []
    for name, value in headers:
        if name == b":status":
            try:
                status = int(value)
            except ValueError:
                raise Http2Error(f"bad :status {value!r}") from None
        elif name[:1] == b":":
            raise Http2Error(f"unexpected pseudo-header {name!r} in a response")
        else:
            out.append((name, value))
    if not 100 <= status <= 999:
        raise Http2Error("missing or invalid :status")
    return ResponseHead(status=status, headers=out)


def response_to_h2(head: ResponseHead) -> Headers:
    block: Headers = [(b":status", b"%d" % head.status)]
    block.extend(_outbound(head.headers))
    return block


def trailers_to_h2(trailers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Trailers minus anything connection-specific or pseudo."""
    return _outbound(trailers)
