"""A real HTTP/2 (h2c, prior knowledge) test upstream on h2 + trio, on
127.0.0.1 or on a `tests.memnet.MemoryNetwork` (`network=`).

Same contract as `tests/upstream.py`: it records each request and answers
with JSON describing it, steered by request headers:

- `x-test-status: N`       respond with status N
- `x-test-delay: S`        wait S seconds before answering
- `x-test-echo: 1`         respond with the request body
- `x-test-body-size: N`    respond with N bytes
- `x-test-trailers: 1`     send trailers `x-trailer: yes`
- `x-test-hang: 1`         never answer (until the stream is reset)
- `x-test-reset: 1`        reset the stream (RST_STREAM INTERNAL_ERROR) instead of answering
- `x-test-refuse: 1`       reset the stream with REFUSED_STREAM
- `x-test-goaway: 1`       answer, then send GOAWAY and close the connection

Flow control is honoured both ways (request data acknowledged as read,
response data sent inside the client's window).
"""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from tests.serving import LoopbackServer


class _Stream:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = trio.Event()
        self.reset = False
        self.window = trio.Event()


class UpstreamH2(LoopbackServer):
    def __init__(self, name: str = "upstream-h2") -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.active_connections = 0
        self.resets_received = 0
        self.hang_all = False  # never answer any request (until it is reset)
        self.port = 0
        self.max_concurrent_streams = 100

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        self.active_connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams
            },
        )
        conn.initiate_connection()
        lock = trio.Lock()
        streams: dict[int, _Stream] = {}

        async def flush() -> None:
            async with lock:
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)

        try:
            async with stream, trio.open_nursery() as nursery:
                await flush()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        await flush()
                        break
                    for ev in events:
                        sid = getattr(ev, "stream_id", 0)
                        if isinstance(ev, h2.events.RequestReceived):
                            s = _Stream(list(ev.headers or []))  # type: ignore[arg-type]
                            streams[sid] = s
                            if ev.stream_ended is not None:
                                s.ended.set()
                            nursery.start_soon(self._answer, conn, flush, sid, s, nursery)
                        elif isinstance(ev, h2.events.DataReceived):
                            if sid in streams:
                                streams[sid].body += ev.data or b""
                            conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                        elif isinstance(ev, h2.events.TrailersReceived):
                            if sid in streams:
                                streams[sid].trailers = list(ev.headers or [])  # type: ignore[arg-type]
                        elif isinstance(ev, h2.events.StreamEnded):
                            if sid in streams:
                                streams[sid].ended.set()
                        elif isinstance(ev, h2.events.StreamReset):
                            self.resets_received += 1
                            if sid in streams:
                                streams[sid].reset = True
                                streams[sid].ended.set()
                                streams[sid].window.set()
                        elif isinstance(
                            ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged
                        ):
                            for s in streams.values():
                                s.window.set()
                    await flush()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.active_connections -= 1

    async def _answer(
        self,
        conn: h2.connection.H2Connection,
        flush: Any,
        sid: int,
        s: _Stream,
        nursery: trio.Nursery,
    ) -> None:
        await s.ended.wait()
        if s.reset:
            return
        hdrs = {k.decode(): v.decode("latin-1") for k, v in s.headers}
        record = {
            "method": hdrs.get(":method"),
            "path": hdrs.get(":path"),
            "authority": hdrs.get(":authority"),
            "headers": {k: v for k, v in hdrs.items() if not k.startswith(":")},
            "header_list": [(k.decode(), v.decode("latin-1")) for k, v in s.headers],
            "body_length": len(s.body),
            "body": bytes(s.body),
            "trailers": [(k.decode(), v.decode("latin-1")) for k, v in s.trailers],
            "server": self.name,
        }
        self.requests.append(record)
        if "x-test-delay" in hdrs:
            await trio.sleep(float(hdrs["x-test-delay"]))
        if hdrs.get("x-test-hang") or self.hang_all:
            return
        if hdrs.get("x-test-reset") or hdrs.get("x-test-refuse"):
            code = (
                h2.errors.ErrorCodes.REFUSED_STREAM
                if hdrs.get("x-test-refuse")
                else h2.errors.ErrorCodes.INTERNAL_ERROR
            )
            conn.reset_stream(sid, code)
            await flush()
            return
        status = int(hdrs.get("x-test-status", "200"))
        if hdrs.get("x-test-echo"):
            payload = bytes(s.body)
        elif "x-test-body-size" in hdrs:
            n = int(hdrs["x-test-body-size"])
            payload = (b"0123456789abcdef" * (n // 16 + 1))[:n]
        else:
            payload = json.dumps({k: v for k, v in record.items() if k != "body"}).encode()
        trailers = [(b"x-trailer", b"yes")] if hdrs.get("x-test-trailers") else []
        conn.send_headers(
            sid,
            [
                (b":status", str(status).encode()),
                (b"content-type", b"application/json"),
                (b"x-upstream", self.name.encode()),
            ],
        )
        view = memoryview(payload)
        try:
            while view:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0 or s.reset:
                    if s.reset:
                        return
                    s.window = trio.Event()
                    await flush()
                    await s.window.wait()
                    continue
                conn.send_data(sid, bytes(view[:window]))
                view = view[window:]
                await flush()
            if trailers:
                conn.send_headers(sid, trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            if hdrs.get("x-test-goaway"):
                conn.close_connection()
            await flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return


async def start_upstream_h2(
    nursery: trio.Nursery, name: str = "upstream-h2", network: object = None
) -> UpstreamH2:
    up: UpstreamH2 = await nursery.start(UpstreamH2(name).run, network)
    return up
