"""A real HTTP/1.1 upstream for tests, listening on 127.0.0.1.

It is a plain trio + h11 server (not a mock): tests talk to it through the
proxy over real sockets. Its behaviour per request is steered by request
headers, so one server covers many cases:

- `x-test-status: N`        answer with status N
- `x-test-body-size: N`     answer with N bytes (pattern bytes) instead of JSON
- `x-test-echo: 1`          answer with the request body, byte for byte
- `x-test-chunked: 1`       send the answer without content-length (chunked)
- `x-test-delay: S`         sleep S seconds before answering (MockClock-friendly)
- `x-test-hang: 1`          never answer
- `x-test-close: 1`         close the connection without answering
- `x-test-close-mid: 1`     send the head and part of the body, then close
- `x-test-trailers: 1`      send a trailer `x-trailer: yes` (chunked)

Otherwise it answers 200 with JSON describing what it received: method, path,
headers, body length and the server's name. `requests` records every request.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio


class Upstream:
    def __init__(self, name: str = "upstream", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host  # any 127.0.0.x works on Linux loopback
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.active_connections = 0
        # Steer from a test: answer every request with `always_status`, or the
        # next few with `next_statuses` (then normally).
        self.always_status: int | None = None
        self.next_statuses: list[int] = []
        self.hang_all = False  # never answer any request
        self.delay_all = 0.0  # wait this long before answering every request
        # Hanging requests whose connection the proxy closed (a reset try).
        self.abandoned = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(
        self,
        network: Any = None,
        *,
        task_status: trio.TaskStatus[Upstream] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a real 127.0.0.1 port, or on `network` (a MemoryNetwork)."""
        if network is None:
            listeners: list[Any] = await trio.open_tcp_listeners(self.port, host=self.host)
            self.port = listeners[0].socket.getsockname()[1]
        else:
            listener, (_, self.port) = await network.listen_tcp("127.0.0.1", 0)
            listeners = [listener]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        self.active_connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)
        try:
            async with stream:
                while True:
                    req, body = await _read_request(conn, stream)
                    if req is None:
                        return
                    keep = await self._answer(conn, stream, req, body)
                    if (
                        not keep
                        or conn.our_state is not h11.DONE
                        or conn.their_state is not h11.DONE
                    ):
                        return
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            self.active_connections -= 1

    async def _answer(
        self, conn: h11.Connection, stream: trio.abc.Stream, req: h11.Request, body: bytes
    ) -> bool:
        headers = {k.decode(): v.decode("latin-1") for k, v in req.headers.raw_items()}
        record = {
            "method": req.method.decode(),
            "path": req.target.decode("latin-1"),
            "headers": headers,
            "header_list": [(k.decode(), v.decode("latin-1")) for k, v in req.headers.raw_items()],
            "body_length": len(body),
            "trailers": [(k.decode(), v.decode("latin-1")) for k, v in _TRAILERS.pop(id(req), [])],
            "server": self.name,
            "at": trio.current_time(),
        }
        self.requests.append(record)
        if "x-test-delay" in headers:
            await trio.sleep(float(headers["x-test-delay"]))
        if self.delay_all:
            await trio.sleep(self.delay_all)
        if headers.get("x-test-hang") or self.hang_all:
            # Never answer, but notice when the proxy gives up on us.
            while await stream.receive_some(65536):
                pass
            self.abandoned += 1
            return False
        if headers.get("x-test-close"):
            return False
        status = int(headers.get("x-test-status", "200"))
        if self.always_status is not None:
            status = self.always_status
        elif self.next_statuses:
            status = self.next_statuses.pop(0)
        if headers.get("x-test-echo"):
            payload = body
        elif "x-test-body-size" in headers:
            n = int(headers["x-test-body-size"])
            payload = (b"0123456789abcdef" * (n // 16 + 1))[:n]
        else:
            payload = json.dumps(record).encode()
        chunked = bool(headers.get("x-test-chunked") or headers.get("x-test-trailers"))
        out_headers = [(b"content-type", b"application/json"), (b"x-upstream", self.name.encode())]
        if not chunked:
            out_headers.append((b"content-length", str(len(payload)).encode()))
        data = conn.send(h11.Response(status_code=status, headers=out_headers)) or b""
        if headers.get("x-test-close-mid"):
            data += conn.send(h11.Data(data=payload[: max(1, len(payload) // 2)])) or b""
            await stream.send_all(data)
            return False
        if req.method != b"HEAD" and status not in (204, 304):
            # Send in pieces so bodies cross several reads.
            for i in range(0, len(payload), 16384):
                data += conn.send(h11.Data(data=payload[i : i + 16384])) or b""
                await stream.send_all(data)
                data = b""
        trailers = [(b"x-trailer", b"yes")] if headers.get("x-test-trailers") else []
        data += conn.send(h11.EndOfMessage(headers=trailers)) or b""
        await stream.send_all(data)
        return True


# Request trailers by request object id, picked up by `_answer`.
_TRAILERS: dict[int, list[tuple[bytes, bytes]]] = {}


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream
) -> tuple[h11.Request | None, bytes]:
    req: h11.Request | None = None
    body = bytearray()
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                await stream.send_all(
                    conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                )
            conn.receive_data(await stream.receive_some(65536))
            continue
        if type(ev) is h11.Request:
            req = ev
            continue
        if type(ev) is h11.Data:
            body += ev.data
            continue
        if type(ev) is h11.EndOfMessage:
            if req is not None and ev.headers:
                _TRAILERS[id(req)] = [(bytes(k), bytes(v)) for k, v in ev.headers.raw_items()]
            return req, bytes(body)
        return None, b""
