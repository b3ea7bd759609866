"""Envoy's tls_inspector listener filter: is this TLS, and with which SNI and ALPN?

It reads the first bytes of a connection until the sans-IO parser
(`codec.tls_hello`) can tell a ClientHello from anything else, records the
server name and the client's ALPN offer for filter-chain matching, and hands
on a stream that replays every byte it read, so the chosen chain sees the
connection from its first byte: a TLS chain terminates it, a TCP proxy
chain passes it through untouched, a plaintext chain reads its request.

The listener bounds this with `listener_filters_timeout` (Envoy: 15 s).
A client that closes before saying enough is closed quietly.

Stats (Envoy's, rooted at `tls_inspector.`): `tls_found`, `tls_not_found`,
`sni_found`, `sni_not_found`, `alpn_found`, `alpn_not_found`,
`client_hello_too_large`, `connection_closed`.
"""

from __future__ import annotations

import trio

from trioproxy.codec.tls_hello import MAX_CLIENT_HELLO, NEED_DATA, ClientHello, inspect_client_hello
from trioproxy.config import TlsInspector
from trioproxy.filters.network.base import (
    DownstreamConnection,
    FilterContext,
    ListenerFilter,
    listener_filter,
)
from trioproxy.net.tls import PrefixedStream

__all__ = ["TlsInspectorFilter"]

# One read: the whole ClientHello fits in one or two 16 KiB records.
_READ_SIZE = 16 * 1024 + 5


@listener_filter(TlsInspector)
class TlsInspectorFilter(ListenerFilter):
    def __init__(self, config: TlsInspector, ctx: FilterContext, listener_prefix: str) -> None:
        c = ctx.stats.counter
        p = "tls_inspector."
        self.tls_found = c(p + "tls_found")
        self.tls_not_found = c(p + "tls_not_found")
        self.sni_found = c(p + "sni_found")
        self.sni_not_found = c(p + "sni_not_found")
        self.alpn_found = c(p + "alpn_found")
        self.alpn_not_found = c(p + "alpn_not_found")
        self.too_large = c(p + "client_hello_too_large")
        self.closed = c(p + "connection_closed")

    async def on_accept(
        self, stream: trio.abc.Stream, conn: DownstreamConnection
    ) -> trio.abc.Stream | None:
        buf = bytearray()
        while True:
            try:
                data = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self.closed.inc()
                return None
            buf += data
            result = inspect_client_hello(bytes(buf))
            if result is NEED_DATA and len(buf) <= MAX_CLIENT_HELLO:
                continue
            break
        if isinstance(result, ClientHello):
            self.tls_found.inc()
            conn.transport_protocol = "tls"
            conn.server_name = result.server_name
            conn.requested_alpn = result.alpn
            (self.sni_found if result.server_name else self.sni_not_found).inc()
            (self.alpn_found if result.alpn else self.alpn_not_found).inc()
        else:
            if getattr(result, "too_large", False) or result is NEED_DATA:
                self.too_large.inc()
            self.tls_not_found.inc()
            conn.transport_protocol = "raw_buffer"
        return PrefixedStream(stream, bytes(buf))
