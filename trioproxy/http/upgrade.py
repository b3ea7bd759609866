"""Upgraded connections (WebSocket): after `101 Switching Protocols` the
downstream and upstream sockets are joined and bytes copied both ways.

    tunnel task (the stream's own task)
    └─ nursery
       ├─ copy downstream → upstream
       └─ copy upstream → downstream

Half-close is passed through: when one side ends its writes (EOF), the other
side's write half is shut (`send_eof`) and the opposite direction keeps
flowing until it ends too. A reset or error on either side ends both. Each
chunk moved pushes the stream idle timeout forward (`touch`), so an idle
tunnel ends after Envoy's stream idle timeout (5 min) like any stream.

Nothing here parses WebSocket frames: the proxy is transparent, as Envoy is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from trioproxy.net.errors import ProxyIOError

__all__ = ["ByteChannel", "tunnel"]


class ByteChannel(Protocol):
    """One end of a tunnel: a socket `Connection`, or an HTTP/2 stream
    carrying an RFC 8441 WebSocket. Errors are `ProxyIOError`s."""

    async def receive_some(self) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...


async def _copy(
    src: ByteChannel,
    dst: ByteChannel,
    first: bytes,
    touch: Callable[[int], None],
    done: Callable[[], None],
) -> None:
    try:
        if first:
            touch(len(first))
            await dst.send_all(first)
        while True:
            data = await src.receive_some()
            if not data:
                break
            touch(len(data))
            await dst.send_all(data)
        # EOF from src: pass the half-close on; the other direction goes on.
        await dst.send_eof()
    except ProxyIOError:
        done()


async def tunnel(
    downstream: ByteChannel,
    downstream_buffered: bytes,
    upstream: ByteChannel,
    upstream_buffered: bytes,
    *,
    on_downstream_bytes: Callable[[int], None],
    on_upstream_bytes: Callable[[int], None],
) -> None:
    """Copy bytes both ways until both directions end (or either fails).

    `*_buffered` are bytes each codec had already read past the HTTP
    exchange (the start of the upgraded protocol).
    """
    async with trio.open_nursery() as nursery:
        stop = nursery.cancel_scope.cancel
        nursery.start_soon(
            _copy, downstream, upstream, downstream_buffered, on_downstream_bytes, stop
        )
        nursery.start_soon(_copy, upstream, downstream, upstream_buffered, on_upstream_bytes, stop)
