"""HTTP/2 downstream connections for the HTTP connection manager.

    connection task (serve_h2)
    ├─ writer task: the connection's `FrameWriter` (all output)
    ├─ drain watcher: GOAWAY when the connection manager starts draining
    ├─ reader loop (this task): bytes → h2 events → per-stream state
    └─ stream nursery: one task per request stream, running the same
       `ConnectionManager.run_stream` as HTTP/1.1 (filters → router)

Flow control is end to end: request DATA is acknowledged to the client only
when the stream's consumer (the router's body pump) has taken it, so a slow
upstream slows the client down, and response DATA is sent only inside the
client's window, so a slow reader slows the upstream relay. Memory per stream
is bounded by the stream window (16 MiB by default), per connection by the
connection window (24 MiB); output waiting for a slow client by
`_OUTPUT_BACKLOG` (the reader stops reading while that much is queued, so a
client that floods PINGs without reading our answers cannot grow it).

Errors (RFC 9113 5.4), with the protocol rules in `ServerConnection`:
- stream errors (a malformed request, a content-length mismatch, a header
  list over the limits, a stream over SETTINGS_MAX_CONCURRENT_STREAMS) reset
  that stream only; its task, if it started, sees `DownstreamProtocolError`;
- connection errors send GOAWAY with h2's error code and end the connection;
- a stream reset by the client (RST_STREAM) wakes whatever its task waits on
  with `DownstreamReset`, which resets the upstream request; a stream that ends
  without a complete response is reset towards the client (the HTTP/2 way to
  say "truncated").

Floods (Envoy's HTTP/2 flood mitigation; limits in `ServerConnection` and
docs/security.md): an inbound flood is a `FloodError` from the codec; the
outbound limits are checked after each read, since every frame a client can
make us queue is caused by what we read; and the rapid-reset budget is
checked as streams end. Each ends the connection with GOAWAY
ENHANCE_YOUR_CALM and counts Envoy's stat (`http2.<flood>`,
`http.<prefix>.downstream_rq_too_many_premature_resets`).

Connection lifetime, as Envoy:
- idle timeout (`idle_timeout`, 1 h): armed while no stream is open (PINGs
  do not keep a connection alive), then GOAWAY NO_ERROR and close;
- drain (`begin_drain(hcm)`): GOAWAY with last-stream-id 2^31-1 at once (a
  notice: streams in flight towards us are still served), then after
  `DRAIN_NOTICE_SECONDS` a GOAWAY with the last stream id actually received;
  streams above it are refused, the connection closes when its streams end;
- a client's GOAWAY NO_ERROR: no new streams, the open ones finish.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from typing import TYPE_CHECKING, Final

import h2.errors
import h2.events
import h2.exceptions
import trio

from trioproxy.codec.http2 import (
    FloodError,
    Http2Error,
    ServerConnection,
    StreamRejected,
    request_from_h2,
    response_to_h2,
    trailers_to_h2,
)
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead
from trioproxy.http.conn_manager import ActiveStream
from trioproxy.net.errors import DownstreamProtocolError, DownstreamReset
from trioproxy.net.h2_writer import FrameWriter
from trioproxy.net.network import Connection

if TYPE_CHECKING:
    from trioproxy.http.conn_manager import ConnectionManager

__all__ = ["DRAIN_NOTICE_SECONDS", "Http2Stream", "begin_drain", "serve_h2"]

# Envoy's HCM drain_timeout: the time between the GOAWAY notice and the final
# GOAWAY, for requests already on the wire to arrive.
DRAIN_NOTICE_SECONDS: Final = 5.0

# The largest stream id: the last-stream-id of a GOAWAY that is only a notice.
_MAX_STREAM_ID: Final = 2**31 - 1

# Output queued for the client past which the reader stops reading (1 MiB):
# every frame we answer with (PING and SETTINGS acks, RST_STREAM,
# WINDOW_UPDATE) is caused by input, so not reading bounds the queue. Envoy
# bounds the same queue by frame count (max_outbound_frames 10000) and closes
# the connection instead; waiting is kinder to a client that is merely slow.
_OUTPUT_BACKLOG: Final = 1024 * 1024


class _DrainSignal:
    __slots__ = ("event", "notice")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.notice = DRAIN_NOTICE_SECONDS


_DRAIN: weakref.WeakKeyDictionary[ConnectionManager, _DrainSignal] = weakref.WeakKeyDictionary()


def _drain_signal(hcm: ConnectionManager) -> _DrainSignal:
    signal = _DRAIN.get(hcm)
    if signal is None:
        signal = _DRAIN[hcm] = _DrainSignal()
    return signal


def begin_drain(hcm: ConnectionManager, *, notice: float = DRAIN_NOTICE_SECONDS) -> None:
    """Start draining every HTTP/2 connection of `hcm` (and mark it draining).

    Each connection sends a GOAWAY notice now and its final GOAWAY after
    `notice` seconds, then closes once its streams are done. No checkpoint.
    """
    hcm.draining = True
    signal = _drain_signal(hcm)
    signal.notice = notice
    signal.event.set()


class Http2Stream(ActiveStream):
    """One request stream on an HTTP/2 downstream connection."""

    __slots__ = (
        "_chunks",
        "_data_ready",
        "_h2c",
        "_protocol_error",
        "_reset_event",
        "_reset_scope",
        "_window_open",
        "counted",
        "ended_by_peer",
        "reset_by_peer",
        "stream_id",
    )

    def __init__(
        self, h2c: _H2Downstream, stream_id: int, head: RequestHead, *, end_stream: bool
    ) -> None:
        super().__init__(h2c.hcm, head, protocol="HTTP/2", remote=h2c.remote, local=h2c.local)
        self._h2c = h2c
        self.stream_id = stream_id
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._data_ready = trio.Event()
        self._window_open = trio.Event()
        self._reset_event = trio.Event()
        # Cancelled when the client resets the stream (`cancel_on_reset`).
        self._reset_scope: trio.CancelScope | None = None
        # The client reset the stream, or the connection ended under it.
        self.reset_by_peer = False
        # We reset the stream because of the client's fault (a stream error).
        self._protocol_error: str | None = None
        self.ended_by_peer = end_stream
        # Counted by the connection's rapid-reset budget.
        self.counted = False
        cl = head.get(b"content-length")
        self.content_length = cl
        self.has_body = not end_stream
        self._body_done = end_stream

    # ----------------------------------------------------------- reader side
    # Called by the reader task; never checkpoint.

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        self._chunks.append((data, flow_controlled))
        self._data_ready.set()

    def on_end(self, trailers: Headers | None = None) -> None:
        if trailers:
            self.request_trailers = trailers
        self.ended_by_peer = True
        self._data_ready.set()

    def on_reset(self) -> None:
        self.reset_by_peer = True
        self._wake_all()
        if self._reset_scope is not None:
            self._reset_scope.cancel()

    def on_protocol_error(self, reason: str) -> None:
        """The codec reset the stream for a client fault (already sent)."""
        self._protocol_error = reason
        self._wake_all()

    def on_window(self) -> None:
        self._window_open.set()

    def _wake_all(self) -> None:
        self._reset_event.set()
        self._data_ready.set()
        self._window_open.set()

    @property
    def closed(self) -> bool:
        """Reset either way: nothing more can be sent or received."""
        return self.reset_by_peer or self._protocol_error is not None

    def raise_if_reset(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if self._protocol_error is not None:
            raise DownstreamReset(f"stream reset: {self._protocol_error}")
        if self.reset_by_peer:
            raise DownstreamReset("client reset the stream")

    # ----------------------------------------------------------- request body

    async def read_body(self) -> bytes | None:
        if self._body_done:
            return None
        while True:
            if self._protocol_error is not None:
                raise DownstreamProtocolError(self._protocol_error)
            if self.reset_by_peer:
                raise DownstreamReset("client reset the stream")
            if self._chunks:
                data, flow = self._chunks.popleft()
                if flow:
                    self._h2c.acknowledge(self.stream_id, flow)
                if data:
                    self.info.bytes_received += len(data)
                    self._touch()
                    return data
                continue
            if self.ended_by_peer:
                self._body_done = True
                self.info.last_downstream_rx_monotonic = trio.current_time()
                return None
            if self._data_ready.is_set():
                self._data_ready = trio.Event()
            await self._data_ready.wait()

    def closed_by_client(self) -> bool:
        return self.reset_by_peer

    def cancel_on_reset(self, scope: trio.CancelScope) -> bool:
        # The connection's reader sees the RST_STREAM and calls `on_reset`.
        self._reset_scope = scope
        if self.reset_by_peer:
            scope.cancel()
        return True

    async def watch_disconnect(self) -> bool:
        await self._reset_event.wait()
        return True

    # ----------------------------------------------------------- response

    async def _write_head(self, head: ResponseHead, end_stream: bool) -> None:
        self._check_open()
        h2c = self._h2c
        try:
            h2c.h2.send_headers(self.stream_id, response_to_h2(head), end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            raise DownstreamReset("stream closed") from None
        await h2c.flush()

    async def _write_data(self, data: bytes) -> None:
        h2c = self._h2c
        conn = h2c.h2
        sid = self.stream_id
        view = memoryview(data)
        while view:
            self._check_open()
            try:
                window = conn.local_flow_control_window(sid)
            except h2.exceptions.ProtocolError:
                raise DownstreamReset("stream closed") from None
            n = min(window, conn.max_outbound_frame_size, len(view))
            if n <= 0:
                if self._window_open.is_set():
                    self._window_open = trio.Event()
                await self._window_open.wait()
                continue
            # Queue every frame the window allows, then wait once for the
            # socket: one checkpoint per window's worth, not per frame.
            try:
                while n > 0:
                    conn.send_data(sid, bytes(view[:n]))
                    view = view[n:]
                    n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    n = min(n, len(view))
            except h2.exceptions.ProtocolError:
                raise DownstreamReset("stream closed") from None
            await h2c.flush()

    async def _write_whole(self, head: ResponseHead, body: bytes, trailers: Headers | None) -> None:
        """HEADERS, DATA and the end queued together, one flush (the default
        flushes after each). A body the client's window or the frame size
        cannot take at once goes the default way (it may have to wait)."""
        self._check_open()
        h2c = self._h2c
        conn = h2c.h2
        sid = self.stream_id
        try:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        except h2.exceptions.ProtocolError:
            raise DownstreamReset("stream closed") from None
        if len(body) > room:
            await super()._write_whole(head, body, trailers)
            return
        try:
            conn.send_headers(sid, response_to_h2(head), end_stream=False)
            if body:
                conn.send_data(sid, body)
            if trailers:
                conn.send_headers(sid, trailers_to_h2(trailers), end_stream=True)
            else:
                conn.end_stream(sid)
        except h2.exceptions.ProtocolError:
            raise DownstreamReset("stream closed") from None
        await h2c.flush()

    async def _write_end(self, trailers: Headers | None) -> None:
        self._check_open()
        h2c = self._h2c
        try:
            if trailers:
                h2c.h2.send_headers(self.stream_id, trailers_to_h2(trailers), end_stream=True)
            else:
                h2c.h2.end_stream(self.stream_id)
        except h2.exceptions.ProtocolError:
            raise DownstreamReset("stream closed") from None
        await h2c.flush()

    def _abort(self) -> None:
        """Reset the stream towards the client (a truncated or abandoned response)."""
        self._h2c.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    # ----------------------------------------------------------- RFC 8441

    async def accept_upgrade(self, head: ResponseHead) -> tuple[_H2Tunnel, bytes]:
        """The upstream switched protocols: answer the extended CONNECT with
        200 (RFC 8441 5) and carry the tunnel in this stream's DATA frames."""
        drop = {b"connection", b"upgrade", b"sec-websocket-accept", b"content-length"}
        headers = [(k, v) for k, v in head.headers if k not in drop]
        await self.send_response_head(ResponseHead(status=200, headers=headers))
        self.info.response_code = 200
        self.response_complete = True  # the tunnel owns the stream now
        return _H2Tunnel(self), b""

    async def tunnel_receive(self) -> bytes:
        """Raw DATA for the tunnel; b"" once the client ended the stream."""
        while True:
            self._check_open()
            if self._chunks:
                data, flow = self._chunks.popleft()
                if flow:
                    self._h2c.acknowledge(self.stream_id, flow)
                if data:
                    return data
                continue
            if self.ended_by_peer:
                return b""
            if self._data_ready.is_set():
                self._data_ready = trio.Event()
            await self._data_ready.wait()


class _H2Tunnel:
    """The downstream end of a tunnel over one HTTP/2 stream (RFC 8441)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Http2Stream) -> None:
        self._stream = stream

    async def receive_some(self) -> bytes:
        return await self._stream.tunnel_receive()

    async def send_all(self, data: bytes) -> None:
        await self._stream._write_data(data)

    async def send_eof(self) -> None:
        await self._stream._write_end(None)


class _H2Downstream:
    """The state of one HTTP/2 downstream connection."""

    def __init__(self, hcm: ConnectionManager, conn: Connection, remote: str, local: str) -> None:
        self.hcm = hcm
        self.conn = conn
        self.remote = remote
        self.local = local
        h2conn = hcm.new_h2_connection()
        assert isinstance(h2conn, ServerConnection)
        self.h2: ServerConnection = h2conn
        self.writer = FrameWriter(
            self.h2,
            conn,
            DownstreamReset,
            on_bytes=hcm.stats.cx_tx_bytes_total.inc,
            guard=self.h2.guard,
        )
        self.streams: dict[int, Http2Stream] = {}
        self.closed = False
        # The reader's scopes: `_idle` has the idle deadline while no stream
        # is open; `_done` is cancelled when a draining connection (or one
        # the client sent GOAWAY on) has no stream left.
        self._idle = trio.CancelScope(deadline=trio.current_time() + hcm.idle_timeout)
        self._done = trio.CancelScope()
        self._draining = False
        self._final_goaway = False
        # The client sent GOAWAY NO_ERROR (set in event order, so streams it
        # opened before the GOAWAY, in the same read, are still served).
        self._peer_goaway = False
        # Rapid reset budget (Envoy's premature reset check): streams ended,
        # and of those the ones the client reset early, before a response.
        cfg = hcm.config
        self._premature_limit = cfg.premature_reset_total_stream_count
        self._premature_lifetime = cfg.premature_reset_min_stream_lifetime
        self._streams_ended = 0
        self._premature_resets = 0

    async def flush(self) -> None:
        """Wait until what is queued is written (body data: backpressure)."""
        await self.writer.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except h2.exceptions.ProtocolError:
            return
        self.writer.kick()

    def reset(self, stream_id: int, code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass
        self.writer.kick()

    # ----------------------------------------------------------- lifetime

    async def run(self, initial: bytes) -> None:
        async with trio.open_nursery() as writer_nursery:
            writer_nursery.start_soon(self._write)
            writer_nursery.start_soon(self._watch_drain)
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        self.writer.kick()  # our SETTINGS
                        await self._read_loop(nursery, initial)
                    finally:
                        self.closed = True
                        for s in list(self.streams.values()):
                            s.on_reset()
                        # Stream tasks see DownstreamReset and finish promptly.
                # Let the writer send what is queued (GOAWAY), briefly.
                with trio.move_on_after(1):
                    await self.writer.flush()
            except DownstreamReset:
                pass
            finally:
                writer_nursery.cancel_scope.cancel()

    async def _write(self) -> None:
        await self.writer.run()
        if self.writer.failed is not None:
            # The client is gone: stop reading too.
            self.conn.close_nowait()

    async def _watch_drain(self) -> None:
        """GOAWAY notice when draining starts, the final GOAWAY after the notice
        period; cancelled with the writer when the connection ends."""
        signal = _drain_signal(self.hcm)
        if not self.hcm.draining:
            await signal.event.wait()
        self._start_drain()
        await trio.sleep(signal.notice)
        self._send_final_goaway()

    def _start_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        self.h2.send_goaway(_MAX_STREAM_ID)
        self.writer.kick()
        self._check_done()

    def _send_final_goaway(self) -> None:
        if self._final_goaway or self.closed:
            return
        self._final_goaway = True
        self.h2.send_goaway(self.h2.highest_inbound_stream_id)
        self.writer.kick()
        self._check_done()

    def _check_done(self) -> None:
        """End the reader once no stream is left on a connection that is ending."""
        if self.streams:
            return
        if self._final_goaway or self._peer_goaway:
            self._done.cancel()

    # ----------------------------------------------------------- reading

    async def _read_loop(self, nursery: trio.Nursery, data: bytes) -> None:
        hcm = self.hcm
        stats = hcm.stats
        with self._done:
            with self._idle:
                while True:
                    if data:
                        stats.cx_rx_bytes_total.inc(len(data))
                        try:
                            events = self.h2.receive_data(data)
                        except FloodError as exc:
                            # h2 queued GOAWAY ENHANCE_YOUR_CALM.
                            stats.h2_flood[exc.stat].inc()
                            return
                        except h2.exceptions.ProtocolError:
                            # h2 queued GOAWAY with the error code.
                            stats.cx_protocol_error.inc()
                            return
                        for ev in events:
                            if not self._dispatch(nursery, ev):
                                self.writer.kick()
                                return
                        self.writer.kick()
                        flood = self.h2.guard.outbound_flood()
                        if flood is not None:
                            # Frames we were made to queue and could not
                            # write: Envoy's max_outbound_(control_)frames.
                            stats.h2_flood[flood].inc()
                            self._goaway_calm()
                            return
                        if hcm.draining and not self._draining:
                            # Draining was set without `begin_drain`.
                            _drain_signal(hcm).event.set()
                        self._check_done()
                    if self.writer.backlog > _OUTPUT_BACKLOG:
                        await self.writer.wait_backlog_below(_OUTPUT_BACKLOG)
                    try:
                        data = await self.conn.receive_some()
                    except DownstreamReset:
                        return  # reset, or closed by the writer after a failed write
                    if not data:
                        return
            if self._idle.cancelled_caught:
                stats.cx_idle_timeout.inc()
                self.h2.send_goaway(self.h2.highest_inbound_stream_id)
                self.writer.kick()

    def _goaway_calm(self) -> None:
        """Queue GOAWAY ENHANCE_YOUR_CALM; the caller ends the connection."""
        self.h2.send_goaway(
            self.h2.highest_inbound_stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        )
        self.writer.kick()

    def _count_stream_end(self, stream: Http2Stream, *, reset_by_peer: bool) -> bool:
        """Envoy's premature reset check, once per stream that ends; False
        when the connection has used up its budget (GOAWAY is queued)."""
        limit = self._premature_limit
        if not limit or stream.counted:
            return True
        stream.counted = True
        self._streams_ended += 1
        info = stream.info
        if (
            reset_by_peer
            and not info.response_code
            and trio.current_time() - info.start_monotonic <= self._premature_lifetime
        ):
            self._premature_resets += 1
        else:
            return True
        # Close once half the streams are premature: among the first `limit`
        # streams as soon as that half is certain, later among all of them.
        if 2 * self._premature_resets < max(limit, self._streams_ended):
            return True
        self.hcm.stats.rq_too_many_premature_resets.inc()
        self._goaway_calm()
        return False

    def _stream_opened(self) -> None:
        self._idle.deadline = math.inf

    def _stream_closed(self) -> None:
        if not self.streams:
            self._idle.deadline = trio.current_time() + self.hcm.idle_timeout
            self._check_done()

    def _dispatch(self, nursery: trio.Nursery, ev: h2.events.Event) -> bool:
        """Apply one h2 event; False ends the connection."""
        t = type(ev)
        if t is h2.events.RequestReceived:
            assert isinstance(ev, h2.events.RequestReceived)
            self._new_stream(nursery, ev)
        elif t is h2.events.DataReceived:
            assert isinstance(ev, h2.events.DataReceived)
            sid = ev.stream_id or 0
            s = self.streams.get(sid)
            flow = ev.flow_controlled_length or 0
            if s is None or s.closed:
                # A stream we already finished: give the window back at once.
                if flow:
                    self.h2.acknowledge_received_data(flow, sid)
            else:
                s.on_data(ev.data or b"", flow)
        elif t is h2.events.TrailersReceived:
            assert isinstance(ev, h2.events.TrailersReceived)
            s = self.streams.get(ev.stream_id or 0)
            if s is not None:
                s.on_end(list(ev.headers or []))
        elif t is h2.events.StreamEnded:
            assert isinstance(ev, h2.events.StreamEnded)
            s = self.streams.get(ev.stream_id or 0)
            if s is not None:
                s.on_end()
        elif t is h2.events.StreamReset:
            assert isinstance(ev, h2.events.StreamReset)
            s = self.streams.get(ev.stream_id or 0)
            if s is not None:
                s.on_reset()  # counted as downstream_rq_rx_reset by run_stream
                if not self._count_stream_end(s, reset_by_peer=True):
                    return False
        elif t is StreamRejected:
            assert isinstance(ev, StreamRejected)
            self._rejected(ev)
        elif t is h2.events.WindowUpdated:
            assert isinstance(ev, h2.events.WindowUpdated)
            if ev.stream_id:
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.on_window()
            else:
                for s in self.streams.values():
                    s.on_window()
        elif t is h2.events.RemoteSettingsChanged:
            for s in self.streams.values():
                s.on_window()
        elif t is h2.events.ConnectionTerminated:
            # The client's GOAWAY: with NO_ERROR its open streams finish
            # (ServerConnection keeps the connection usable), else it is over.
            self._peer_goaway = self.h2.peer_goaway
            return self._peer_goaway
        return True

    def _rejected(self, ev: StreamRejected) -> None:
        if ev.kind == "malformed":
            self.hcm.stats.rx_messaging_error.inc()
        elif ev.kind == "too_large":
            self.hcm.stats.h2_flood["header_overflow"].inc()
        s = self.streams.get(ev.stream_id)
        if s is not None:
            s.on_protocol_error(ev.reason)

    def _new_stream(self, nursery: trio.Nursery, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id or 0
        end = ev.stream_ended is not None
        try:
            head = request_from_h2(ev.headers or [])
        except Http2Error:
            self.hcm.stats.rx_messaging_error.inc()
            self.reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if self._peer_goaway:
            # RFC 9113 6.8: the client promised to open no more streams.
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = Http2Stream(self, sid, head, end_stream=end)
        self.hcm.stats.rq_http2_total.inc()
        self.streams[sid] = stream
        self._stream_opened()
        nursery.start_soon(self._run_stream, stream)

    async def _run_stream(self, stream: Http2Stream) -> None:
        sid = stream.stream_id
        try:
            await self.hcm.run_stream(stream)
        finally:
            del self.streams[sid]
            if not self.closed and not self._count_stream_end(stream, reset_by_peer=False):
                self._done.cancel()
            if not self.closed and not self.conn.closed:
                if stream.closed:
                    pass  # reset already, one way or the other
                elif not stream.response_complete:
                    stream._abort()
                elif not stream.ended_by_peer:
                    # Answered before the request ended: stop the client sending.
                    self.reset(sid, h2.errors.ErrorCodes.NO_ERROR)
                # Give back the window of request data nobody will read.
                for _data, flow in stream._chunks:
                    if flow:
                        try:
                            self.h2.acknowledge_received_data(flow, sid)
                        except h2.exceptions.ProtocolError:
                            pass
                stream._chunks.clear()
                self.writer.kick()
                self._stream_closed()


async def serve_h2(
    hcm: ConnectionManager, conn: Connection, *, remote: str, local: str, initial: bytes
) -> None:
    """Serve one HTTP/2 downstream connection until it closes.

    `initial` holds the bytes already read while sniffing the codec (they start
    with the client preface).
    """
    await _H2Downstream(hcm, conn, remote, local).run(initial)
