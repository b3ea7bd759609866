"""TLS test upstreams: the real h11 and h2 test servers behind trio's TLS listener.

- `TlsUpstream`: `tests.upstream.Upstream` (HTTP/1.1) over TLS.
- `TlsUpstreamH2`: `tests.upstream_h2.UpstreamH2` (HTTP/2) over TLS.
- `TlsAutoUpstream`: speaks whatever ALPN picked (h2 or HTTP/1.1), like a
  typical HTTPS origin; `protocols` records each connection's choice.
- `TlsEcho`: a TLS echo server for TCP passthrough tests.

Each records the SNI the client sent (`server_names`) and, with a CA,
requires client certificates (mTLS).
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from tests.upstream import Upstream
from tests.upstream_h2 import UpstreamH2


def server_context(
    cert: str,
    key: str,
    *,
    alpn: list[str] | None = None,
    client_ca: str | None = None,
    server_names: list[str] | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if server_names is not None:
        names = server_names

        def remember(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            names.append(name or "")

        ctx.sni_callback = remember  # type: ignore[assignment]
    return ctx


async def _tls_listeners(ctx: ssl.SSLContext) -> tuple[int, list[Any]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    return port, [trio.SSLListener(lis, ctx, https_compatible=True) for lis in listeners]


class TlsUpstream(Upstream):
    def __init__(self, name: str, cert: str, key: str, **ctx: Any) -> None:
        super().__init__(name)
        self.server_names: list[str] = []
        self.ctx = server_context(cert, key, server_names=self.server_names, **ctx)

    async def run(  # type: ignore[override]
        self, network: Any = None, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.port, listeners = await _tls_listeners(self.ctx)
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)


class TlsUpstreamH2(UpstreamH2):
    def __init__(self, name: str, cert: str, key: str, **ctx: Any) -> None:
        super().__init__(name)
        self.server_names: list[str] = []
        ctx.setdefault("alpn", ["h2"])
        self.ctx = server_context(cert, key, server_names=self.server_names, **ctx)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.port, listeners = await _tls_listeners(self.ctx)
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)  # type: ignore[arg-type]


class TlsAutoUpstream:
    """HTTP/2 or HTTP/1.1 per connection, as ALPN decided."""

    def __init__(self, name: str, cert: str, key: str, alpn: list[str]) -> None:
        self.h1 = Upstream(name + "-h1")
        self.h2 = UpstreamH2(name + "-h2")
        self.protocols: list[str | None] = []
        self.ctx = server_context(cert, key, alpn=alpn)
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.port, listeners = await _tls_listeners(self.ctx)
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SSLStream[Any]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            return
        proto = stream.selected_alpn_protocol()
        self.protocols.append(proto)
        if proto == "h2":
            await self.h2._handle(stream)  # type: ignore[arg-type]
        else:
            await self.h1._handle(stream)


class TlsEcho:
    """Terminates TLS and echoes; records SNI and counts connections."""

    def __init__(self, cert: str, key: str) -> None:
        self.server_names: list[str] = []
        self.ctx = server_context(cert, key, server_names=self.server_names)
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.port, listeners = await _tls_listeners(self.ctx)
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
