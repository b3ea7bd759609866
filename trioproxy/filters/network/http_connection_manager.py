"""The HTTP connection manager as a terminal network filter of a filter chain.

The HCM itself lives in `trioproxy.http.conn_manager`; this adapter makes one
`ConnectionManager` per filter chain (scheme `https` when the chain
terminates TLS, so `x-forwarded-proto` and redirects say so), puts the
x-forwarded-client-cert filter first in its HTTP filters, and serves each
connection with the ALPN protocol the TLS handshake negotiated (codec auto:
"h2" is HTTP/2, anything else HTTP/1.1; no TLS: sniff for the h2c preface).
"""

from __future__ import annotations

import attrs
import trio

from trioproxy.config import FilterChain, HttpConnectionManager
from trioproxy.filters.http.xfcc import ForwardClientCert
from trioproxy.filters.network.base import (
    DownstreamConnection,
    FilterContext,
    NetworkFilter,
    network_filter,
)
from trioproxy.http.conn_manager import ConnectionManager
from trioproxy.net.tls import DOWNSTREAM_TLS

__all__ = ["HttpConnectionManagerFilter"]


def with_xfcc(config: HttpConnectionManager) -> HttpConnectionManager:
    """`config` with the XFCC filter first (none for always_forward_only)."""
    if config.forward_client_cert_details == "always_forward_only":
        return config
    xfcc = ForwardClientCert(
        mode=config.forward_client_cert_details,
        details=config.set_current_client_cert_details,
    )
    return attrs.evolve(config, http_filters=(xfcc, *config.http_filters))


@network_filter(HttpConnectionManager)
class HttpConnectionManagerFilter(NetworkFilter):
    def __init__(
        self,
        config: HttpConnectionManager,
        ctx: FilterContext,
        chain: FilterChain,
        listener_prefix: str,
    ) -> None:
        self.config = config
        self.hcm = ConnectionManager(
            with_xfcc(config),
            router=ctx.router,
            stats=ctx.stats,
            access_loggers=ctx.access_loggers(config.access_logs),
            scheme=b"https" if chain.tls is not None else b"http",
            runtime=ctx.runtime,
            overload=ctx.overload,
            tracer=ctx.tracer(config),
        )

    async def serve(self, stream: trio.abc.Stream, conn: DownstreamConnection) -> None:
        tls = conn.tls
        DOWNSTREAM_TLS.set(tls)
        await self.hcm.serve_connection(
            stream,
            remote=conn.remote,
            local=conn.local,
            alpn=tls.alpn if tls is not None else None,
        )
