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
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
import trio
import trio.testing

from tests.conftest import cluster, counter, gauge, grpc_mesh, start_proxy
from tests.memnet import MemoryNetwork
from tests.tls_certs import Pki
from trioproxy.codec.grpc_health import (
    ServingStatus,
    decode_request,
    encode_request,
    encode_response,
)
from trioproxy.config import (
    CertificateValidation,
    GrpcHealthCheck,
    HealthCheck,
    Mesh,
    TcpHealthCheck,
    UpstreamTlsContext,
)
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
    """A real grpcio server with test.Echo/Who and grpc.health.v1.Health/Check
    (TLS with `tls=(cert_pem, key_pem)`)."""

    def __init__(self, name: str, tls: tuple[bytes, bytes] | None = None) -> None:
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
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)

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


async def test_grpc_check_over_tls(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A TLS cluster's gRPC check handshakes (SNI, CA check, ALPN h2) first."""
    pki = Pki(tmp_path)
    leaf = pki.issue("grpc.internal")
    hs = HealthServer("tls", tls=(Path(leaf.cert).read_bytes(), Path(leaf.key).read_bytes()))
    hs.server.start()
    try:
        tls = UpstreamTlsContext(
            sni="grpc.internal",
            validation=CertificateValidation(trusted_ca_file=pki.ca_file),
            alpn_protocols=("h2",),
        )
        hc = HealthCheck(
            checker=GrpcHealthCheck(service_name="svc"),
            interval=0.05,
            no_traffic_interval=0.05,
            timeout=2.0,
            unhealthy_threshold=1,
        )
        c = cluster("t", f"127.0.0.1:{hs.port}", protocol="http2", tls=tls, health_check=hc)
        server = await start_proxy(nursery, Mesh(clusters=(c,)))
        await _wait_for(lambda: counter(server, "cluster.t.health_check.success") >= 2, "ok")
        assert counter(server, "cluster.t.ssl.handshake") >= 2
        hs.set_status("svc", ServingStatus.NOT_SERVING)
        await _wait_for(lambda: gauge(server, "cluster.t.membership_healthy") == 0, "fails")
        assert counter(server, "cluster.t.health_check.network_failure") == 0
    finally:
        hs.server.stop(grace=None)


async def _h2_health_server(
    net: MemoryNetwork, port: int, seen: list[dict[bytes, bytes]], answer: bytes
) -> None:
    """A scripted HTTP/2 gRPC server (the h2 library, server side): records
    each request's headers and answers with `answer` as the message."""
    import h2.config
    import h2.connection
    import h2.events

    from trioproxy.codec.grpc_health import frame

    listener, _ = await net.listen_tcp("127.0.0.1", port)

    async def handle(stream: trio.abc.Stream) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        while data := await stream.receive_some(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    seen.append({bytes(k): bytes(v) for k, v in ev.headers})
                elif isinstance(ev, h2.events.StreamEnded):
                    sid = ev.stream_id
                    conn.send_headers(
                        sid, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                    )
                    conn.send_data(sid, frame(answer))
                    conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            await stream.send_all(conn.data_to_send())

    async with trio.open_nursery() as n:
        while True:
            n.start_soon(handle, await listener.accept())


async def test_grpc_request_shape_and_answers(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    seen: list[dict[bytes, bytes]] = []
    async with trio.open_nursery() as n:
        n.start_soon(_h2_health_server, net, 7101, seen, encode_response(ServingStatus.SERVING))
        n.start_soon(_h2_health_server, net, 7102, [], encode_response(ServingStatus.UNKNOWN))
        n.start_soon(_h2_health_server, net, 7103, [], b"\x08")  # truncated message
        await trio.sleep(0)
        hc = HealthCheck(
            checker=GrpcHealthCheck(service_name="pkg.Svc"),
            interval=1.0,
            no_traffic_interval=1.0,
            unhealthy_threshold=1,
        )
        mesh = Mesh(
            clusters=(
                cluster(
                    "g",
                    "127.0.0.1:7101",
                    "127.0.0.1:7102",
                    "127.0.0.1:7103",
                    protocol="http2",
                    health_check=hc,
                ),
            )
        )
        server = await start_proxy(n, mesh, net)
        await trio.sleep(1.5)
        hosts = server.clusters.get("g").hosts  # type: ignore[union-attr]
        assert [h.healthy for h in hosts] == [True, False, False]
        req = seen[0]
        assert req[b":method"] == b"POST"
        assert req[b":path"] == b"/grpc.health.v1.Health/Check"
        assert req[b":authority"] == b"g"  # the cluster name by default
        assert req[b":scheme"] == b"http"
        assert req[b"content-type"] == b"application/grpc"
        assert req[b"te"] == b"trailers"
        n.cancel_scope.cancel()
