"""The examples in examples/, loaded from their files and run with real peers.

The examples use fixed, documented ports (8000, 8001, 10000, ...). Tests
cannot rely on those being free, so `rebind` maps every port in the compiled
mesh to a free one, consistently (a demo service and the cluster pointing at
it move together), and the test starts its peers on the mapped ports.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import attrs
import grpc
import httpx
import pytest
import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket
from trioproxy.dsl import load_mesh

from tests.conftest import start_proxy
from trioproxy.config import Mesh, SocketAddress

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rebind(mesh: Mesh) -> tuple[Mesh, dict[int, int]]:
    """`mesh` with every port replaced by a free one; returns the mapping."""
    mapping: dict[int, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, SocketAddress):
            if value.port not in mapping:
                mapping[value.port] = _free_port()
            return attrs.evolve(value, port=mapping[value.port])
        if isinstance(value, tuple):
            return tuple(walk(v) for v in value)
        if attrs.has(type(value)):
            changes = {}
            for f in attrs.fields(type(value)):
                if not f.init:
                    continue
                old = getattr(value, f.name)
                new = walk(old)
                if new is not old:
                    changes[f.alias or f.name] = new
            return attrs.evolve(value, **changes) if changes else value
        return value

    return walk(mesh), mapping


def test_every_example_validates() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert {"front_proxy.py", "grpc_mesh.py", "websocket.py"} <= set(names)
    for name in names:
        load_mesh(str(EXAMPLES / name))  # raises MeshError with file:line on a mistake


async def test_front_proxy_example(nursery: trio.Nursery) -> None:
    mesh, ports = rebind(load_mesh(str(EXAMPLES / "front_proxy.py")))
    server = await start_proxy(nursery, mesh)
    base = f"http://127.0.0.1:{ports[8000]}"
    async with httpx.AsyncClient() as c:
        for n in (1, 2):
            r = await c.get(f"{base}/service/{n}")
            assert r.status_code == 200
            assert r.text.startswith(f"Hello from behind trioproxy (service {n})! hostname: ")
        assert (await c.get(f"{base}/nope")).status_code == 404
        ready = await c.get(f"http://127.0.0.1:{ports[8001]}/ready")
        assert ready.text == "LIVE\n"
    assert server.stats.counters["cluster.service1.upstream_rq_2xx"].value == 1


@pytest.fixture
def grpc_backend_port() -> Iterator[int]:
    port = _free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "demo.Greeter",
        {"Hello": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"hello, " + req)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


async def test_grpc_mesh_example(nursery: trio.Nursery, grpc_backend_port: int) -> None:
    mesh = load_mesh(str(EXAMPLES / "grpc_mesh.py"))
    mesh, ports = rebind(mesh)
    # Point the mapped backend port at the real gRPC server.
    backend = ports[50551]
    mesh, _ = _retarget(mesh, backend, grpc_backend_port)
    await start_proxy(nursery, mesh)

    def call() -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{ports[10000]}") as ch:
            return ch.unary_unary("/demo.Greeter/Hello")(b"mesh", timeout=10)  # type: ignore[no-any-return]

    assert await trio.to_thread.run_sync(call) == b"hello, mesh"


def _retarget(mesh: Mesh, old: int, new: int) -> tuple[Mesh, None]:
    clusters = tuple(
        attrs.evolve(
            c,
            endpoints=tuple(
                attrs.evolve(e, address=attrs.evolve(e.address, port=new))
                if e.address.port == old
                else e
                for e in c.endpoints
            ),
        )
        for c in mesh.clusters
    )
    return attrs.evolve(mesh, clusters=clusters), None


async def test_websocket_example(nursery: trio.Nursery) -> None:
    mesh, ports = rebind(load_mesh(str(EXAMPLES / "websocket.py")))

    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(await ws.get_message())

    async def serve(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_websocket(
            echo, "127.0.0.1", ports[9002], ssl_context=None, task_status=task_status
        )

    await nursery.start(serve)
    await start_proxy(nursery, mesh)
    with trio.fail_after(10):
        async with open_websocket_url(f"ws://127.0.0.1:{ports[10001]}/anything") as ws:
            await ws.send_message("ping")
            assert await ws.get_message() == "ping"


async def test_resilient_mesh_example(nursery: trio.Nursery) -> None:
    """examples/resilient_mesh.py as a user runs it: its demo services, the
    retried + hedged /api route, the racing /search route, the sticky
    /profile route, the LB health endpoint and the /clusters flags."""
    mesh, ports = rebind(load_mesh(str(EXAMPLES / "resilient_mesh.py")))
    server = await start_proxy(nursery, mesh)
    base = f"http://127.0.0.1:{ports[10000]}"
    admin = f"http://127.0.0.1:{ports[9901]}"
    async with httpx.AsyncClient() as c:
        for _ in range(3):
            r = await c.get(f"{base}/api/orders")
            assert r.status_code == 200 and "(api " in r.text
        r = await c.get(f"{base}/search?q=trio")
        assert r.status_code == 200 and "(search " in r.text
        # The same user always reaches the same profiles host.
        seen = {
            (await c.get(f"{base}/profile", headers={"x-user-id": "42"})).text for _ in range(6)
        }
        assert len(seen) == 1 and "(profiles " in seen.pop()
        # Without the header the proxy sets the session cookie.
        r = await c.get(f"{base}/profile")
        assert r.headers["set-cookie"].startswith('session="')
        # The load balancer's probe, answered by the proxy itself.
        assert (await c.get(f"{base}/lb-health")).status_code == 200
        assert (await c.post(f"{admin}/healthcheck/fail")).status_code == 200
        r = await c.get(f"{base}/lb-health")
        assert r.status_code == 503
        assert r.headers["x-envoy-immediate-health-check-fail"] == "true"
        assert (await c.get(f"{base}/api/x")).status_code == 200  # traffic still flows
        assert (await c.post(f"{admin}/healthcheck/ok")).status_code == 200
        assert (await c.get(f"{base}/lb-health")).status_code == 200
        # Every host is listed, healthy.
        text = (await c.get(f"{admin}/clusters")).text
        for port in (8101, 8102, 8103, 8104, 8105, 8106, 8107, 8108):
            assert f"127.0.0.1:{ports[port]}::health_flags::healthy" in text
    assert server.stats.counters["cluster.api.upstream_rq_2xx"].value >= 4
