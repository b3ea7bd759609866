"""A real HTTP trace collector for tests: records each POSTed JSON report.

Serves Zipkin's `POST /api/v2/spans` and OTLP/HTTP's `POST /v1/traces`
alike (any path), on a real 127.0.0.1 port or on a `MemoryNetwork`.
`status` steers the answer (202 by default, as Zipkin answers).
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

from tests.serving import LoopbackServer


class Collector(LoopbackServer):
    def __init__(self) -> None:
        self.status = 202
        self.connections = 0
        # keep_alive False: answer with `connection: close`. close_after_each:
        # close silently after each answer (an idle-timeout collector).
        self.keep_alive = True
        self.close_after_each = False
        self.reports: list[tuple[str, Any]] = []  # (path, parsed JSON body)
        self._changed = trio.Event()

    def spans(self) -> list[dict[str, Any]]:
        """Every span received: Zipkin objects, or OTLP span objects."""
        out: list[dict[str, Any]] = []
        for path, body in self.reports:
            if path == "/v1/traces":
                for rs in body["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        out.extend(ss["spans"])
            else:
                out.extend(body)
        return out

    async def wait_spans(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while len(self.spans()) < n:
                await self._changed.wait()
        return self.spans()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    body = bytearray()
                    target = ""
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            if not data:
                                return
                            conn.receive_data(data)
                        elif isinstance(ev, h11.Request):
                            target = ev.target.decode()
                        elif isinstance(ev, h11.Data):
                            body += ev.data
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                        else:
                            return
                    self.reports.append((target, json.loads(bytes(body))))
                    self._changed.set()
                    self._changed = trio.Event()
                    headers = [("content-length", "0")]
                    if not self.keep_alive:
                        headers.append(("connection", "close"))
                    head = h11.Response(status_code=self.status, headers=headers)
                    await stream.send_all(
                        (conn.send(head) or b"") + (conn.send(h11.EndOfMessage()) or b"")
                    )
                    if not self.keep_alive or self.close_after_each:
                        return
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
