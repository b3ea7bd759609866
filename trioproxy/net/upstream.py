"""The interface the router uses for one upstream request, whatever the protocol.

`Http1Pool` lends an `UpstreamHttp1` (a whole connection), `Http2Pool` an
`UpstreamHttp2` (one stream on a shared connection); both satisfy
`UpstreamStream`, and both pools satisfy `UpstreamPool`.
"""

from __future__ import annotations

from typing import Protocol

from trioproxy.codec.stream import Headers, RequestHead, ResponseHead

__all__ = ["UpstreamPool", "UpstreamStream"]


class UpstreamStream(Protocol):
    trailers: Headers

    async def send_request_head(
        self, head: RequestHead, *, body: bool, content_length: bytes | None
    ) -> None: ...

    async def send_data(self, data: bytes) -> None: ...

    async def send_end(self, trailers: Headers | None = None) -> None: ...

    async def receive_response_head(self) -> ResponseHead: ...

    async def receive_data(self) -> bytes | None: ...


class UpstreamPool(Protocol):
    active: int
    host: str
    port: int

    async def acquire(self) -> UpstreamStream: ...

    def release(self, up: UpstreamStream, *, reusable: bool) -> None: ...

    def close(self) -> None: ...

    @property
    def idle_count(self) -> int: ...
