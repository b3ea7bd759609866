"""Upstream HTTP/2 connection pools: multiplexed streams over few connections.

A pool (one per cluster host per worker) keeps HTTP/2 connections and lends
one `UpstreamHttp2` stream per request. A connection takes new streams while
it has room under the server's SETTINGS_MAX_CONCURRENT_STREAMS and has not
received GOAWAY; otherwise the pool opens another connection.

Each connection runs two tasks in the cluster manager's nursery: a reader
that turns frames into per-stream state and wakes the stream they belong to,
and a `FrameWriter`. The reader never waits on a write, so a peer that
stops reading while it writes cannot deadlock us. A stream waits on its own
event for its response, body data or a window update.

Flow control: response DATA is acknowledged when the stream's consumer takes
it, so a slow downstream slows the upstream; request DATA is sent only inside
the server's window.

Cancellation safety: `release(stream, reusable=False)` resets an unfinished
stream (RST_STREAM CANCEL) without a checkpoint; the connection carries on.
A cancel or failure during a new connection's TLS handshake closes its
socket in `connect_upstream` before any counter moved.

TLS: with `tls`, connections are dialled with TLS; if ALPN is offered the
upstream must negotiate h2, otherwise the connect fails (503 UF with the
ALPN mismatch as the transport failure reason).
"""

from __future__ import annotations

from collections import deque

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from trioproxy.codec.http2 import (
    Http2Error,
    Http2Settings,
    new_client_connection,
    request_to_h2,
    response_from_h2,
    trailers_to_h2,
)
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead
from trioproxy.net.errors import ConnectFailure, UpstreamProtocolError, UpstreamReset
from trioproxy.net.h2_writer import FrameWriter
from trioproxy.net.network import Connection, Network, close_stream_nowait
from trioproxy.net.pool import PoolStats
from trioproxy.net.tls import ClientTls
from trioproxy.net.upstream import UpstreamStream

__all__ = ["Http2Pool", "UpstreamHttp2"]


class UpstreamHttp2:
    """One request stream on an upstream HTTP/2 connection."""

    __slots__ = (
        "_chunks",
        "_ended",
        "_head",
        "_news",
        "_reset_code",
        "_sent_end",
        "cx",
        "stream_id",
        "trailers",
    )

    def __init__(self, cx: H2UpstreamConnection) -> None:
        self.cx = cx
        self.stream_id = 0
        self._head: ResponseHead | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._sent_end = False
        self._reset_code: int | None = None
        self._news = trio.Event()
        self.trailers: Headers = []

    # ------------------------------------------------------------ events in
    # Called by the connection's reader task; never checkpoint.

    def wake(self) -> None:
        self._news.set()

    def on_response(self, head: ResponseHead) -> None:
        if head.status >= 200:
            self._head = head
            self._news.set()

    def on_data(self, data: bytes, flow: int) -> None:
        self._chunks.append((data, flow))
        self._news.set()

    def on_end(self, trailers: Headers | None = None) -> None:
        if trailers:
            self.trailers = trailers
        self._ended = True
        self._news.set()

    def on_reset(self, code: int) -> None:
        if self._reset_code is None:
            self._reset_code = code
        self._news.set()

    async def _wait(self) -> None:
        """Wait for the reader to deliver something to this stream.

        Two tasks may wait at once (the request body pump for a window, the
        relay for the response); they share the event, so a waker wakes both
        and each rechecks its own condition.
        """
        news = self._news
        if news.is_set():
            news = self._news = trio.Event()
        await news.wait()

    def _raise_reset(self) -> None:
        code = self._reset_code
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            raise UpstreamReset("refused_stream")
        if code == _CONNECTION_FAILED:
            raise UpstreamReset(self.cx.error or "upstream connection closed")
        raise UpstreamReset(f"remote reset ({self.cx.describe(code)})")

    # ------------------------------------------------------------ request

    async def send_request_head(
        self, head: RequestHead, *, body: bool, content_length: bytes | None
    ) -> None:
        cx = self.cx
        cx.check_usable()
        sid = cx.h2.get_next_available_stream_id()
        self.stream_id = sid
        cx.streams[sid] = self
        try:
            cx.h2.send_headers(sid, request_to_h2(head), end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            raise UpstreamProtocolError(f"cannot send request headers: {exc}") from None
        if not body:
            self._sent_end = True
        await cx.writer.flush()

    async def send_data(self, data: bytes) -> None:
        cx = self.cx
        conn = cx.h2
        sid = self.stream_id
        view = memoryview(data)
        while view:
            if self._reset_code is not None:
                self._raise_reset()
            try:
                window = conn.local_flow_control_window(sid)
                n = min(window, conn.max_outbound_frame_size, len(view))
                if n > 0:
                    conn.send_data(sid, bytes(view[:n]))
            except h2.exceptions.ProtocolError:
                # The stream or the whole connection is closed (h2 says which
                # only in the message); the reader has the reason.
                raise UpstreamReset(cx.error or "stream closed by the upstream") from None
            if n <= 0:
                await self._wait()
                continue
            view = view[n:]
            await cx.writer.flush()

    async def send_end(self, trailers: Headers | None = None) -> None:
        cx = self.cx
        if self._reset_code is not None:
            self._raise_reset()
        try:
            if trailers:
                cx.h2.send_headers(self.stream_id, trailers_to_h2(trailers), end_stream=True)
            else:
                cx.h2.end_stream(self.stream_id)
        except h2.exceptions.ProtocolError:
            raise UpstreamReset(cx.error or "stream closed by the upstream") from None
        self._sent_end = True
        await cx.writer.flush()

    # ------------------------------------------------------------ response

    async def receive_response_head(self) -> ResponseHead:
        while self._head is None:
            if self._reset_code is not None:
                self._raise_reset()
            if self._ended:
                raise UpstreamProtocolError("stream ended without a response")
            await self._wait()
        return self._head

    async def receive_data(self) -> bytes | None:
        while True:
            if self._chunks:
                data, flow = self._chunks.popleft()
                if flow:
                    self.cx.acknowledge(self.stream_id, flow)
                if data:
                    return data
                continue
            if self._ended:
                return None
            if self._reset_code is not None:
                self._raise_reset()
            await self._wait()

    @property
    def ended_with_head(self) -> bool:
        """The response ended with its header block (no DATA, no trailers)."""
        return self._ended and not self._chunks and not self.trailers

    @property
    def complete(self) -> bool:
        return self._ended and self._sent_end and not self._chunks

    def reusable(self) -> bool:
        return not self.cx.closed


# A stream "reset" because its whole connection failed (not an h2 error code).
_CONNECTION_FAILED = -1


class H2UpstreamConnection:
    """One HTTP/2 connection to an upstream host, with its reader and writer tasks."""

    def __init__(self, conn: Connection, settings: Http2Settings) -> None:
        self.conn = conn
        self.h2: h2.connection.H2Connection = new_client_connection(settings)
        self.writer = FrameWriter(self.h2, conn, UpstreamReset)
        self.streams: dict[int, UpstreamHttp2] = {}
        self.goaway = False
        self.closed = False
        self.error: str | None = None
        self.lent = 0  # streams lent out and not yet released
        self.idle_since = trio.current_time()
        self._scope = trio.CancelScope()
        # Set by the server's first SETTINGS (or by the connection failing):
        # streams are only opened once its stream limit is known.
        self.ready = trio.Event()

    @staticmethod
    def describe(code: int | None) -> str:
        if code is None:
            return "no error code"
        try:
            return h2.errors.ErrorCodes(code).name
        except ValueError:
            return f"error code {code}"

    def has_room(self) -> bool:
        if self.closed or self.goaway:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        return self.lent < limit

    def check_usable(self) -> None:
        if self.closed:
            raise UpstreamReset(self.error or "upstream connection closed")
        if self.goaway:
            raise UpstreamReset("refused_stream")

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.writer.kick()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reader and the writer until the connection ends."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write)
                    task_status.started()
                    self.writer.kick()  # the preface and SETTINGS
                    await self._read()
                    nursery.cancel_scope.cancel()
        finally:
            self._fail(self.error or "upstream connection closed")
            self.conn.close_nowait()

    async def _write(self) -> None:
        await self.writer.run()
        if self.writer.failed is not None:
            self._fail(self.writer.failed)
            self._scope.cancel()

    async def _read(self) -> None:
        while True:
            try:
                data = await self.conn.receive_some()
            except UpstreamReset as exc:
                self._fail(str(exc))
                return
            if not data:
                self._fail("upstream closed the connection")
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._fail(f"HTTP/2 protocol error: {exc}")
                self.writer.kick()
                return
            for ev in events:
                self._dispatch(ev)
            self.writer.kick()

    def _dispatch(self, ev: h2.events.Event) -> None:
        t = type(ev)
        sid = getattr(ev, "stream_id", None) or 0
        s = self.streams.get(sid)
        if t is h2.events.ResponseReceived or t is h2.events.InformationalResponseReceived:
            if s is not None:
                try:
                    s.on_response(response_from_h2(ev.headers or []))  # type: ignore[attr-defined]
                except Http2Error:
                    s.on_reset(h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    self._reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        elif t is h2.events.DataReceived:
            assert isinstance(ev, h2.events.DataReceived)
            flow = ev.flow_controlled_length or 0
            if s is not None:
                s.on_data(ev.data or b"", flow)
            elif flow:
                self._ack_quietly(sid, flow)
        elif t is h2.events.TrailersReceived:
            if s is not None:
                s.on_end(list(ev.headers or []))  # type: ignore[attr-defined]
        elif t is h2.events.StreamEnded:
            if s is not None:
                s.on_end()
        elif t is h2.events.StreamReset:
            assert isinstance(ev, h2.events.StreamReset)
            if s is not None:
                s.on_reset(int(ev.error_code or 0))
        elif t is h2.events.WindowUpdated:
            if s is not None:
                s.wake()
            elif sid == 0:
                for other in self.streams.values():
                    other.wake()
        elif t is h2.events.RemoteSettingsChanged:
            self.ready.set()
            for other in self.streams.values():
                other.wake()
        elif t is h2.events.ConnectionTerminated:
            assert isinstance(ev, h2.events.ConnectionTerminated)
            self.goaway = True
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            for other_sid, other in self.streams.items():
                if other_sid > last:
                    # Never processed by the server: safe to retry elsewhere.
                    other.on_reset(h2.errors.ErrorCodes.REFUSED_STREAM)
            if ev.error_code:
                self._fail(f"GOAWAY {self.describe(int(ev.error_code))}")

    def _ack_quietly(self, sid: int, flow: int) -> None:
        try:
            self.h2.acknowledge_received_data(flow, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def _reset(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.writer.kick()

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = reason
        self.ready.set()
        for s in self.streams.values():
            if not s._ended:
                s.on_reset(_CONNECTION_FAILED)

    def close(self) -> None:
        self._fail("connection closed by the proxy")
        self._scope.cancel()

    def release(self, s: UpstreamHttp2) -> None:
        """Forget a stream; reset it first if it did not finish both ways."""
        self.lent -= 1
        if s.stream_id:
            self.streams.pop(s.stream_id, None)
            if not s.complete and s._reset_code is None and not self.closed:
                self._reset(s.stream_id, h2.errors.ErrorCodes.CANCEL)
            # Window of response data nobody will read.
            for _data, flow in s._chunks:
                if flow:
                    self._ack_quietly(s.stream_id, flow)
            s._chunks.clear()
            self.writer.kick()
        if self.lent == 0:
            self.idle_since = trio.current_time()


class Http2Pool:
    """The HTTP/2 pool for one upstream host (same interface as `Http1Pool`).

    `nursery` (set by the cluster manager before any request) runs each
    connection's reader and writer tasks.
    """

    def __init__(
        self,
        network: Network,
        host: str,
        port: int,
        *,
        stats: PoolStats,
        connect_timeout: float,
        idle_timeout: float,
        settings: Http2Settings | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self._network = network
        self._tls = tls
        self.host = host
        self.port = port
        self._stats = stats
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._settings = settings or Http2Settings()
        self._connections: list[H2UpstreamConnection] = []
        self._connect_lock = trio.Lock()
        self.nursery: trio.Nursery | None = None
        self.active = 0  # connections open
        self._dialing = 0  # connections being dialled (or waiting for SETTINGS)
        self.closed = False

    def _pick(self) -> H2UpstreamConnection | None:
        now = trio.current_time()
        for cx in list(self._connections):
            if cx.closed or (cx.goaway and cx.lent == 0):
                self._destroy(cx)
                continue
            if cx.lent == 0 and now - cx.idle_since > self._idle_timeout:
                self._destroy(cx)
                continue
            if cx.has_room():
                return cx
        return None

    async def acquire(self) -> UpstreamHttp2:
        """A stream on a connection with room, opening one if needed.

        Raises:
            ConnectFailure / ConnectTimeout: a new connection could not be made.
        """
        s = self._stats
        while True:
            cx = self._pick()
            if cx is not None:
                break
            async with self._connect_lock:
                cx = self._pick()
                if cx is not None:
                    break
                # Every connection is full (or there is none): open another
                # if the connection breakers allow, else wait as pending.
                if s.room_for_connection(self.active + self._dialing):
                    s.cx_open.set(0)
                    cx = await self._connect()
                    break
            await s.wait_pending()
        cx.lent += 1
        return UpstreamHttp2(cx)

    def has_room(self) -> bool:
        """True if an open connection can take another stream now."""
        return self._pick() is not None

    async def adopt(self, stream: trio.abc.Stream) -> UpstreamHttp2:
        """A stream on a new connection over `stream`, already dialled (and
        TLS-handshaken with ALPN h2) by the caller, e.g. an `auto` pool.

        Raises:
            ConnectFailure: the upstream sent no SETTINGS in time.
        """
        cx = await self._start(stream)
        cx.lent += 1
        return UpstreamHttp2(cx)

    async def _connect(self) -> H2UpstreamConnection:
        if self.nursery is None:
            raise RuntimeError("Http2Pool.nursery is not set (ClusterManager.run not started)")
        s = self._stats
        s.dialing += 1
        self._dialing += 1
        try:
            stream = await s.dial(
                self._network,
                self.host,
                self.port,
                timeout=self._connect_timeout,
                tls=self._tls,
                accept_alpn=("h2",),
            )
        finally:
            s.dialing -= 1
            self._dialing -= 1
            s.notify_freed()
        return await self._start(stream)

    async def _start(self, stream: trio.abc.Stream) -> H2UpstreamConnection:
        if self.nursery is None:
            close_stream_nowait(stream)
            raise RuntimeError("Http2Pool.nursery is not set (ClusterManager.run not started)")
        self._stats.cx_total.inc()
        self._stats.cx_active.inc()
        self.active += 1
        cx = H2UpstreamConnection(Connection(stream, UpstreamReset), self._settings)
        await self.nursery.start(self._run, cx)
        with trio.move_on_after(self._connect_timeout):
            await cx.ready.wait()
        if cx.closed or not cx.ready.is_set():
            cx.close()
            self._stats.cx_connect_fail.inc()
            raise ConnectFailure(
                f"no HTTP/2 SETTINGS from {self.host}:{self.port}: {cx.error or 'timeout'}"
            )
        self._connections.append(cx)
        return cx

    async def _run(
        self,
        cx: H2UpstreamConnection,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await cx.run(task_status=task_status)
        finally:
            if cx in self._connections:
                self._connections.remove(cx)
            self._stats.cx_active.dec()
            self._stats.cx_destroy.inc()
            self.active -= 1
            self._stats.notify_freed()

    def release(self, up: UpstreamStream, *, reusable: bool) -> None:
        assert isinstance(up, UpstreamHttp2)
        cx = up.cx
        cx.release(up)
        if (self.closed or cx.goaway) and cx.lent == 0:
            self._destroy(cx)
        self._stats.notify_freed()  # a stream slot is free: pending requests recheck

    def _destroy(self, cx: H2UpstreamConnection) -> None:
        if cx in self._connections:
            self._connections.remove(cx)
        cx.close()

    def close(self) -> None:
        self.closed = True
        for cx in list(self._connections):
            if cx.lent == 0:
                self._destroy(cx)

    @property
    def idle_count(self) -> int:
        return sum(1 for cx in self._connections if cx.lent == 0)
