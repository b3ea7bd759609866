"""The `auto` upstream pool: HTTP/2 or HTTP/1.1 per connection, as TLS ALPN says.

Envoy's `auto_config` for a TLS cluster: each new connection offers
`h2,http/1.1` and speaks what the upstream picked. This pool holds an
`Http1Pool` and an `Http2Pool` for the same host and the same `ClientTls`:

    acquire():  a free stream on an open HTTP/2 connection
             →  else an idle HTTP/1.1 connection
             →  else dial a new TLS connection and give it to the pool its
                ALPN names (h2 → the HTTP/2 pool, anything else → HTTP/1.1)

Streams go back to the pool that lent them. Stats are the cluster's, shared.
Cancellation safety is the inner pools' (a dialled stream is adopted with
no checkpoint in between for HTTP/1.1; `Http2Pool.adopt` closes it on
failure).
"""

from __future__ import annotations

import trio

from trioproxy.codec.http2 import Http2Settings
from trioproxy.net.h2_pool import Http2Pool, UpstreamHttp2
from trioproxy.net.network import Network
from trioproxy.net.pool import Http1Pool, PoolStats
from trioproxy.net.tls import ClientTls
from trioproxy.net.upstream import UpstreamStream

__all__ = ["AutoPool"]


class AutoPool:
    """Same interface as `Http1Pool`; `nursery` is handed to the HTTP/2 pool."""

    def __init__(
        self,
        network: Network,
        host: str,
        port: int,
        *,
        stats: PoolStats,
        tls: ClientTls,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
        settings: Http2Settings | None = None,
        http1_parser: str = "h11",
    ) -> None:
        self.host = host
        self.port = port
        self._stats = stats
        self._dialing = 0  # connections being dialled (ALPN not known yet)
        self.h1 = Http1Pool(
            network,
            host,
            port,
            stats=stats,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            max_idle=max_idle,
            tls=tls,
            accept_alpn=(None, "http/1.1", "h2"),
            http1_parser=http1_parser,
        )
        self.h2 = Http2Pool(
            network,
            host,
            port,
            stats=stats,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            settings=settings,
            tls=tls,
        )

    @property
    def active(self) -> int:
        """Connections open (idle or lent) in both inner pools."""
        return self.h1.active + self.h2.active

    @active.setter
    def active(self, value: int) -> None:
        raise AttributeError("AutoPool.active is the sum of its inner pools")

    @property
    def nursery(self) -> trio.Nursery | None:
        return self.h2.nursery

    @nursery.setter
    def nursery(self, value: trio.Nursery | None) -> None:
        self.h2.nursery = value

    async def acquire(self) -> UpstreamStream:
        s = self._stats
        while True:
            if self.h2.has_room():
                return await self.h2.acquire()
            up = self.h1.pop_idle()
            if up is not None:
                return up
            if s.room_for_connection(self.h1.active + self.h2.active + self._dialing):
                break
            await s.wait_pending()  # the connection breakers are full
        s.cx_open.set(0)
        s.dialing += 1
        self._dialing += 1
        try:
            stream = await self.h1.dial()
        finally:
            s.dialing -= 1
            self._dialing -= 1
            s.notify_freed()
        alpn = getattr(stream, "selected_alpn_protocol", lambda: None)()
        if alpn == "h2":
            return await self.h2.adopt(stream)
        return self.h1.adopt(stream)

    def release(self, up: UpstreamStream, *, reusable: bool) -> None:
        if isinstance(up, UpstreamHttp2):
            self.h2.release(up, reusable=reusable)
        else:
            self.h1.release(up, reusable=reusable)

    def close(self) -> None:
        self.h1.close()
        self.h2.close()

    @property
    def idle_count(self) -> int:
        return self.h1.idle_count + self.h2.idle_count
