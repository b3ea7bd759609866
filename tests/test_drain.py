"""Graceful drain: SIGTERM/SIGINT, `Server.shutdown(graceful=True)` and
admin `POST /drain_listeners`.

A drain stops accepting (the listening socket closes), closes HTTP/1.1
connections idle between requests, answers busy ones with
`connection: close`, sends GOAWAY on HTTP/2, and lets requests in flight
finish. A graceful shutdown then exits as soon as the last connection
closes, or after the drain time. Timing runs on a MockClock where the
in-memory network allows it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import cluster, gauge, route_to, simple_mesh, start_upstream
from tests.memnet import MemoryNetwork, RawClient
from tests.test_cli import REPO
from tests.test_h2_conformance import RawH2, is_goaway
from trioproxy.config import Mesh
from trioproxy.net.errors import ConnectFailure
from trioproxy.runtime.server import Server


async def _run(nursery: trio.Nursery, server: Server, done: trio.Event) -> None:
    async def run() -> None:
        await server.run()
        done.set()

    nursery.start_soon(run)
    while server.state != "LIVE":
        await trio.sleep(0.01)


async def test_graceful_shutdown_finishes_in_flight_then_exits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up", network=net)
        mesh = simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up)])
        server = Server(mesh, network=net, drain_time=600)
        exited = trio.Event()
        await _run(n, server, exited)
        port = server.listener_address("ingress").port
        idle = await RawClient.connect(net, port)
        assert (await idle.request()).status == 200  # now idle, keep-alive
        busy = await RawClient.connect(net, port)
        answer: list[object] = []

        async def slow() -> None:
            answer.append(await busy.request(headers=[("x-test-delay", "5")]))

        n.start_soon(slow)
        await trio.sleep(1)
        started = trio.current_time()
        server.shutdown(graceful=True)
        assert server.state == "DRAINING"
        # The idle connection is closed at once; new connections are refused.
        assert await idle.closed_by_peer()
        with pytest.raises(ConnectFailure):
            await net.connect_tcp("127.0.0.1", port, timeout=1)
        # The request in flight finishes, told to close.
        await exited.wait()
        r = answer[0]
        assert r.status == 200  # type: ignore[attr-defined]
        assert r.headers["connection"] == "close"  # type: ignore[attr-defined]
        # The server exited when the last connection closed, not at drain time.
        assert trio.current_time() - started < 5
        n.cancel_scope.cancel()


async def test_drain_time_bounds_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up", network=net)
        up.hang_all = True
        mesh = simple_mesh([route_to("svc", timeout=0.0)], [cluster("svc", up)])
        server = Server(mesh, network=net, drain_time=30)
        exited = trio.Event()
        await _run(n, server, exited)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        cut: list[BaseException] = []

        async def hung() -> None:
            try:
                await client.request()
            except Exception as exc:  # the proxy closes it at drain time
                cut.append(exc)

        n.start_soon(hung)
        await trio.sleep(1)
        started = trio.current_time()
        server.shutdown(graceful=True)
        await exited.wait()
        assert 30 <= trio.current_time() - started < 31
        await trio.sleep(0.1)
        assert cut  # the hung request's connection was closed
        n.cancel_scope.cancel()


async def test_http2_connections_get_goaway(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = Server(simple_mesh([route_to("svc")], [cluster("svc", up)]), drain_time=60)
    exited = trio.Event()
    await _run(nursery, server, exited)
    c = await RawH2.connect(server.listener_address("ingress").port)
    await c.request(1, "/inflight", extra=[(b"x-test-delay", b"0.5")])
    await trio.sleep(0.1)
    server.shutdown(graceful=True)
    goaway = await c.expect(is_goaway)
    assert goaway.error_code == 0
    assert (await c.response(1))[0] == 200
    await c.expect_closed()
    with trio.fail_after(10):
        await exited.wait()


def _admin_mesh(up: object) -> Mesh:
    return simple_mesh([route_to("svc")], [cluster("svc", up)], admin=True)  # type: ignore[arg-type]


async def test_admin_drain_listeners(nursery: trio.Nursery) -> None:
    """POST /drain_listeners: /ready answers 503 DRAINING, the listener stops
    accepting, keep-alive connections close, and the server (and its admin)
    keeps running, as in Envoy."""
    up = await start_upstream(nursery)
    server = Server(_admin_mesh(up))
    exited = trio.Event()
    await _run(nursery, server, exited)
    port = server.listener_address("ingress").port
    admin = f"http://{server.admin_bound}"
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"http://127.0.0.1:{port}/")).status_code == 200
        assert (await c.get(admin + "/drain_listeners")).status_code == 405
        assert (await c.post(admin + "/drain_listeners?graceful")).status_code == 200
        r = await c.get(admin + "/ready")
        assert (r.status_code, r.text) == (503, "DRAINING\n")
        info = (await c.get(admin + "/server_info")).json()
        assert info["state"] == "DRAINING"
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")
    assert not exited.is_set()
    await trio.sleep(0.1)
    assert gauge(server, "listener.127.0.0.1_0.downstream_cx_active") == 0
    server.shutdown()
    with trio.fail_after(5):
        await exited.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_then_exits_zero(
    nursery: trio.Nursery, tmp_path: Path, signum: signal.Signals
) -> None:
    """`trioproxy serve`: a request in flight when the signal arrives gets
    its answer; the process then exits 0 without waiting the drain time."""
    up = await start_upstream(nursery)
    port, admin_port = _free_port(), _free_port()
    (tmp_path / "mesh.py").write_text(
        textwrap.dedent(
            f"""
            from trioproxy.dsl import admin, cluster, listener, mesh, prefix

            MESH = mesh(
                listener("ingress", "127.0.0.1:{port}")
                .route(prefix("/"), cluster("svc", "{up.address}"), timeout=0),
                admin("127.0.0.1:{admin_port}"),
            )
            """
        )
    )
    err = tmp_path / "serve.err"
    with err.open("wb") as e:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioproxy", "serve", str(tmp_path / "mesh.py")],
            stderr=e,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        async with httpx.AsyncClient() as c:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await c.get(f"http://127.0.0.1:{admin_port}/ready")).text == "LIVE\n":
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
            results: list[httpx.Response] = []

            async def slow() -> None:
                results.append(
                    await c.get(f"http://127.0.0.1:{port}/slow", headers={"x-test-delay": "1"})
                )

            async with trio.open_nursery() as inner:
                inner.start_soon(slow)
                with trio.fail_after(10):
                    while not any(r["path"] == "/slow" for r in up.requests):
                        await trio.sleep(0.01)
                proc.send_signal(signum)
            assert results[0].status_code == 200
            assert json.loads(results[0].text)["path"] == "/slow"
            assert results[0].headers["connection"] == "close"
        with trio.fail_after(10):
            code = await proc.wait()
        assert code == 0, err.read_text()
        assert "draining" in err.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
