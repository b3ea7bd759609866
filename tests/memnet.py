"""An in-memory `Network` for tests: the whole proxy, unchanged, over memory streams.

Used with `trio.testing.MockClock(autojump_threshold=0)` so timeout tests are
instant and deterministic: no real socket wait can make the clock jump early.

- `listen_tcp` hands out ports from 40000 up when asked for port 0;
- `connect_tcp` to a port nobody listens on fails like a refused connection;
- `blackhole(host, port)` makes connects to that address hang (until the
  caller's connect timeout), like a dropped SYN, and drops datagrams sent there;
- `open_udp` datagrams land in `datagrams[(host, port)]`.
"""

from __future__ import annotations

import weakref

import h11
import trio
import trio.testing

from trioproxy.net.errors import ConnectFailure, ConnectTimeout


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](1000)

    async def accept(self) -> trio.abc.Stream:
        return await self.receive.receive()

    async def aclose(self) -> None:
        await self.receive.aclose()


class MemoryDatagramSender:
    def __init__(self, net: MemoryNetwork, host: str, port: int) -> None:
        self._net = net
        self._to = (host, port)

    def send_nowait(self, data: bytes) -> bool:
        if self._to in self._net.blackholes:
            return False
        self._net.datagrams.setdefault(self._to, []).append(data)
        return True

    def close(self) -> None:
        pass


class MemoryNetwork:
    def __init__(self) -> None:
        self.datagrams: dict[tuple[str, int], list[bytes]] = {}
        self.listeners: dict[tuple[str, int], MemoryListener] = {}
        self.blackholes: set[tuple[str, int]] = set()
        self.connects = 0
        self._next_port = 40000
        self._addrs: weakref.WeakKeyDictionary[trio.abc.Stream, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._client_port = 50000

    def blackhole(self, host: str, port: int) -> None:
        self.blackholes.add((host, port))

    async def connect_tcp(self, host: str, port: int, *, timeout: float) -> trio.abc.Stream:
        self.connects += 1
        with trio.move_on_after(timeout if timeout > 0 else float("inf")):
            await trio.lowlevel.checkpoint()
            if (host, port) in self.blackholes:
                await trio.sleep_forever()
            listener = self.listeners.get((host, port)) or self.listeners.get(("0.0.0.0", port))
            if listener is None:
                raise ConnectFailure(f"ECONNREFUSED {host}:{port}")
            client, server = trio.testing.memory_stream_pair()
            self._client_port += 1
            self._addrs[server] = (f"127.0.0.1:{self._client_port}", f"{host}:{port}")
            try:
                listener.send.send_nowait(server)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectFailure(f"ECONNREFUSED {host}:{port}") from None
            return client
        raise ConnectTimeout(f"connect to {host}:{port} timed out")

    async def listen_tcp(
        self, host: str, port: int, *, reuse_port: bool = True, backlog: int = 1024
    ) -> tuple[trio.abc.Listener[trio.abc.Stream], tuple[str, int]]:
        if port == 0:
            self._next_port += 1
            port = self._next_port
        listener = MemoryListener()
        self.listeners[(host, port)] = listener
        return listener, (host, port)

    def addresses(self, stream: trio.abc.Stream) -> tuple[str, str]:
        return self._addrs.get(stream, ("127.0.0.1:1", "127.0.0.1:2"))

    def open_udp(self, host: str, port: int) -> MemoryDatagramSender:
        return MemoryDatagramSender(self, host, port)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class RawClient:
    """A minimal HTTP/1.1 client over any stream, for memory-network tests."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, net: MemoryNetwork, port: int, host: str = "127.0.0.1") -> RawClient:
        return cls(await net.connect_tcp(host, port, timeout=0))

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        hdrs = [("host", "example.com"), *(headers or [])]
        if body:
            hdrs.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        return await self.read_response()

    async def read_response(self) -> Response:
        status = 0
        headers: dict[str, str] = {}
        body = bytearray()
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            if type(ev) is h11.Response:
                status = ev.status_code
                headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif type(ev) is h11.Data:
                body += ev.data
            elif type(ev) is h11.EndOfMessage:
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return Response(status, headers, bytes(body))
            elif type(ev) is h11.ConnectionClosed:
                raise EOFError("connection closed before a response")

    async def closed_by_peer(self) -> bool:
        """True once the peer closed its side (reads EOF)."""
        data = await self.stream.receive_some(65536)
        return data == b""
