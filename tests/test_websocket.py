"""WebSocket upgrades tunnelled through the proxy, with trio-websocket on
both ends (a real client and a real echo server on 127.0.0.1)."""

from __future__ import annotations

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from tests.conftest import (
    cluster,
    counter,
    gauge,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from trioproxy.runtime.server import Server


class EchoServer:
    def __init__(self) -> None:
        self.port = 0
        self.paths: list[str] = []
        self.close_codes: list[int | None] = []
        self.headers: list[dict[str, str]] = []

    async def handler(self, request: WebSocketRequest) -> None:
        self.paths.append(request.path)
        self.headers.append({k.decode(): v.decode() for k, v in request.headers})
        ws = await request.accept()
        try:
            while True:
                msg = await ws.get_message()
                if msg == "close-please":
                    await ws.aclose(code=4001, reason="asked to")
                    return
                await ws.send_message(msg)
        except ConnectionClosed as exc:
            self.close_codes.append(exc.reason.code)

    async def run(
        self, task_status: trio.TaskStatus[EchoServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def serve(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
            await serve_websocket(
                self.handler, "127.0.0.1", 0, ssl_context=None, task_status=task_status
            )

        async with trio.open_nursery() as n:
            server = await n.start(serve)
            self.port = server.port  # type: ignore[attr-defined]
            task_status.started(self)


async def start_echo(nursery: trio.Nursery) -> EchoServer:
    echo: EchoServer = await nursery.start(EchoServer().run)
    return echo


async def proxy_to(nursery: trio.Nursery, echo: EchoServer, **route: object) -> Server:
    return await start_proxy(
        nursery,
        simple_mesh(
            [route_to("ws", **route)],
            [cluster("ws", f"127.0.0.1:{echo.port}")],
        ),
    )


def ws_url(server: Server, path: str = "/chat") -> str:
    return f"ws://127.0.0.1:{server.listener_address('ingress').port}{path}"


async def test_text_binary_and_large_messages(nursery: trio.Nursery) -> None:
    echo = await start_echo(nursery)
    server = await proxy_to(nursery, echo)
    with trio.fail_after(20):
        async with open_websocket_url(ws_url(server, "/chat?room=1")) as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            await ws.send_message(b"\x00\x01\xff")
            assert await ws.get_message() == b"\x00\x01\xff"
            big = bytes(range(256)) * 4096  # 1 MiB
            await ws.send_message(big)
            assert await ws.get_message() == big
            await ws.ping(b"are you there")  # returns once the pong came back
            assert gauge(server, "http.ingress_http.downstream_cx_upgrades_active") == 1
    assert echo.paths == ["/chat?room=1"]
    assert echo.headers[0]["x-forwarded-proto"] == "http"
    await settle(server)
    with trio.fail_after(5):
        while gauge(server, "http.ingress_http.downstream_cx_upgrades_active"):
            await trio.sleep(0.01)
    assert counter(server, "http.ingress_http.downstream_cx_upgrades_total") == 1
    assert counter(server, "http.ingress_http.downstream_rq_1xx") == 1


async def test_close_codes_pass_both_ways(nursery: trio.Nursery) -> None:
    echo = await start_echo(nursery)
    server = await proxy_to(nursery, echo)
    with trio.fail_after(10):
        # Client closes with a code: the server sees it.
        async with open_websocket_url(ws_url(server)) as ws:
            await ws.send_message("x")
            await ws.get_message()
            await ws.aclose(code=4321, reason="bye")
        while not echo.close_codes:
            await trio.sleep(0.01)
        assert echo.close_codes == [4321]
        # Server closes with a code: the client sees it.
        async with open_websocket_url(ws_url(server)) as ws:
            await ws.send_message("close-please")
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 4001
            assert info.value.reason.reason == "asked to"


async def test_many_concurrent_sockets(nursery: trio.Nursery) -> None:
    echo = await start_echo(nursery)
    server = await proxy_to(nursery, echo)

    async def chat(i: int) -> None:
        async with open_websocket_url(ws_url(server)) as ws:
            for j in range(5):
                await ws.send_message(f"{i}-{j}")
                assert await ws.get_message() == f"{i}-{j}"

    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            for i in range(20):
                inner.start_soon(chat, i)
    assert counter(server, "http.ingress_http.downstream_cx_upgrades_total") == 20


async def test_upgrade_disabled_on_route_is_403(nursery: trio.Nursery) -> None:
    echo = await start_echo(nursery)
    server = await proxy_to(nursery, echo, allow_upgrades=False)
    async with httpx.AsyncClient() as c:
        r = await c.get(
            ws_url(server).replace("ws://", "http://"),
            headers={
                "connection": "upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
    assert r.status_code == 403
    assert echo.paths == []


async def test_upstream_refusing_the_upgrade_is_relayed(nursery: trio.Nursery) -> None:
    """A plain HTTP upstream answers the upgrade request with a normal response;
    the client gets it and the connection stays HTTP."""
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        url = f"http://127.0.0.1:{server.listener_address('ingress').port}/"
        r = await c.get(url, headers={"connection": "upgrade", "upgrade": "websocket"})
        assert r.status_code == 200
        seen = r.json()["headers"]
        assert seen["upgrade"] == "websocket"
        assert seen["connection"] == "upgrade"
        assert (await c.get(url)).status_code == 200


async def test_websocket_over_h2_extended_connect(nursery: trio.Nursery) -> None:
    """RFC 8441: an h2 client's extended CONNECT reaches an HTTP/1.1
    WebSocket upstream as an upgrade; frames flow in DATA frames."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection, Message, TextMessage

    from tests.h2client import H2Client
    from trioproxy.config import HttpConnectionManager

    echo = await start_echo(nursery)
    mesh = simple_mesh([route_to("ws")], [cluster("ws", f"127.0.0.1:{echo.port}")])
    listener = mesh.listeners[0]
    (chain,) = listener.filter_chains
    (hcm,) = chain.filters
    assert isinstance(hcm, HttpConnectionManager)
    import attrs

    hcm = attrs.evolve(hcm, allow_connect=True)
    mesh = attrs.evolve(
        mesh,
        listeners=(attrs.evolve(listener, filter_chains=(attrs.evolve(chain, filters=(hcm,)),)),),
    )
    server = await start_proxy(nursery, mesh)
    port = server.listener_address("ingress").port
    with trio.fail_after(10):
        async with await H2Client.connect(port) as c:
            await c.remote_settings_received.wait()
            assert c.conn.remote_settings.enable_connect_protocol == 1
            sid = await c.start(
                "CONNECT",
                "/chat",
                headers=[(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")],
                end_stream=False,
            )
            pending = c.pending[sid]
            await pending.got_headers.wait()
            assert pending.response.status == 200
            ws = Connection(ConnectionType.CLIENT)
            await c.send_body(sid, ws.send(Message(data="over h2")), end=False)
            got: list[str] = []
            seen = 0
            while not got:
                await trio.sleep(0.01)
                if len(pending.body) > seen:
                    ws.receive_data(bytes(pending.body[seen:]))
                    seen = len(pending.body)
                    got += [e.data for e in ws.events() if isinstance(e, TextMessage)]
            assert got == ["over h2"]
            await c.send_body(sid, ws.send(CloseConnection(code=1000)), end=False)
    assert echo.paths == ["/chat"]
    assert counter(server, "http.ingress_http.downstream_cx_upgrades_total") == 1
