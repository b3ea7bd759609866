"""Upstream HTTP/1.1 connection pools: one pool per (cluster, host) per worker.

A pool hands out one `UpstreamHttp1` per stream (an HTTP/1.1 connection
carries one request at a time) and takes it back with `release()`. Idle
connections are kept up to `max_idle` and for at most `idle_timeout`; before
reuse each is checked for a peer close so a request is never written into a
connection the upstream already closed (the source of Envoy's intermittent
503 UC with mismatched keep-alive timeouts).

Cancellation safety: a stream cancelled anywhere between `acquire()` and
`release()` must still call `release(conn, reusable=False)` (the router does
so in a `finally`), which closes the socket without a checkpoint, so no
socket or counter leaks. `acquire()` itself either returns a connection or
raises; a cancel during connect closes the half-made socket inside trio, and
a cancel or failure during a TLS handshake closes it in `connect_upstream`.
Counters move only after `dial()` returned a connected stream.

TLS: with `tls`, a new connection is dialled and handshaken within the one
connect timeout; if ALPN is offered, the upstream must pick http/1.1 (or
nothing).
"""

from __future__ import annotations

from collections.abc import Collection

import trio

from trioproxy.codec.http1 import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    EndOfMessage,
    Http1ClientCodec,
    Http1Error,
)
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead
from trioproxy.config import CircuitBreakers
from trioproxy.net.errors import PoolOverflow, UpstreamProtocolError, UpstreamReset
from trioproxy.net.network import Connection, Network
from trioproxy.net.tls import ClientTls, connect_upstream
from trioproxy.net.upstream import UpstreamStream
from trioproxy.observe.stats import Counter, Gauge

__all__ = ["Http1Pool", "PoolStats", "UpstreamHttp1"]


class PoolStats:
    """Cluster-level connection stats and breaker state shared by a cluster's pools.

    With `breakers` set, HTTP/1.1 pools enforce Envoy's `max_connections`
    (cluster-wide, connections open or being dialled), the per-host
    `max_connections_per_host`, and `max_pending_requests`: a request that
    finds no connection and no room for one waits (pending) until a
    connection is freed, or overflows at once when the pending queue is full.
    """

    __slots__ = (
        "_freed",
        "breakers",
        "cx_active",
        "cx_connect_fail",
        "cx_connect_timeout",
        "cx_destroy",
        "cx_open",
        "cx_overflow",
        "cx_total",
        "dialing",
        "pending",
        "rq_pending_open",
        "rq_pending_overflow",
    )

    def __init__(
        self,
        *,
        cx_total: Counter,
        cx_active: Gauge,
        cx_connect_fail: Counter,
        cx_connect_timeout: Counter,
        cx_destroy: Counter,
        breakers: CircuitBreakers | None = None,
        cx_overflow: Counter | None = None,
        rq_pending_overflow: Counter | None = None,
        cx_open: Gauge | None = None,
        rq_pending_open: Gauge | None = None,
    ) -> None:
        self.cx_total = cx_total
        self.cx_active = cx_active
        self.cx_connect_fail = cx_connect_fail
        self.cx_connect_timeout = cx_connect_timeout
        self.cx_destroy = cx_destroy
        self.breakers = breakers
        self.cx_overflow = cx_overflow or Counter("unused.cx_overflow")
        self.rq_pending_overflow = rq_pending_overflow or Counter("unused.rq_pending_overflow")
        self.cx_open = cx_open or Gauge("unused.cx_open")
        self.rq_pending_open = rq_pending_open or Gauge("unused.rq_pending_open")
        self.dialing = 0  # connections being dialled (reserved, not yet open)
        self.pending = 0  # requests waiting for a connection
        self._freed = trio.Event()

    def notify_freed(self) -> None:
        """A connection was returned or closed: waiting requests recheck."""
        if self.pending:
            freed, self._freed = self._freed, trio.Event()
            freed.set()

    async def wait_freed(self) -> None:
        await self._freed.wait()

    def room_for_connection(self, host_open: int) -> bool:
        """The connection breakers let one more connection open: cluster-wide
        `max_connections` (open or being dialled) and, with `host_open` the
        host's own count, `max_connections_per_host`."""
        b = self.breakers
        if b is None:
            return True
        per_host = b.max_connections_per_host
        return self.cx_active.value + self.dialing < b.max_connections and (
            per_host is None or host_open < per_host
        )

    async def wait_pending(self) -> None:
        """No connection is free and there is no room for one: wait as a
        pending request until a connection is freed, or overflow at once
        (`PoolOverflow`) when `max_pending_requests` are already waiting.
        A cancel while waiting gives the pending slot back."""
        b = self.breakers
        assert b is not None
        self.cx_overflow.inc()
        self.cx_open.set(1)
        if self.pending >= b.max_pending_requests:
            self.rq_pending_overflow.inc()
            self.rq_pending_open.set(1)
            raise PoolOverflow("pending requests overflow")
        self.pending += 1
        try:
            await self.wait_freed()
        finally:
            self.pending -= 1
            if self.pending < b.max_pending_requests:
                self.rq_pending_open.set(0)

    async def dial(
        self,
        network: Network,
        host: str,
        port: int,
        *,
        timeout: float,
        tls: ClientTls | None,
        accept_alpn: Collection[str | None] | None = None,
    ) -> trio.abc.Stream:
        """Connect (and, for TLS, handshake) to an upstream host, counting a
        failure in `upstream_cx_connect_fail` (and `_timeout`). Every way the
        cluster opens connections (both pools, the TCP proxy) dials here.

        Raises:
            ConnectFailure / ConnectTimeout: the connection could not be made.
        """
        try:
            return await connect_upstream(
                network, host, port, timeout=timeout, tls=tls, accept_alpn=accept_alpn
            )
        except Exception as exc:
            self.cx_connect_fail.inc()
            if getattr(exc, "reason", "") == "connection_timeout":
                self.cx_connect_timeout.inc()
            raise


class UpstreamHttp1:
    """One HTTP/1.1 connection to an upstream host, lent for one stream."""

    __slots__ = ("_stashed", "_writing", "codec", "conn", "idle_since", "trailers")

    def __init__(self, conn: Connection, parser: str = "h11") -> None:
        self.conn = conn
        self.codec = Http1ClientCodec(parser=parser)
        self.idle_since = 0.0
        self.trailers: Headers = []
        # True while a write is in progress. A write interrupted by a cancel
        # leaves it True: the codec already counted those bytes as sent, so
        # the connection's framing is unknown and it must never be reused.
        self._writing = False
        # An event (or error) take_buffered met and left for _next_event.
        self._stashed: object = None

    async def _write(self, data: bytes) -> None:
        self._writing = True
        await self.conn.send_all(data)
        self._writing = False

    async def send_request_head(
        self, head: RequestHead, *, body: bool, content_length: bytes | None
    ) -> None:
        try:
            data = self.codec.send_request_head(head, body=body, content_length=content_length)
        except Http1Error as exc:
            raise UpstreamProtocolError(str(exc)) from None
        await self._write(data)

    async def send_data(self, data: bytes) -> None:
        await self._write(self.codec.send_data(data))

    async def send_end(self, trailers: Headers | None = None) -> None:
        await self._write(self.codec.send_end(trailers))

    def take_buffered(self) -> tuple[list[bytes], bool]:
        """The body chunks the codec holds now, without I/O, and whether the
        end of message was among them (trailers in `self.trailers`). Anything
        else it meets (need more data, a close, an error) is left for the
        next `receive_data`."""
        chunks: list[bytes] = []
        while True:
            try:
                ev = self.codec.next_event()
            except Http1Error as exc:
                self._stashed = UpstreamProtocolError(str(exc))
                return chunks, False
            if type(ev) is bytes:
                chunks.append(ev)
                continue
            if type(ev) is EndOfMessage:
                self.trailers = ev.trailers
                return chunks, True
            if ev is not NEED_DATA:
                self._stashed = ev
            return chunks, False

    async def _next_event(self) -> object:
        stashed = self._stashed
        if stashed is not None:
            self._stashed = None
            if isinstance(stashed, Exception):
                raise stashed
            if stashed is CLOSED or stashed is PAUSED:
                raise UpstreamReset("upstream closed the connection")
            return stashed
        codec = self.codec
        while True:
            try:
                ev = NEED_DATA if codec.must_read() else codec.next_event()
            except Http1Error as exc:
                raise UpstreamProtocolError(str(exc)) from None
            if ev is NEED_DATA:
                data = await self.conn.receive_some()
                try:
                    self.codec.receive_data(data)
                except Http1Error as exc:
                    raise UpstreamProtocolError(str(exc)) from None
                continue
            if ev is CLOSED or ev is PAUSED:
                raise UpstreamReset("upstream closed the connection")
            return ev

    async def receive_response_head(self) -> ResponseHead:
        """The final response head; 1xx informational responses are skipped."""
        while True:
            ev = await self._next_event()
            if isinstance(ev, ResponseHead):
                if 100 <= ev.status < 200 and ev.status != 101:
                    continue
                return ev
            raise UpstreamProtocolError(f"expected a response head, got {ev!r}")

    async def receive_data(self) -> bytes | None:
        """The next body chunk, or None at the end (trailers in `self.trailers`)."""
        ev = await self._next_event()
        if type(ev) is bytes:
            return ev
        if type(ev) is EndOfMessage:
            self.trailers = ev.trailers
            return None
        raise UpstreamProtocolError(f"unexpected event {ev!r}")

    def reusable(self) -> bool:
        # Bytes past the end of the response (read with it) are no answer to
        # anything: reused, the connection would hand them to the next request
        # as its response. Unread bytes that arrive later are caught by
        # `peer_closed()` before reuse.
        return (
            not self.conn.closed
            and not self._writing
            and self.codec.keep_alive
            and not self.codec.trailing_data
        )


class Http1Pool:
    """The HTTP/1.1 pool for one upstream host.

    Args:
        network: the network door.
        host, port: the upstream address.
        connect_timeout: the connect phase's cancel scope (Envoy: 5 s).
        idle_timeout: drop idle connections older than this (Envoy: 1 h).
        max_idle: idle connections kept; more are closed on release.
        http1_parser: who reads response heads (`Http1ClientCodec`'s `parser`).
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
        max_idle: int,
        tls: ClientTls | None = None,
        accept_alpn: tuple[str | None, ...] = (None, "http/1.1"),
        http1_parser: str = "h11",
    ) -> None:
        self._network = network
        self._parser = http1_parser
        self._tls = tls
        self._accept_alpn = accept_alpn
        self.host = host
        self.port = port
        self._stats = stats
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._idle: list[UpstreamHttp1] = []
        self.active = 0  # connections open (idle or lent) from this pool
        self._dialing = 0  # connections of this pool being dialled
        self.closed = False

    async def acquire(self) -> UpstreamHttp1:
        """A ready connection: an idle one that is still open, or a new one.

        Raises:
            ConnectFailure / ConnectTimeout: a new connection could not be made.
        """
        s = self._stats
        while True:
            up = self.pop_idle()
            if up is not None:
                return up
            if s.breakers is None:
                return self.adopt(await self.dial())
            if s.room_for_connection(self.active + self._dialing):
                break
            await s.wait_pending()
        s.cx_open.set(0)
        s.dialing += 1
        self._dialing += 1
        try:
            stream = await self.dial()
        finally:
            s.dialing -= 1
            self._dialing -= 1
            s.notify_freed()  # only matters if the dial failed: its slot is free
        return self.adopt(stream)

    def pop_idle(self) -> UpstreamHttp1 | None:
        """An idle connection that is still usable, or None."""
        now = trio.current_time()
        while self._idle:
            up = self._idle.pop()
            if now - up.idle_since > self._idle_timeout or up.conn.peer_closed():
                self._destroy(up)
                continue
            return up
        return None

    async def dial(self) -> trio.abc.Stream:
        """A new connected (and, for TLS, handshaken) stream, not yet counted.

        Raises:
            ConnectFailure / ConnectTimeout: counted in `upstream_cx_connect_fail`.
        """
        return await self._stats.dial(
            self._network,
            self.host,
            self.port,
            timeout=self._connect_timeout,
            tls=self._tls,
            accept_alpn=self._accept_alpn,
        )

    def adopt(self, stream: trio.abc.Stream) -> UpstreamHttp1:
        """Make a dialled stream one of this pool's connections (no checkpoint)."""
        self._stats.cx_total.inc()
        self._stats.cx_active.inc()
        self.active += 1
        return UpstreamHttp1(Connection(stream, UpstreamReset), self._parser)

    def release(self, up: UpstreamStream, *, reusable: bool) -> None:
        """Return a connection; it is kept only if its exchange finished cleanly."""
        assert isinstance(up, UpstreamHttp1)
        if (
            reusable
            and not self.closed
            and up.reusable()
            and len(self._idle) < self._max_idle
            and up.codec.start_next_cycle()
        ):
            up.idle_since = trio.current_time()
            up.trailers = []
            self._idle.append(up)
            self._stats.notify_freed()
            return
        self._destroy(up)
        self._stats.notify_freed()

    def _destroy(self, up: UpstreamHttp1) -> None:
        if not up.conn.closed:
            up.conn.close_nowait()
            self._stats.cx_active.dec()
            self._stats.cx_destroy.inc()
            self.active -= 1

    def close(self) -> None:
        """Close every idle connection; lent ones close when released."""
        self.closed = True
        while self._idle:
            self._destroy(self._idle.pop())

    @property
    def idle_count(self) -> int:
        return len(self._idle)
