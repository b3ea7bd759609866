"""The HTTP connection manager (Envoy's HCM) for HTTP/1.1 downstreams.

One task per downstream connection runs `serve_connection`: a loop of
request → filter chain → router → response, one stream at a time, with no
task spawned per request unless the request has a body to stream upstream
while the response streams back (the router's body pump).

Timeouts, each one cancel scope owned by this task:
- connection idle (Envoy `idle_timeout`, 1 h): waiting for the first byte of
  the next request;
- request headers (10 s; Envoy has it off, see docs/decisions.md): from the
  first byte of a request until its head is complete, answered with 408;
- stream idle (Envoy `stream_idle_timeout`, 5 min): no body byte moved in
  either direction; pushed forward on activity, never polled.

Malformed requests get their status (400, 413, 431, 426) with
`connection: close` and the connection is closed; nothing reaches an upstream.
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes

import attrs
import h2.connection
import trio

from trioproxy.codec.grpc import http_to_grpc_status, is_grpc
from trioproxy.codec.http1 import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    REASONS,
    EndOfMessage,
    Http1Error,
    Http1ServerCodec,
    strip_hop_by_hop,
)
from trioproxy.codec.http2 import PREFACE, Http2Settings, new_server_connection
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead, StreamInfo, get_header
from trioproxy.config import HttpConnectionManager, RouteConfig
from trioproxy.filters.base import HTTP_FILTERS, FilterStatus, HttpFilter
from trioproxy.http.internal import internal_client
from trioproxy.http.route_table import RouteTable, RuntimeFractions
from trioproxy.http.upgrade import ByteChannel
from trioproxy.net.errors import DownstreamProtocolError, DownstreamReset
from trioproxy.net.network import Connection
from trioproxy.net.overload import INACTIVE, OverloadState
from trioproxy.observe.stats import Counter, StatsStore

if TYPE_CHECKING:
    from trioproxy.http.router import Router
    from trioproxy.observe.tracing.tracer import ActiveSpan, Tracer

__all__ = ["ActiveStream", "ConnectionManager", "reason_phrase"]


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, b"")


def _requested_upgrade(headers: Headers) -> bytes | None:
    """The `Upgrade` value if the request asks for one (`Connection: upgrade`)."""
    upgrade: bytes | None = None
    asked = False
    for k, v in headers:
        if k == b"upgrade":
            upgrade = v
        elif k == b"connection" and b"upgrade" in v.lower():
            asked = any(t.strip().lower() == b"upgrade" for t in v.split(b","))
    return upgrade if asked and upgrade else None


def _uuid4() -> bytes:
    """A random (version 4) UUID as the 36 bytes of its canonical text: what
    `str(uuid.uuid4()).encode()` gives, at a third of its cost (x-request-id)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex().encode()
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


class _DateCache:
    """The `date` header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_DATE = _DateCache()


class HcmStats:
    """`http.<stat_prefix>.*` handles, built once per connection manager."""

    def __init__(self, stats: StatsStore, prefix: str) -> None:
        p = f"http.{prefix}."
        c = stats.counter
        self.cx_total = c(p + "downstream_cx_total")
        self.cx_http1_total = c(p + "downstream_cx_http1_total")
        self.cx_active = stats.gauge(p + "downstream_cx_active")
        self.cx_http1_active = stats.gauge(p + "downstream_cx_http1_active")
        self.cx_http2_total = c(p + "downstream_cx_http2_total")
        self.cx_http2_active = stats.gauge(p + "downstream_cx_http2_active")
        self.rq_http2_total = c(p + "downstream_rq_http2_total")
        self.rx_messaging_error = c(p + "rx_messaging_error")
        self.cx_upgrades_total = c(p + "downstream_cx_upgrades_total")
        self.cx_upgrades_active = stats.gauge(p + "downstream_cx_upgrades_active")
        self.cx_destroy = c(p + "downstream_cx_destroy")
        self.cx_protocol_error = c(p + "downstream_cx_protocol_error")
        self.cx_idle_timeout = c(p + "downstream_cx_idle_timeout")
        self.cx_rx_bytes_total = c(p + "downstream_cx_rx_bytes_total")
        self.cx_tx_bytes_total = c(p + "downstream_cx_tx_bytes_total")
        self.rq_total = c(p + "downstream_rq_total")
        self.rq_http1_total = c(p + "downstream_rq_http1_total")
        self.rq_active = stats.gauge(p + "downstream_rq_active")
        self.rq_completed = c(p + "downstream_rq_completed")
        self.rq_header_timeout = c(p + "downstream_rq_header_timeout")
        self.rq_idle_timeout = c(p + "downstream_rq_idle_timeout")
        self.rq_rx_reset = c(p + "downstream_rq_rx_reset")
        self.rq_overload_close = c(p + "downstream_rq_overload_close")
        self.rq_time = stats.histogram(p + "downstream_rq_time")
        self.rq_class: dict[int, Counter] = {
            k: c(f"{p}downstream_rq_{k}xx") for k in (1, 2, 3, 4, 5)
        }
        self.no_route = c(p + "no_route")
        self.no_cluster = c(p + "no_cluster")
        self.rq_redirect = c(p + "rq_redirect")
        self.rq_direct_response = c(p + "rq_direct_response")
        # Rapid reset (CVE-2023-44487): connections closed for it.
        self.rq_too_many_premature_resets = c(p + "downstream_rq_too_many_premature_resets")
        # Envoy roots the downstream HTTP/2 codec's flood stats at `http2.`.
        self.h2_flood: dict[str, Counter] = {
            k: c("http2." + k)
            for k in (
                "outbound_flood",
                "outbound_control_flood",
                "inbound_empty_frames_flood",
                "inbound_priority_frames_flood",
                "inbound_window_update_frames_flood",
                "header_overflow",
            )
        }


class ActiveStream:
    """One request/response exchange, as filters and the router see it.

    The protocol-neutral part: stream info, the response-side filter hooks,
    the `server` header, local replies and the idle-timeout touch. Each
    downstream protocol supplies the I/O: `Http1Stream` here, `Http2Stream`
    in `trioproxy.http.h2_conn_manager`.
    """

    __slots__ = (
        "_body_done",
        "_filters",
        "_hcm",
        "close_connection",
        "content_length",
        "has_body",
        "head",
        "idle_scope",
        "info",
        "request_trailers",
        "response_complete",
        "response_length",
        "response_started",
        "response_trailers",
        "span",
        "upgrade",
    )

    def __init__(
        self, hcm: ConnectionManager, head: RequestHead, *, protocol: str, remote: str, local: str
    ) -> None:
        self._hcm = hcm
        self.head = head
        info = StreamInfo(
            start_time=time.time(),
            start_monotonic=trio.current_time(),
            protocol=protocol,
            downstream_remote_address=remote,
            downstream_local_address=local,
        )
        info.request = head
        self.info = info
        self.content_length: bytes | None = None
        self.has_body = False
        self._body_done = True
        self.request_trailers: Headers = []
        self.response_started = False
        self.response_complete = False
        self.response_length: int | None = None  # the response's content-length
        self.response_trailers: Headers = []
        # The `Upgrade` the client asked for (e.g. b"websocket"), lower case.
        self.upgrade: bytes | None = None
        # Set when the exchange was abandoned half way: HTTP/1.1 closes the
        # connection, HTTP/2 resets the stream.
        self.close_connection = False
        self.idle_scope: trio.CancelScope | None = None
        self._filters: tuple[HttpFilter, ...] = ()
        # The server span when the HCM traces (the router adds client spans).
        self.span: ActiveSpan | None = None

    @property
    def hcm_stats(self) -> HcmStats:
        return self._hcm.stats

    def raise_if_reset(self) -> None:
        """Raise `DownstreamReset` if the client already reset the stream
        (HTTP/2; an HTTP/1.1 stream never is)."""

    def touch(self) -> None:
        """Push the stream idle timeout forward (activity in either direction)."""
        self._touch()

    def _touch(self) -> None:
        scope = self.idle_scope
        if scope is not None:
            scope.deadline = trio.current_time() + self._hcm.stream_idle_timeout

    @property
    def body_done(self) -> bool:
        return self._body_done

    # ------------------------------------------------------------- protocol I/O

    async def read_body(self) -> bytes | None:
        """The next request body chunk, or None at its end.

        Raises:
            DownstreamReset: the client went away mid-body.
            DownstreamProtocolError: the body's framing is invalid.
        """
        raise NotImplementedError

    def closed_by_client(self) -> bool:
        """True once the client reset the stream (HTTP/2; never on HTTP/1.1)."""
        return False

    def cancel_on_reset(self, scope: trio.CancelScope) -> bool:
        """Have the client resetting the stream cancel `scope` (at once if it
        already did); False if this protocol cannot tell without reading
        (HTTP/1.1: the router watches the socket with `watch_disconnect`).
        """
        return False

    async def watch_disconnect(self) -> bool:
        """Wait, once the request is read, for the client to leave; True if it did.

        The router runs this beside the exchange so that a client that goes
        away resets the upstream request, as in Envoy.
        """
        raise NotImplementedError

    async def _write_head(self, head: ResponseHead, end_stream: bool) -> None:
        raise NotImplementedError

    async def accept_upgrade(self, head: ResponseHead) -> tuple[ByteChannel, bytes]:
        """Send the upstream's 101 (HTTP/2: 200) and hand over the downstream
        end of the tunnel with the bytes already read past the request."""
        raise NotImplementedError

    async def _write_data(self, data: bytes) -> None:
        raise NotImplementedError

    async def _write_end(self, trailers: Headers | None) -> None:
        raise NotImplementedError

    async def _write_whole(self, head: ResponseHead, body: bytes, trailers: Headers | None) -> None:
        """Head, body and end; codecs that can batch them override this."""
        await self._write_head(head, False)
        if body:
            await self._write_data(body)
        await self._write_end(trailers)

    # ------------------------------------------------------------- response

    async def send_response_head(self, head: ResponseHead, *, end_stream: bool = False) -> None:
        """Send the response head (after running the filters' response hooks)."""
        for f in reversed(self._filters):
            await f.on_response_headers(self, head)
        self._start_response(head, end_stream)
        await self._write_head(head, end_stream)
        if not end_stream:
            # (A complete response needs no push: the stream ends now.)
            self._touch()

    async def send_whole_response(
        self, head: ResponseHead, body: bytes, trailers: Headers | None = None
    ) -> None:
        """`send_response_head(head)`, `send_data(body)` and `send_end(trailers)`
        in one go: one socket write on HTTP/1.1 (the router's path when the
        upstream's whole response is already buffered)."""
        for f in reversed(self._filters):
            await f.on_response_headers(self, head)
        self._start_response(head, True)
        self.info.bytes_sent += len(body)
        if trailers:
            self.response_trailers = trailers
            self.info.response_trailers = trailers  # %TRAILER(X)% in access logs
        await self._write_whole(head, body, trailers)
        # No idle-timeout push: the response is complete and the stream ends
        # without waiting again (a deadline move costs a third of a scope).

    def _start_response(self, head: ResponseHead, end_stream: bool) -> None:
        info = self.info
        info.response = head
        info.response_code = head.status
        headers = [(k, v) for k, v in head.headers if k != b"server"]
        headers.append((b"server", self._hcm.server_name))
        head.headers = headers
        self.response_started = True
        cl = head.get(b"content-length")
        if cl is not None and cl.isdigit():
            self.response_length = int(cl)
        # Complete as soon as the last bytes are handed over: the client may
        # read them and close before this task runs again.
        self.response_complete = end_stream

    @property
    def response_body_sent(self) -> bool:
        """True once every response byte was handed to the downstream socket
        (the end of message may still be pending)."""
        if self.response_complete:
            return True
        n = self.response_length
        return n is not None and self.info.bytes_sent >= n

    async def send_data(self, data: bytes) -> None:
        if not data:
            return
        self.info.bytes_sent += len(data)
        await self._write_data(data)
        self._touch()

    async def send_end(self, trailers: Headers | None = None) -> None:
        self.response_complete = True
        if trailers:
            self.response_trailers = trailers
            self.info.response_trailers = trailers  # %TRAILER(X)% in access logs
        await self._write_end(trailers)

    async def local_reply(
        self,
        status: int,
        body: bytes = b"",
        *,
        flag: str | None = None,
        details: str = "",
        headers: Sequence[tuple[bytes, bytes]] = (),
        content_type: bytes = b"text/plain",
        grpc_status: int | None = None,
    ) -> None:
        """Answer the request from the proxy itself (Envoy's local reply).

        A gRPC request gets a trailers-only response instead: HTTP 200 with
        `grpc-status` (from `grpc_status`, else mapped from `status` as Envoy
        does) and `grpc-message` (the body) in one header block that ends the
        stream. If a response has already started, the only honest thing
        left is to abandon the stream so the client sees a truncated response.
        """
        if flag:
            self.info.add_flag(flag)
        if details:
            self.info.response_code_details = details
        if self.response_started:
            self.close_connection = True
            raise DownstreamReset("local reply after the response started")
        if is_grpc(self.head):
            await self._grpc_local_reply(status, body, headers, grpc_status)
            return
        h: Headers = []
        if body:
            h.append((b"content-length", str(len(body)).encode()))
            h.append((b"content-type", content_type))
        else:
            h.append((b"content-length", b"0"))
        h.append((b"date", _DATE.get()))
        h.extend(headers)
        if not self._body_done:
            # The request body was not read; the connection cannot be reused.
            self.close_connection = True
        resp = ResponseHead(status=status, headers=h, reason=reason_phrase(status))
        if self.head.method == b"HEAD" or not body:
            await self.send_response_head(resp, end_stream=True)
        else:
            await self.send_response_head(resp)
            self.info.bytes_sent += len(body)
            await self._write_data(body)
            await self.send_end()

    async def _grpc_local_reply(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        grpc_status: int | None,
    ) -> None:
        code = http_to_grpc_status(status) if grpc_status is None else grpc_status
        h: Headers = [
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % code),
        ]
        if body:
            h.append((b"grpc-message", quote_from_bytes(body, safe=b" ").encode()))
        if not self._body_done:
            self.close_connection = True
        h.extend(headers)
        if self.info.protocol != "HTTP/2":
            h.append((b"content-length", b"0"))
        await self.send_response_head(ResponseHead(status=200, headers=h), end_stream=True)


class Http1Stream(ActiveStream):
    """A request on an HTTP/1.1 downstream connection (one at a time)."""

    __slots__ = ("_codec", "_conn")

    def __init__(
        self,
        hcm: ConnectionManager,
        conn: Connection,
        codec: Http1ServerCodec,
        head: RequestHead,
        *,
        remote: str,
        local: str,
    ) -> None:
        super().__init__(hcm, head, protocol="HTTP/1.1", remote=remote, local=local)
        self._conn = conn
        self._codec = codec
        cl = head.get(b"content-length")
        self.content_length = cl
        self.has_body = (cl is not None and cl != b"0") or head.get(
            b"transfer-encoding"
        ) is not None
        self._body_done = not self.has_body
        if not self.has_body:
            # h11 still yields the (empty) end of message: consume it now.
            codec.next_event()
            self.info.last_downstream_rx_monotonic = self.info.start_monotonic

    async def read_body(self) -> bytes | None:
        if self._body_done:
            return None
        codec = self._codec
        if codec.waiting_for_100_continue:
            # Envoy answers `Expect: 100-continue` itself and does not forward it.
            await self._send(codec.send_100_continue())
        while True:
            try:
                ev = codec.next_event()
            except Http1Error as exc:
                raise DownstreamProtocolError(str(exc)) from None
            if type(ev) is bytes:
                self.info.bytes_received += len(ev)
                self._touch()
                return ev
            if type(ev) is EndOfMessage:
                self.request_trailers = ev.trailers
                self._body_done = True
                self.info.last_downstream_rx_monotonic = trio.current_time()
                return None
            if ev is NEED_DATA:
                data = await self._conn.receive_some()
                self._hcm.stats.cx_rx_bytes_total.inc(len(data))
                try:
                    codec.receive_data(data)
                except Http1Error as exc:
                    raise DownstreamProtocolError(str(exc)) from None
                continue
            if ev is CLOSED or ev is PAUSED:
                raise DownstreamReset("client closed mid-body")
            raise DownstreamProtocolError(f"unexpected event {ev!r}")  # pragma: no cover

    async def watch_disconnect(self) -> bool:
        """True if the downstream closed (or reset) while the response was
        pending, False if it sent more bytes instead (a pipelined request,
        kept in the codec's buffer for the next cycle). Cancel-safe: trio's
        receive loses nothing when cancelled.
        """
        try:
            data = await self._conn.receive_some()
        except DownstreamReset:
            return True
        if not data:
            return True
        self._hcm.stats.cx_rx_bytes_total.inc(len(data))
        try:
            self._codec.receive_data(data)
        except Http1Error:
            return True
        return False

    async def _send(self, data: bytes) -> None:
        if data:
            self._hcm.stats.cx_tx_bytes_total.inc(len(data))
            await self._conn.send_all(data)

    async def _write_head(self, head: ResponseHead, end_stream: bool) -> None:
        data = self._encode_head(head)
        if end_stream:
            data += self._codec.send_end()
        await self._send(data)

    async def _write_whole(self, head: ResponseHead, body: bytes, trailers: Headers | None) -> None:
        data = self._encode_head(head)
        if body:
            data += self._codec.send_data(body)
        await self._send(data + self._codec.send_end(trailers))

    def _encode_head(self, head: ResponseHead) -> bytes:
        headers = strip_hop_by_hop(head.headers)
        hcm = self._hcm
        if self.close_connection or hcm.draining or hcm.overload.disable_keepalive:
            self.close_connection = True
            headers.append((b"connection", b"close"))
        head.headers = headers
        try:
            data = self._codec.send_response_head(head)
        except Http1Error:
            # e.g. a framing header the downstream cannot be sent: our bug or the
            # upstream's; the connection cannot continue.
            self.close_connection = True
            raise DownstreamReset("response head could not be encoded") from None
        return data

    async def _write_data(self, data: bytes) -> None:
        await self._send(self._codec.send_data(data))

    async def accept_upgrade(self, head: ResponseHead) -> tuple[ByteChannel, bytes]:
        info = self.info
        info.response = head
        info.response_code = head.status
        headers = [(k, v) for k, v in head.headers if k != b"server"]
        headers.append((b"server", self._hcm.server_name))
        self.response_started = True
        try:
            data = self._codec.send_switching_protocols(headers)
        except Http1Error:
            self.close_connection = True
            raise DownstreamReset("101 could not be encoded") from None
        await self._send(data)
        self.response_complete = True
        self.close_connection = True  # the connection now belongs to the tunnel
        return self._conn, self._codec.trailing_data

    async def _write_end(self, trailers: Headers | None) -> None:
        await self._send(self._codec.send_end(trailers))


class ConnectionManager:
    """The runtime of one `config.HttpConnectionManager` on one listener."""

    def __init__(
        self,
        config: HttpConnectionManager,
        *,
        router: Router,
        stats: StatsStore,
        access_loggers: Sequence[object] = (),
        scheme: bytes = b"http",
        runtime: RuntimeFractions | None = None,
        overload: OverloadState = INACTIVE,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self.overload = overload
        self.tracer = tracer
        self.router = router
        self._runtime = runtime
        self.route_table = RouteTable(config.route_config, runtime)
        self.stats = HcmStats(stats, config.stat_prefix)
        self.access_loggers = tuple(access_loggers)
        self.server_name = config.server_name.encode()
        self.scheme = scheme
        self.stream_idle_timeout = config.stream_idle_timeout or math.inf
        self.idle_timeout = config.idle_timeout or math.inf
        self.headers_timeout = config.request_headers_timeout or math.inf
        self.draining = False
        # Cancel scopes of HTTP/1.1 connections idle between requests: a
        # drain cancels them (or, with an idle grace, brings them forward).
        self._idle_waits: set[trio.CancelScope] = set()
        # Once draining: until when an idle HTTP/1.1 connection may still
        # wait for a request (the end of the drain's idle grace).
        self._drain_idle_until = math.inf
        self.h2_settings = Http2Settings(
            max_concurrent_streams=config.max_concurrent_streams,
            initial_stream_window_size=config.initial_stream_window_size,
            initial_connection_window_size=config.initial_connection_window_size,
            max_header_list_size=config.max_request_headers_kb * 1024,
            max_headers_count=config.max_headers_count,
            enable_connect_protocol=config.allow_connect,
            max_outbound_frames=config.max_outbound_frames,
            max_outbound_control_frames=config.max_outbound_control_frames,
            max_consecutive_inbound_frames_with_empty_payload=(
                config.max_consecutive_inbound_frames_with_empty_payload
            ),
            max_inbound_priority_frames_per_stream=config.max_inbound_priority_frames_per_stream,
            max_inbound_window_update_frames_per_data_frame_sent=(
                config.max_inbound_window_update_frames_per_data_frame_sent
            ),
        )
        self._filter_factories = tuple((HTTP_FILTERS[type(f)], f) for f in config.http_filters)

    def swap_routes(self, route_config: RouteConfig) -> None:
        """Hot reload: new requests match `route_config` from now on. One
        assignment, no checkpoint; a request already routed keeps its route
        (the router reads `route_table` once per request)."""
        self.route_table = RouteTable(route_config, self._runtime)
        self.config = attrs.evolve(self.config, route_config=route_config)

    def drain(self, *, idle_grace: float = 0.0) -> None:
        """Start a graceful drain (no checkpoint): HTTP/1.1 connections idle
        between requests close now, busy ones send `connection: close` with
        their current response; HTTP/2 connections send GOAWAY and close
        once their streams finish.

        Args:
            idle_grace: keep idle HTTP/1.1 connections open this long (s),
                answering a request that arrives with `connection: close`.
                Closing at once races a request already on the wire (reset);
                a takeover, where a successor serves the reconnect, waits.
        """
        from trioproxy.http.h2_conn_manager import begin_drain

        begin_drain(self)  # sets `draining`
        deadline = trio.current_time() + idle_grace
        # Also for connections that go idle later: one whose response went
        # out without `connection: close` just before the drain gets its next
        # request answered (and told to close) within the grace, not reset.
        self._drain_idle_until = min(self._drain_idle_until, deadline)
        for scope in list(self._idle_waits):
            if idle_grace > 0:
                scope.deadline = min(scope.deadline, deadline)
            else:
                scope.cancel()

    # ------------------------------------------------------------------ connection

    async def serve_connection(
        self, stream: trio.abc.Stream, *, remote: str, local: str, alpn: str | None = None
    ) -> None:
        """Serve one downstream connection until it closes.

        The codec is the config's `codec`; with `auto` (the default) HTTP/2 is
        chosen by ALPN `h2` on TLS, or by the client preface on cleartext
        (h2c with prior knowledge), and HTTP/1.1 otherwise.
        """
        stats = self.stats
        stats.cx_total.inc()
        stats.cx_active.inc()
        conn = Connection(stream, DownstreamReset)
        try:
            initial = b""
            codec = self.config.codec
            if codec == "auto":
                if alpn == "h2":
                    codec = "http2"
                elif alpn is None:
                    sniffed = await self._sniff(conn)
                    if sniffed is None:
                        return
                    initial = sniffed
                    codec = "http2" if initial.startswith(PREFACE) else "http1"
                else:
                    codec = "http1"
            if codec == "http2":
                await self._serve_http2(conn, remote, local, initial)
            else:
                await self._serve_http1(conn, remote, local, initial)
        except DownstreamReset:
            pass
        finally:
            stats.cx_active.dec()
            stats.cx_destroy.inc()
            conn.close_nowait()

    async def _sniff(self, conn: Connection) -> bytes | None:
        """The first bytes of a cleartext connection: enough to tell the h2
        preface from an HTTP/1.1 request line. None if the client left or
        idled out first."""
        buf = b""
        with trio.move_on_after(self.idle_timeout) as idle:
            while len(buf) < len(PREFACE) and PREFACE.startswith(buf):
                data = await conn.receive_some()
                if not data:
                    break
                self.stats.cx_rx_bytes_total.inc(len(data))
                buf += data
        if idle.cancelled_caught:
            self.stats.cx_idle_timeout.inc()
            return None
        return buf if buf else None

    async def _serve_http2(self, conn: Connection, remote: str, local: str, initial: bytes) -> None:
        from trioproxy.http.h2_conn_manager import serve_h2

        stats = self.stats
        stats.cx_http2_total.inc()
        stats.cx_http2_active.inc()
        try:
            await serve_h2(self, conn, remote=remote, local=local, initial=initial)
        finally:
            stats.cx_http2_active.dec()

    def new_h2_connection(self) -> h2.connection.H2Connection:
        return new_server_connection(self.h2_settings)

    async def _serve_http1(self, conn: Connection, remote: str, local: str, initial: bytes) -> None:
        stats = self.stats
        stats.cx_http1_total.inc()
        stats.cx_http1_active.inc()
        cfg = self.config
        codec = Http1ServerCodec(
            max_header_bytes=cfg.max_request_headers_kb * 1024,
            max_headers=cfg.max_headers_count,
            parser=cfg.http1_parser,
        )
        # The connection idle timeout: one scope for the connection's life,
        # armed (a deadline) only while waiting for the next request, instead
        # of a scope per wait (entering and leaving a scope costs several
        # times what moving a deadline does). A drain cancels it while armed.
        idle = trio.CancelScope()
        try:
            if initial:
                codec.receive_data(initial)
            with idle:
                while not conn.closed:
                    head = await self._read_head(conn, codec, idle)
                    if head is None:
                        break
                    stream = Http1Stream(self, conn, codec, head, remote=remote, local=local)
                    stats.rq_http1_total.inc()
                    await self.run_stream(stream)
                    # Not `self.draining`: a drain that began after the response
                    # head went out without `connection: close` must not close
                    # under the client's next request (sent at once; a reset).
                    # `_receive_idle` decides, within the drain's idle grace.
                    keep = stream.response_complete and not stream.close_connection
                    if not keep or not codec.keep_alive:
                        break
                    if not codec.start_next_cycle():
                        break
            # Fired while waiting (Cancelled, caught above) or just as the
            # next request's bytes arrived (`_receive_idle` returned None).
            if idle.cancel_called and not self.draining:
                stats.cx_idle_timeout.inc()
        finally:
            stats.cx_http1_active.dec()

    async def _receive_idle(self, conn: Connection, idle: trio.CancelScope) -> bytes | None:
        """The first bytes of the next request, under the connection's idle
        scope (`_serve_http1`, which counts the timeout). The scope firing
        during the wait raises Cancelled out of here; None if it fired or a
        drain cancelled it just as the bytes arrived (the connection ends
        either way), or if a drain's idle grace is over."""
        until = trio.current_time() + self.idle_timeout
        if self.draining:
            if self._drain_idle_until <= trio.current_time():
                return None
            until = min(until, self._drain_idle_until)
        idle.deadline = until
        self._idle_waits.add(idle)
        try:
            data = await conn.receive_some()
        finally:
            self._idle_waits.discard(idle)
            idle.deadline = math.inf
        if idle.cancel_called:
            # Fired as the bytes arrived: the scope stays cancelled, so the
            # request cannot be served; end as a timeout (or drain) would.
            return None
        return data

    async def _read_head(
        self, conn: Connection, codec: Http1ServerCodec, idle: trio.CancelScope
    ) -> RequestHead | None:
        """The next request head, or None if the connection should end quietly.

        The connection idle timeout is `idle`'s (it raises Cancelled out of here).
        """
        deadline: float | None = None  # request-headers deadline, once a byte arrived
        try:
            while True:
                ev = NEED_DATA if codec.must_read() else codec.next_event()
                if isinstance(ev, RequestHead):
                    return ev
                if ev is not NEED_DATA:
                    # CLOSED between requests, or PAUSED after `Connection: close`.
                    return None
                if deadline is None and codec.has_buffered_data:
                    deadline = trio.current_time() + self.headers_timeout
                if deadline is None:
                    # Idle between requests: the connection idle timeout, or
                    # a drain (which ends the connection at once, or at the
                    # end of its idle grace; a request before that is
                    # answered with `connection: close`).
                    received = await self._receive_idle(conn, idle)
                    if received is None:
                        return None
                    data = received
                    deadline = trio.current_time() + self.headers_timeout
                else:
                    with trio.move_on_at(deadline) as scope:
                        data = await conn.receive_some()
                    if scope.cancelled_caught:
                        self.stats.rq_header_timeout.inc()
                        await self._reject(
                            conn, 408, "request header timeout", head_only=codec.head_request
                        )
                        return None
                self.stats.cx_rx_bytes_total.inc(len(data))
                codec.receive_data(data)
        except Http1Error as exc:
            self.stats.cx_protocol_error.inc()
            await self._reject(conn, exc.status, str(exc), head_only=codec.head_request)
            return None

    async def _reject(
        self, conn: Connection, status: int, message: str, *, head_only: bool = False
    ) -> None:
        """Answer a request we could not parse, then let the caller close.

        The response is written by hand: the parser is in an error state.
        `head_only`: the request was a HEAD, so the answer has no content.
        """
        body = reason_phrase(status) or b"Bad Request"
        data = b"".join(
            [
                b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)),
                b"content-length: %d\r\ncontent-type: text/plain\r\n" % len(body),
                b"date: " + _DATE.get() + b"\r\nserver: " + self.server_name + b"\r\n",
                b"connection: close\r\n\r\n",
                b"" if head_only else body,
            ]
        )
        try:
            await conn.send_all(data)
        except DownstreamReset:
            pass
        self.stats.rq_class[status // 100].inc()
        conn.close_nowait()

    # ------------------------------------------------------------------ stream

    async def run_stream(self, stream: ActiveStream) -> None:
        """Handle one request: filters, then the router, then the access log.

        Protocol-neutral: HTTP/1.1 calls it once per request in its
        connection task, HTTP/2 once per stream in a task of its own.
        """
        stats = self.stats
        stats.rq_total.inc()
        stats.rq_active.inc()
        info = stream.info
        head = stream.head
        refuse = False
        upgrade: bytes | None = None  # the Upgrade value to forward
        if info.protocol == "HTTP/1.1":
            upgrade = _requested_upgrade(head.headers)
            stream.upgrade = upgrade.lower() if upgrade is not None else None
        elif head.method == b"CONNECT" and get_header(head.headers, b":protocol") is not None:
            refuse = not self._extended_connect(stream)
            upgrade = stream.upgrade
        self._prepare_request(head, info.downstream_remote_address, upgrade)
        if self.tracer is not None:
            stream.span = self.tracer.start_server(
                head, info, trusted=internal_client(info.downstream_remote_address)
            )
        try:
            with trio.CancelScope(deadline=trio.current_time() + self.stream_idle_timeout) as idle:
                stream.idle_scope = idle
                if refuse:
                    await stream.local_reply(400, b"extended CONNECT is not enabled")
                elif self.overload.stop_requests:
                    stats.rq_overload_close.inc()
                    await stream.local_reply(
                        503, b"envoy overloaded", flag="OM", details="overload"
                    )
                else:
                    await self._run_stream(stream)
            if idle.cancelled_caught:
                stats.rq_idle_timeout.inc()
                info.add_flag("SI")
                if not stream.response_started:
                    # The reply is bounded by the idle timeout too: a client
                    # that never opens its window (or never reads) must not
                    # hold the stream (Envoy's tx_flush_timeout).
                    with trio.move_on_after(self.stream_idle_timeout):
                        await stream.local_reply(
                            408, b"stream timeout", details="stream_idle_timeout"
                        )
                stream.close_connection = True
        except DownstreamReset:
            stats.rq_rx_reset.inc()
            info.add_flag("DC")
            stream.close_connection = True
        except DownstreamProtocolError:
            stats.cx_protocol_error.inc()
            info.add_flag("DPE")
            stream.close_connection = True
            if not stream.response_started:
                try:
                    await stream.local_reply(400, b"Bad Request", details="codec_error")
                except DownstreamReset:
                    pass
        finally:
            stats.rq_active.dec()
            info.end_monotonic = trio.current_time()
            if info.response_code:
                stats.rq_class[info.response_code // 100].inc()
                stats.rq_completed.inc()
            stats.rq_time.record((info.end_monotonic - info.start_monotonic) * 1000)
            if stream.span is not None:
                stream.span.finish_server()
            for logger in self.access_loggers:
                logger.log(info)  # type: ignore[attr-defined]

    def _extended_connect(self, stream: ActiveStream) -> bool:
        """RFC 8441: turn a WebSocket extended CONNECT into the HTTP/1.1
        upgrade request the upstream expects (opt-in: `allow_connect`)."""
        head = stream.head
        protocol = get_header(head.headers, b":protocol")
        head.headers = [(k, v) for k, v in head.headers if k != b":protocol"]
        if not self.config.allow_connect or protocol is None or protocol.lower() != b"websocket":
            return False
        head.method = b"GET"
        head.headers += [
            (b"connection", b"upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-key", base64.b64encode(os.urandom(16))),
        ]
        if head.get(b"sec-websocket-version") is None:
            head.headers.append((b"sec-websocket-version", b"13"))
        stream.upgrade = b"websocket"
        # The stream stays open for the tunnel; there is no request body.
        stream.has_body = False
        stream._body_done = True
        stream.content_length = None
        return True

    def _prepare_request(self, head: RequestHead, remote: str, upgrade: bytes | None) -> None:
        """Edit the request as Envoy's HCM does before routing."""
        headers = strip_hop_by_hop(head.headers)
        if upgrade is not None:
            # Hop-by-hop, but the upstream must see them to switch protocols.
            headers += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
        cfg = self.config
        ip = remote.rsplit(":", 1)[0].strip("[]")
        out: Headers = []
        xff: bytes | None = None
        rid: bytes | None = None
        for k, v in headers:
            if k == b"x-forwarded-for":
                xff = v if xff is None else xff + b", " + v
                continue
            if k == b"x-forwarded-proto" and cfg.use_remote_address:
                continue
            if k == b"expect":
                continue
            if k == b"x-request-id":
                rid = v
            out.append((k, v))
        if cfg.use_remote_address:
            ipb = ip.encode()
            out.append((b"x-forwarded-for", xff + b", " + ipb if xff else ipb))
            out.append((b"x-forwarded-proto", self.scheme))
        elif xff is not None:
            out.append((b"x-forwarded-for", xff))
        if (
            rid is not None
            and not cfg.preserve_external_request_id
            and cfg.use_remote_address
            and not internal_client(remote)
        ):
            # Envoy: an external client's request id is not trusted.
            out = [(k, v) for k, v in out if k != b"x-request-id"]
            rid = None
        if rid is None and cfg.generate_request_id:
            out.append((b"x-request-id", _uuid4()))
        head.headers = out
        head.scheme = self.scheme

    async def _run_stream(self, stream: ActiveStream) -> None:
        # An HTTP/2 stream the client reset before its task ran (rapid
        # reset) goes no further: no filter, no upstream request.
        stream.raise_if_reset()
        if self._filter_factories:
            filters = tuple(factory(cfg) for factory, cfg in self._filter_factories)
            stream._filters = filters
            for f in filters:
                if await f.on_request_headers(stream) is FilterStatus.STOP:
                    return
        await self.router.route(self, stream)
