"""TCP and gRPC active health checks.

TCP on MockClock over the in-memory network (byte-level servers we script);
gRPC against real grpcio servers on 127.0.0.1 whose Health service is
written with grpcio's generic handlers and our own message codec (the
grpcio-health-checking package is not installed). Flipping a server to
NOT_SERVING takes its host out of the balancer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import attrs
import grpc
import pytest
import trio
import trio.testing

from tests.conftest import cluster, counter, gauge, grpc_mesh, start_proxy
from tests.memnet import MemoryNetwork
from trioproxy.codec.grpc_health import (
    ServingStatus,
    decode_request,
    encode_request,
    encode_response,
)
from trioproxy.config import GrpcHealthCheck, HealthCheck, Mesh, TcpHealthCheck
from trioproxy.upstream.health_check import receive_matched

# --------------------------------------------------------------------------- TCP


def test_receive_matching_is_ordered_and_fuzzy() -> None:
    assert receive_matched(b"", ())
    assert receive_matched(b"xxPOyyNGzz", (b"PO", b"NG"))
    assert not receive_matched(b"NGPO", (b"PO", b"NG"))
    assert not receive_matched(b"PONG", (b"PONG", b"G"))  # blocks do not overlap
    assert receive_matched(b"PONGG", (b"PONG", b"G"))


async def _tcp_server(
    net: MemoryNetwork, port: int, reply: list[bytes], seen: list[bytes], close: bool = False
) -> None:
    """Answer each connection: read once, then write `reply` chunk by chunk."""
    listener, _ = await net.listen_tcp("127.0.0.1", port)
    async with trio.open_nursery() as n:

        async def handle(stream: trio.abc.Stream) -> None:
            async with stream:
                if reply or close:
                    seen.append(bytes(await stream.receive_some(1024)))
                for chunk in reply:
                    await stream.send_all(chunk)
                    await trio.sleep(0.01)
                if not close:
                    await trio.sleep_forever()

        while True:
            n.start_soon(handle, await listener.accept())


def _tcp_mesh(hc: HealthCheck, *ports: int) -> Mesh:
    return Mesh(clusters=(cluster("tcp", *(f"127.0.0.1:{p}" for p in ports), health_check=hc),))


async def test_tcp_send_and_expect_in_pieces(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    good_seen: list[bytes] = []
    bad_seen: list[bytes] = []
    async with trio.open_nursery() as n:
        # Good: answers "PONG" in three pieces with noise between the blocks.
        n.start_soon(_tcp_server, net, 7001, [b"PO", b"--", b"NG"], good_seen)
        # Bad: answers something else and keeps the connection open.
        n.start_soon(_tcp_server, net, 7002, [b"NOPE"], bad_seen)
        await trio.sleep(0)
        tcp = TcpHealthCheck(send=b"PING", receive=(b"PO", b"NG"))
        hc = HealthCheck(
            checker=tcp, interval=1.0, no_traffic_interval=1.0, timeout=0.5, unhealthy_threshold=2
        )
        server = await start_proxy(n, _tcp_mesh(hc, 7001, 7002), net)
        await trio.sleep(2.5)
        assert good_seen[0] == b"PING" and bad_seen[0] == b"PING"
        hosts = server.clusters.get("tcp").hosts  # type: ignore[union-attr]
        assert [h.healthy for h in hosts] == [True, False]
        assert gauge(server, "cluster.tcp.membership_healthy") == 1
        assert counter(server, "cluster.tcp.health_check.success") >= 3
        # A wrong answer that never completes the match times out: Envoy
        # counts that as a network failure.
        assert counter(server, "cluster.tcp.health_check.network_failure") >= 2
        n.cancel_scope.cancel()


async def test_tcp_connect_only_and_refused(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        n.start_soon(_tcp_server, net, 7003, [], [])
        await trio.sleep(0)
        hc = HealthCheck(
            checker=TcpHealthCheck(), interval=1.0, no_traffic_interval=1.0, unhealthy_threshold=1
        )
        server = await start_proxy(n, _tcp_mesh(hc, 7003, 7004), net)  # nobody on 7004
        await trio.sleep(1.5)
        hosts = server.clusters.get("tcp").hosts  # type: ignore[union-attr]
        assert [h.healthy for h in hosts] == [True, False]
        assert counter(server, "cluster.tcp.health_check.network_failure") >= 2
        assert counter(server, "cluster.tcp.health_check.failure") == counter(
            server, "cluster.tcp.health_check.network_failure"
        )
        n.cancel_scope.cancel()


async def test_tcp_peer_closing_early_fails(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        n.start_soon(_tcp_server, net, 7005, [b"PO"], [], True)
        await trio.sleep(0)
        tcp = TcpHealthCheck(send=b"PING", receive=(b"PONG",))
        hc = HealthCheck(checker=tcp, interval=1.0, no_traffic_interval=1.0, unhealthy_threshold=1)
        server = await start_proxy(n, _tcp_mesh(hc, 7005), net)
        await trio.sleep(0.5)
        assert not server.clusters.get("tcp").hosts[0].healthy  # type: ignore[union-attr]
        n.cancel_scope.cancel()


# --------------------------------------------------------------------------- gRPC


class HealthServer:
    """A real grpcio server with test.Echo/Who and grpc.health.v1.Health/Check."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status: dict[str, int] = {"": ServingStatus.SERVING, "svc": ServingStatus.SERVING}
        self.checks: list[str] = []  # the services asked about
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check,
                    request_deserializer=decode_request,
                    response_serializer=encode_response,
                )
            },
        )
        echo = grpc.method_handlers_generic_handler(
            "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(self._who)}
        )
        self.server.add_generic_rpc_handlers((health, echo))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _check(self, service: str, context: Any) -> int:
        with self.lock:
            self.checks.append(service)
            status = self.status.get(service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return status  # type: ignore[return-value]

    def _who(self, request: bytes, context: Any) -> bytes:
        return self.name.encode()

    def set_status(self, service: str, status: int) -> None:
        with self.lock:
            self.status[service] = status


@pytest.fixture
def health_servers() -> Iterator[list[HealthServer]]:
    servers = [HealthServer("a"), HealthServer("b")]
    for s in servers:
        s.server.start()
    try:
        yield servers
    finally:
        for s in servers:
            s.server.stop(grace=None)


def _grpc_health_mesh(servers: list[HealthServer], check: GrpcHealthCheck) -> Mesh:
    hc = HealthCheck(
        checker=check, interval=0.05, no_traffic_interval=0.05, timeout=2.0, unhealthy_threshold=2
    )
    base = grpc_mesh(f"127.0.0.1:{servers[0].port}")
    c = cluster(
        "grpc_backend",
        *(f"127.0.0.1:{s.port}" for s in servers),
        protocol="http2",
        health_check=hc,
    )
    return attrs.evolve(base, clusters=(c,))


async def _wait_for(cond: Any, what: str) -> None:
    with trio.fail_after(10):
        while not cond():
            await trio.sleep(0.02)


async def test_grpc_not_serving_leaves_the_balancer(
    nursery: trio.Nursery, health_servers: list[HealthServer]
) -> None:
    a = health_servers[0]
    server = await start_proxy(
        nursery, _grpc_health_mesh(health_servers, GrpcHealthCheck(service_name="svc"))
    )
    port = server.listener_address("ingress").port
    await _wait_for(
        lambda: counter(server, "cluster.grpc_backend.health_check.success") >= 4, "checks"
    )
    assert a.checks[0] == "svc"

    def whos(n: int) -> set[bytes]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            who = ch.unary_unary("/test.Echo/Who")
            return {who(b"", timeout=5) for _ in range(n)}

    assert await trio.to_thread.run_sync(whos, 8) == {b"a", b"b"}
    a.set_status("svc", ServingStatus.NOT_SERVING)
    await _wait_for(
        lambda: gauge(server, "cluster.grpc_backend.membership_healthy") == 1, "a leaves"
    )
    hosts = server.clusters.get("grpc_backend").hosts  # type: ignore[union-attr]
    assert [h.healthy for h in hosts] == [False, True]
    assert await trio.to_thread.run_sync(whos, 8) == {b"b"}
    # A's network was fine: these are plain failures.
    assert counter(server, "cluster.grpc_backend.health_check.network_failure") == 0
    a.set_status("svc", ServingStatus.SERVING)
    await _wait_for(
        lambda: gauge(server, "cluster.grpc_backend.membership_healthy") == 2, "a returns"
    )


async def test_grpc_unknown_service_and_authority(
    nursery: trio.Nursery, health_servers: list[HealthServer]
) -> None:
    a, b = health_servers
    check = GrpcHealthCheck(service_name="nope", authority="health.internal")
    server = await start_proxy(nursery, _grpc_health_mesh(health_servers, check))
    # grpc-status NOT_FOUND: both hosts fail (not a network failure).
    await _wait_for(
        lambda: gauge(server, "cluster.grpc_backend.membership_healthy") == 0, "both fail"
    )
    assert a.checks[0] == "nope"
    assert counter(server, "cluster.grpc_backend.health_check.network_failure") == 0
    b.set_status("nope", ServingStatus.SERVING)
    await _wait_for(
        lambda: gauge(server, "cluster.grpc_backend.membership_healthy") == 1, "b passes"
    )


async def test_grpc_check_of_a_dead_host_is_a_network_failure(nursery: trio.Nursery) -> None:
    hc = HealthCheck(
        checker=GrpcHealthCheck(), interval=0.05, no_traffic_interval=0.05, unhealthy_threshold=1
    )
    mesh = Mesh(clusters=(cluster("g", "127.0.0.1:1", protocol="http2", health_check=hc),))
    server = await start_proxy(nursery, mesh)
    await _wait_for(lambda: counter(server, "cluster.g.health_check.network_failure") >= 2, "nf")
    assert not server.clusters.get("g").hosts[0].healthy  # type: ignore[union-attr]


def test_encode_request_is_what_grpcio_sends() -> None:
    # Sanity: our request bytes parse as what the server receives.
    assert decode_request(encode_request("svc")) == "svc"
