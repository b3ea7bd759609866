"""Resource limits: a listener's connection limit, the overload manager's
actions, and the accept loop surviving EMFILE.

The limit and overload tests run the whole proxy on the in-memory network
under a MockClock, so the overload manager's 250 ms sampling is instant and
deterministic. The EMFILE test runs `trioproxy serve` as a subprocess with
a lowered RLIMIT_NOFILE.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from trioproxy.dsl import direct_response, listener, mesh, overload, prefix

from tests.conftest import answers, counter, gauge, poll_until, start_proxy
from tests.memnet import MemoryNetwork, RawClient
from tests.test_cli import REPO
from trioproxy.runtime.server import Server

L = "listener.127.0.0.1_0."


def _mesh(*extra: object, max_connections: int | None = None) -> object:
    lb = listener("ingress", "127.0.0.1:0").route(prefix("/"), direct_response(200, "ok"))
    if max_connections is not None:
        lb = lb.max_connections(max_connections)
    return mesh(lb, *extra).compile()  # type: ignore[arg-type]


async def _start(nursery: trio.Nursery, net: MemoryNetwork, m: object) -> tuple[Server, int]:
    server = await start_proxy(nursery, m, net)  # type: ignore[arg-type]
    return server, server.listener_address("ingress").port


async def test_listener_connection_limit(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        server, port = await _start(n, net, _mesh(max_connections=2))
        a = await RawClient.connect(net, port)
        b = await RawClient.connect(net, port)
        assert (await a.request()).status == 200
        assert (await b.request()).status == 200
        # A third connection is closed at accept, before a byte is read.
        c = await RawClient.connect(net, port)
        assert await c.closed_by_peer()
        assert counter(server, L + "downstream_cx_overflow") == 1
        assert gauge(server, L + "downstream_cx_active") == 2
        # The first two are unaffected; once one leaves there is room again.
        assert (await a.request()).status == 200
        await b.stream.aclose()
        await trio.sleep(0.1)
        d = await RawClient.connect(net, port)
        assert (await d.request()).status == 200
        n.cancel_scope.cancel()


async def test_stop_accepting_requests_on_connection_pressure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Monitor: 4 connections at most; stop_accepting_requests at 75 %."""
    net = MemoryNetwork()
    m = _mesh(overload(max_connections=4, stop_accepting_requests=0.75))
    async with trio.open_nursery() as n:
        server, port = await _start(n, net, m)
        clients = [await RawClient.connect(net, port) for _ in range(2)]
        await trio.sleep(0.3)  # one sampling period
        assert (await clients[0].request()).status == 200  # 2/4: below the threshold
        clients.append(await RawClient.connect(net, port))
        await trio.sleep(0.3)  # 3/4 = 75 %: the action turns on
        r = await clients[2].request()
        assert r.status == 503
        assert r.body == b"envoy overloaded"
        assert counter(server, "http.ingress.downstream_rq_overload_close") == 1
        active = "overload.envoy.overload_actions.stop_accepting_requests.active"
        assert gauge(server, active) == 1
        pressure = "overload.envoy.resource_monitors.global_downstream_max_connections.pressure"
        assert gauge(server, pressure) == 75
        # Pressure falls: requests are served again.
        await clients[1].stream.aclose()
        await clients[2].stream.aclose()
        await trio.sleep(0.3)
        assert gauge(server, active) == 0
        assert (await clients[0].request()).status == 200
        n.cancel_scope.cancel()


async def test_disable_http_keepalive(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    m = _mesh(overload(max_connections=10, disable_http_keepalive=0.2))
    async with trio.open_nursery() as n:
        _server, port = await _start(n, net, m)
        a = await RawClient.connect(net, port)
        await trio.sleep(0.3)  # 1/10: keep-alive still on
        r = await a.request()
        assert r.status == 200 and "connection" not in r.headers
        b = await RawClient.connect(net, port)
        await trio.sleep(0.3)  # 2/10 = 20 %: keep-alive off
        r = await b.request()
        assert r.status == 200
        assert r.headers["connection"] == "close"
        assert await b.closed_by_peer()
        n.cancel_scope.cancel()


async def test_heap_monitor_and_stop_accepting_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A heap limit far below the process's resident memory: pressure is
    past 100 %, so new connections are closed at accept."""
    net = MemoryNetwork()
    m = _mesh(overload(max_heap="1MiB", stop_accepting_connections=0.9))
    async with trio.open_nursery() as n:
        server, port = await _start(n, net, m)
        await trio.sleep(0.3)
        c = await RawClient.connect(net, port)
        assert await c.closed_by_peer()
        assert counter(server, L + "downstream_cx_overload_reject") == 1
        assert gauge(server, "overload.envoy.resource_monitors.fixed_heap.pressure") == 100
        n.cancel_scope.cancel()


def test_overload_dsl_errors() -> None:
    from trioproxy.dsl import MeshError

    with pytest.raises(MeshError) as err:
        mesh(
            listener("l", "127.0.0.1:0")
            .max_connections(0)
            .route(prefix("/"), direct_response(200, "x")),
            overload(max_heap="12XB", stop_accepting_requests=1.5),
        ).compile()
    text = str(err.value)
    assert "test_overload.py:" in text
    assert "bad listener 'l' max_connections 0" in text
    assert "bad size '12XB' for overload max_heap" in text
    assert "overload() needs a monitor" in text
    assert "bad stop_accepting_requests threshold 1.5" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_accept_loop_survives_emfile(tmp_path: Path) -> None:
    """`trioproxy serve` with RLIMIT_NOFILE 64: 100 clients exhaust its file
    descriptors; accept fails with EMFILE, is logged and retried after a
    back-off, and once the clients leave a new request is served."""
    port, admin_port = _free_port(), _free_port()
    (tmp_path / "mesh.py").write_text(
        textwrap.dedent(
            f"""
            from trioproxy.dsl import admin, direct_response, listener, mesh, prefix

            MESH = mesh(
                listener("ingress", "127.0.0.1:{port}")
                .route(prefix("/"), direct_response(200, "ok")),
                admin("127.0.0.1:{admin_port}"),
            )
            """
        )
    )

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            # One process: the accept loop under test, not the supervisor.
            [
                sys.executable,
                "-m",
                "trioproxy",
                "serve",
                str(tmp_path / "mesh.py"),
                "--workers",
                "1",
            ],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            preexec_fn=low_limit,
        )
    try:
        poll_until(
            lambda: answers(f"http://127.0.0.1:{admin_port}/ready"),
            "admin to answer",
            30,
            proc=proc,
            output=err.read_text,
        )
        held = []
        for _ in range(100):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        poll_until(lambda: "EMFILE" in err.read_text(), "EMFILE in the log", timeout=10)
        assert proc.poll() is None  # still running
        for s in held:
            s.close()
        poll_until(lambda: answers(f"http://127.0.0.1:{port}/"), "accepting again", 10)
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
        assert r.status_code == 200 and r.text == "ok"
        assert "retrying in" in err.read_text()
    finally:
        proc.kill()
        proc.wait(timeout=10)
