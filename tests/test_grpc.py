"""gRPC through the proxy with a real grpcio client and server.

The server registers raw-bytes handlers (no generated stubs) for the four
call shapes, a slow method and a failing one; the client is a grpcio
channel to the proxy's listener (h2c prior knowledge), run in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
import trio

from tests.conftest import counter, grpc_mesh, settle, start_proxy
from tests.h2client import H2Client
from tests.upstream_h2 import start_upstream_h2
from trioproxy.runtime.server import Server


def _unary(request: bytes, context: Any) -> bytes:
    context.send_initial_metadata((("x-initial", "1"),))
    context.set_trailing_metadata((("x-trailing", "2"),))
    return b"echo:" + request


def _server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"item-%d" % i


def _client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    return b"+".join(requests)


def _bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for r in requests:
        yield r.upper()


def _sleep(request: bytes, context: Any) -> bytes:
    """A slow method: answers after `request` seconds, or returns as soon as
    the call is cancelled (the client's deadline), whichever comes first."""
    cancelled = threading.Event()
    context.add_callback(cancelled.set)
    cancelled.wait(float(request))
    return b"slept"


def _fail(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request: " + request.decode())
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture
def grpc_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def port_of(server: Server) -> int:
    return server.listener_address("ingress").port


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def test_four_call_shapes(nursery: trio.Nursery, grpc_server: int) -> None:
    server = await start_proxy(nursery, grpc_mesh(f"127.0.0.1:{grpc_server}"))

    def calls() -> dict[str, Any]:
        with grpc.insecure_channel(f"127.0.0.1:{port_of(server)}") as ch:
            unary = ch.unary_unary("/test.Echo/Unary")
            resp, call = unary.with_call(b"hi", timeout=10)
            out: dict[str, Any] = {
                "unary": resp,
                "initial": dict(call.initial_metadata()),
                "trailing": dict(call.trailing_metadata()),
            }
            out["server_stream"] = list(
                ch.unary_stream("/test.Echo/ServerStream")(b"5", timeout=10)
            )
            out["client_stream"] = ch.stream_unary("/test.Echo/ClientStream")(
                iter([b"a", b"b", b"c"]), timeout=10
            )
            out["bidi"] = list(ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=10))
            big = bytes(range(256)) * 4096  # 1 MiB crosses windows and frames
            out["big"] = unary(big, timeout=10) == b"echo:" + big
            return out

    out = await in_thread(calls)
    assert out["unary"] == b"echo:hi"
    assert out["initial"]["x-initial"] == "1"
    assert out["trailing"]["x-trailing"] == "2"
    assert out["server_stream"] == [b"item-%d" % i for i in range(5)]
    assert out["client_stream"] == b"a+b+c"
    assert out["bidi"] == [b"X", b"Y"]
    assert out["big"]
    await settle(server)
    assert counter(server, "cluster.grpc_backend.grpc.test.Echo.Unary.success") == 2
    assert counter(server, "cluster.grpc_backend.grpc.test.Echo.Unary.total") == 2
    assert counter(server, "cluster.grpc_backend.grpc.test.Echo.Bidi.success") == 1
    assert counter(server, "cluster.grpc_backend.upstream_cx_total") == 1


async def test_status_and_message_pass_through(nursery: trio.Nursery, grpc_server: int) -> None:
    server = await start_proxy(nursery, grpc_mesh(f"127.0.0.1:{grpc_server}"))

    def call() -> grpc.RpcError:
        with grpc.insecure_channel(f"127.0.0.1:{port_of(server)}") as ch:
            try:
                ch.unary_unary("/test.Echo/Fail")(b"x", timeout=10)
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("no error")

    err = await in_thread(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "bad request: x"
    await settle(server)
    assert counter(server, "cluster.grpc_backend.grpc.test.Echo.Fail.failure") == 1


async def test_grpc_timeout_sets_the_deadline(nursery: trio.Nursery) -> None:
    """The proxy enforces `grpc-timeout` with a trailers-only DEADLINE_EXCEEDED.

    The upstream is the h2 test server told to hang (a gRPC server would race
    the proxy to enforce the same deadline)."""
    up = await start_upstream_h2(nursery)
    server = await start_proxy(nursery, grpc_mesh(up.address))
    async with await H2Client.connect(port_of(server)) as c:
        with trio.fail_after(5):
            r = await c.request(
                "POST",
                "/test.Echo/Sleep",
                headers=[
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                    (b"grpc-timeout", b"200m"),
                    (b"x-test-hang", b"1"),
                ],
                body=b"\x00\x00\x00\x00\x00",
            )
    assert r.status == 200
    assert r.header(b"grpc-status") == b"4"
    assert r.header(b"grpc-message") == b"upstream request timeout"
    assert r.body == b"" and r.trailers == []  # trailers-only
    await settle(server)
    assert counter(server, "cluster.grpc_backend.upstream_rq_timeout") == 1
    assert counter(server, "cluster.grpc_backend.grpc.test.Echo.Sleep.failure") == 1


async def test_grpcio_client_deadline(nursery: trio.Nursery, grpc_server: int) -> None:
    server = await start_proxy(nursery, grpc_mesh(f"127.0.0.1:{grpc_server}"))

    def call() -> grpc.StatusCode:
        with grpc.insecure_channel(f"127.0.0.1:{port_of(server)}") as ch:
            try:
                ch.unary_unary("/test.Echo/Sleep")(b"2", timeout=0.3)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
        raise AssertionError("no error")

    assert await in_thread(call) == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_unreachable_backend_is_unavailable(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as s:  # a port with nothing listening
        await s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    server = await start_proxy(nursery, grpc_mesh(f"127.0.0.1:{dead}"))

    def call() -> tuple[grpc.StatusCode, str]:
        with grpc.insecure_channel(f"127.0.0.1:{port_of(server)}") as ch:
            try:
                ch.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        raise AssertionError("no error")

    code, details = await in_thread(call)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "connection failure" in details


async def test_grpc_route_ignores_plain_http(nursery: trio.Nursery, grpc_server: int) -> None:
    server = await start_proxy(nursery, grpc_mesh(f"127.0.0.1:{grpc_server}"))
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://127.0.0.1:{port_of(server)}/test.Echo/Unary", content=b"x")
    assert r.status_code == 404
