"""A small real HTTP/2 (h2c prior knowledge) client for tests that need what
httpx does not expose: trailers, RST_STREAM, GOAWAY, SETTINGS, raw frames.

    async with await H2Client.connect(port) as c:
        r = await c.request("POST", "/", body=b"x", trailers=[(b"grpc-status", b"0")])
        r.status, r.headers, r.body, r.trailers
"""

from __future__ import annotations

from types import TracebackType

import attrs
import h2.config
import h2.connection
import h2.events
import h2.settings
import trio


@attrs.define
class H2Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = attrs.Factory(list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = attrs.Factory(list)
    reset_code: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Pending:
    def __init__(self) -> None:
        self.response = H2Response()
        self.done = trio.Event()
        self.got_headers = trio.Event()
        self.body = bytearray()
        self.window = trio.Event()


class H2Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.pending: dict[int, _Pending] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.remote_settings_received = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._cm: object = None
        self.read_slowly = False
        self._send_lock = trio.Lock()

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> H2Client:
        return cls(await trio.open_tcp_stream(host, port))

    async def __aenter__(self) -> H2Client:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()  # type: ignore[attr-defined]
        self.conn.initiate_connection()
        await self.flush()
        self._nursery.start_soon(self._read)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        await self._cm.__aexit__(exc_type, exc, tb)  # type: ignore[attr-defined]
        await self.stream.aclose()

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def _read(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                for p in self.pending.values():
                    p.done.set()
                    p.got_headers.set()
                    p.window.set()
                return
            for ev in self.conn.receive_data(data):
                self._on(ev)
            await self.flush()

    def _on(self, ev: h2.events.Event) -> None:
        sid = getattr(ev, "stream_id", 0) or 0
        p = self.pending.get(sid)
        if isinstance(ev, h2.events.ResponseReceived) and p:
            for k, v in ev.headers or []:
                if k == b":status":
                    p.response.status = int(v)
                else:
                    p.response.headers.append((bytes(k), bytes(v)))
            p.got_headers.set()
        elif isinstance(ev, h2.events.DataReceived) and p:
            p.body += ev.data or b""
            if not self.read_slowly:
                self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
        elif isinstance(ev, h2.events.TrailersReceived) and p:
            p.response.trailers = [(bytes(k), bytes(v)) for k, v in ev.headers or []]
        elif isinstance(ev, h2.events.StreamEnded) and p:
            p.response.body = bytes(p.body)
            p.done.set()
        elif isinstance(ev, h2.events.StreamReset) and p:
            p.response.reset_code = int(ev.error_code or 0)
            p.response.body = bytes(p.body)
            p.done.set()
            p.got_headers.set()
            p.window.set()
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                self.remote_settings_received.set()
            for q in self.pending.values():
                q.window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
            for q in self.pending.values():
                q.window.set()

    async def start(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        authority: str = "test.local",
        end_stream: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.pending[sid] = _Pending()
        block = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.conn.send_headers(sid, block, end_stream=end_stream)
        await self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        view = memoryview(body)
        p = self.pending[sid]
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if p.response.reset_code is not None:
                return
            if window <= 0:
                p.window = trio.Event()
                await p.window.wait()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            await self.flush()
        if end:
            self.conn.end_stream(sid)
            await self.flush()

    async def send_trailers(self, sid: int, trailers: list[tuple[bytes, bytes]]) -> None:
        self.conn.send_headers(sid, trailers, end_stream=True)
        await self.flush()

    async def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)
        await self.flush()

    async def wait(self, sid: int) -> H2Response:
        p = self.pending[sid]
        await p.done.wait()
        p.response.body = bytes(p.body)
        return p.response

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> H2Response:
        has_body = body is not None or trailers is not None
        sid = await self.start(method, path, headers=headers, end_stream=not has_body)
        if has_body:
            await self.send_body(sid, body or b"", end=trailers is None)
            if trailers is not None:
                await self.send_trailers(sid, trailers)
        return await self.wait(sid)
