"""The demo upstream service (`config.DemoService`): a tiny HTTP/1.1 server.

It answers every request with
`Hello from behind trioproxy (<name>)! hostname: <hostname>` so examples run
with no other set-up. It reads (and discards) request bodies and keeps
connections alive. It is a stand-in for a real service, not part of the
data plane.
"""

from __future__ import annotations

import logging
import socket

import h11
import trio

from trioproxy.config import DemoService
from trioproxy.net.network import Network

__all__ = ["serve_demo_service"]

log = logging.getLogger("trioproxy.demo")


async def serve_demo_service(
    service: DemoService,
    network: Network,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `service` until cancelled; `task_status.started()` gets the bound port."""
    listener, (_host, port) = await network.listen_tcp(service.address.host, service.address.port)
    body = f"Hello from behind trioproxy ({service.name})! hostname: {socket.gethostname()}\n"
    payload = body.encode()
    log.info("demo service %r listening on %s:%d", service.name, service.address.host, port)
    task_status.started(port)
    async with listener, trio.open_nursery() as nursery:
        while True:
            stream = await listener.accept()
            nursery.start_soon(_serve, stream, payload)


async def _serve(stream: trio.abc.Stream, payload: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if type(ev) is h11.Request:
                    continue
                if type(ev) is h11.Data:
                    continue
                if type(ev) is h11.EndOfMessage:
                    headers = [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(payload)).encode()),
                    ]
                    data = conn.send(h11.Response(status_code=200, headers=headers)) or b""
                    data += conn.send(h11.Data(data=payload)) or b""
                    data += conn.send(h11.EndOfMessage()) or b""
                    await stream.send_all(data)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    continue
                return  # ConnectionClosed or PAUSED
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
