"""HTTP/2 downstream connections for the HTTP connection manager.

    connection task (serve_h2)
    ├─ reader loop (this task): bytes → h2 events → per-stream state
    └─ stream nursery: one task per request stream, running the same
       `ConnectionManager.run_stream` as HTTP/1.1 (filters → router)

Flow control is end to end: request DATA is acknowledged to the client only
when the stream's consumer (the router's body pump) has taken it, so a slow
upstream slows the client down, and response DATA is sent only inside the
client's window, so a slow reader slows the upstream relay. Memory per stream
is bounded by the stream window (16 MiB by default), per connection by the
connection window (24 MiB).

A stream reset by the client (RST_STREAM) wakes whatever its task waits on
with `DownstreamReset`, which resets the upstream request; a stream that ends
without a complete response is reset towards the client (the HTTP/2 way to
say "truncated"), the connection carries on. All output goes through the
connection's `FrameWriter` task; the reader loop never waits on a write.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from trioproxy.codec.http2 import (
    Http2Error,
    request_from_h2,
    response_to_h2,
    trailers_to_h2,
)
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead
from trioproxy.http.conn_manager import ActiveStream
from trioproxy.net.errors import DownstreamReset
from trioproxy.net.h2_writer import FrameWriter
from trioproxy.net.network import Connection

if TYPE_CHECKING:
    from trioproxy.http.conn_manager import ConnectionManager

__all__ = ["Http2Stream", "serve_h2"]


class Http2Stream(ActiveStream):
    """One request stream on an HTTP/2 downstream connection."""

    __slots__ = (
        "_chunks",
        "_data_ready",
        "_h2c",
        "_reset_event",
        "_window_open",
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
        self.reset_by_peer = False
        self.ended_by_peer = end_stream
        cl = head.get(b"content-length")
        self.content_length = cl
        self.has_body = not end_stream
        self._body_done = end_stream

    # ----------------------------------------------------------- reader side

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
        self._reset_event.set()
        self._data_ready.set()
        self._window_open.set()

    def on_window(self) -> None:
        self._window_open.set()

    # ----------------------------------------------------------- request body

    async def read_body(self) -> bytes | None:
        if self._body_done:
            return None
        while True:
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

    async def watch_disconnect(self) -> bool:
        await self._reset_event.wait()
        return True

    # ----------------------------------------------------------- response

    async def _write_head(self, head: ResponseHead, end_stream: bool) -> None:
        if self.reset_by_peer:
            raise DownstreamReset("client reset the stream")
        h2c = self._h2c
        h2c.h2.send_headers(self.stream_id, response_to_h2(head), end_stream=end_stream)
        await h2c.flush()

    async def _write_data(self, data: bytes) -> None:
        h2c = self._h2c
        conn = h2c.h2
        sid = self.stream_id
        view = memoryview(data)
        while view:
            if self.reset_by_peer:
                raise DownstreamReset("client reset the stream")
            try:
                window = conn.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                raise DownstreamReset("stream closed") from None
            n = min(window, conn.max_outbound_frame_size, len(view))
            if n <= 0:
                if self._window_open.is_set():
                    self._window_open = trio.Event()
                await self._window_open.wait()
                continue
            conn.send_data(sid, bytes(view[:n]))
            view = view[n:]
            await h2c.flush()

    async def _write_end(self, trailers: Headers | None) -> None:
        if self.reset_by_peer:
            raise DownstreamReset("client reset the stream")
        h2c = self._h2c
        if trailers:
            h2c.h2.send_headers(self.stream_id, trailers_to_h2(trailers), end_stream=True)
        else:
            h2c.h2.end_stream(self.stream_id)
        await h2c.flush()

    def _abort(self) -> None:
        """Reset the stream towards the client (a truncated or abandoned response)."""
        self._h2c.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)


class _H2Downstream:
    """The state of one HTTP/2 downstream connection."""

    def __init__(self, hcm: ConnectionManager, conn: Connection, remote: str, local: str) -> None:
        self.hcm = hcm
        self.conn = conn
        self.remote = remote
        self.local = local
        self.h2: h2.connection.H2Connection = hcm.new_h2_connection()
        self.writer = FrameWriter(
            self.h2, conn, DownstreamReset, on_bytes=hcm.stats.cx_tx_bytes_total.inc
        )
        self.streams: dict[int, Http2Stream] = {}
        self.closed = False

    async def flush(self) -> None:
        await self.writer.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.writer.kick()

    def reset(self, stream_id: int, code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.writer.kick()

    async def run(self, initial: bytes) -> None:
        async with trio.open_nursery() as writer_nursery:
            writer_nursery.start_soon(self._write, writer_nursery.cancel_scope)
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

    async def _write(self, scope: trio.CancelScope) -> None:
        await self.writer.run()
        if self.writer.failed is not None:
            # The client is gone: stop reading too.
            self.conn.close_nowait()

    async def _read_loop(self, nursery: trio.Nursery, data: bytes) -> None:
        hcm = self.hcm
        stats = hcm.stats
        while True:
            if data:
                stats.cx_rx_bytes_total.inc(len(data))
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    stats.cx_protocol_error.inc()
                    return
                for ev in events:
                    if not self._dispatch(nursery, ev):
                        return
                self.writer.kick()
            if hcm.draining and not self.streams:
                return
            if self.streams:
                data = await self.conn.receive_some()
            else:
                with trio.move_on_after(hcm.idle_timeout) as idle:
                    data = await self.conn.receive_some()
                if idle.cancelled_caught:
                    stats.cx_idle_timeout.inc()
                    self.h2.close_connection()
                    return
            if not data:
                return

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
            if s is None:
                # A stream we already finished: give the window back at once.
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
            else:
                s.on_data(ev.data or b"", ev.flow_controlled_length or 0)
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
            return False
        return True

    def _new_stream(self, nursery: trio.Nursery, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id or 0
        end = ev.stream_ended is not None
        try:
            head = request_from_h2(ev.headers or [])
        except Http2Error:
            self.hcm.stats.rx_messaging_error.inc()
            self.reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if self.hcm.draining:
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = Http2Stream(self, sid, head, end_stream=end)
        self.hcm.stats.rq_http2_total.inc()
        self.streams[sid] = stream
        nursery.start_soon(self._run_stream, stream)

    async def _run_stream(self, stream: Http2Stream) -> None:
        sid = stream.stream_id
        try:
            await self.hcm.run_stream(stream)
        finally:
            del self.streams[sid]
            if not self.closed and not self.conn.closed:
                if not stream.response_complete and not stream.reset_by_peer:
                    stream._abort()
                elif not stream.ended_by_peer and not stream.reset_by_peer:
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


async def serve_h2(
    hcm: ConnectionManager, conn: Connection, *, remote: str, local: str, initial: bytes
) -> None:
    """Serve one HTTP/2 downstream connection until it closes.

    `initial` holds the bytes already read while sniffing the codec (they start
    with the client preface).
    """
    await _H2Downstream(hcm, conn, remote, local).run(initial)
