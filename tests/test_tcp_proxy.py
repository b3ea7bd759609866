"""The tcp_proxy network filter, with real TCP peers on 127.0.0.1 (and the
in-memory network under MockClock for the idle timeout).

Echo through the proxy, half-close passed through both ways, connect
failures (503-less: the client's connection is closed, UF logged, the
cluster's `upstream_cx_connect_fail` counted), the idle timeout, load
balancing and weighted clusters, TLS passthrough by SNI (no termination)
and TLS termination in front of a TCP upstream.
"""

from __future__ import annotations

import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trioproxy.dsl import cluster, listener, mesh, tcp_proxy, tls, weighted

from tests.conftest import start_proxy
from tests.memnet import MemoryNetwork
from tests.tls_certs import Pki
from tests.tls_upstreams import TlsEcho
from trioproxy.runtime.server import Server

TIMEOUT = 10


def stat(server: Server, name: str) -> int:
    c = server.stats.counters.get(name)
    if c is not None:
        return c.value
    g = server.stats.gauges.get(name)
    return g.value if g is not None else 0


class TcpUpstream:
    """A TCP server whose behaviour per connection is one of:

    - "echo": echo until EOF, then close;
    - "collect": read until EOF, then send back what it read, reversed, then close;
    - "greet": send `hello from <name>` and EOF (write half closed), then
      record whatever arrives until the client's EOF;
    - "name": send its name and close.
    """

    def __init__(self, name: str, mode: str = "echo", network: Any = None) -> None:
        self.name = name
        self.mode = mode
        self.network = network
        self.port = 0
        self.received: list[bytes] = []
        self.connections = 0
        self.eof_seen = trio.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.network is None:
            listeners: list[Any] = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
        else:
            listener_, (_, self.port) = await self.network.listen_tcp("127.0.0.1", 0)
            listeners = [listener_]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _read_all(self, stream: trio.abc.Stream) -> bytes:
        buf = bytearray()
        while data := await stream.receive_some(65536):
            buf += data
        self.eof_seen.set()
        return bytes(buf)

    async def _handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.connections += 1
        try:
            async with stream:
                if self.mode == "echo":
                    while data := await stream.receive_some(65536):
                        await stream.send_all(data)
                    self.eof_seen.set()
                elif self.mode == "collect":
                    data = await self._read_all(stream)
                    self.received.append(data)
                    await stream.send_all(data[::-1])
                elif self.mode == "greet":
                    await stream.send_all(f"hello from {self.name}".encode())
                    await stream.send_eof()
                    self.received.append(await self._read_all(stream))
                elif self.mode == "name":
                    await stream.send_all(self.name.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def upstream(
    nursery: trio.Nursery, name: str, mode: str = "echo", net: Any = None
) -> TcpUpstream:
    up = TcpUpstream(name, mode, net)
    await nursery.start(up.run)
    return up


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    buf = bytearray()
    while data := await stream.receive_some(65536):
        buf += data
    return bytes(buf)


async def proxy(nursery: trio.Nursery, chain: Any, **kw: Any) -> tuple[Server, int]:
    m = mesh(listener("tcp", "127.0.0.1:0").chain(chain, **kw)).compile()
    server = await start_proxy(nursery, m)
    return server, server.listener_address("tcp").port


async def test_echo_through_proxy(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        up = await upstream(nursery, "echo")
        server, port = await proxy(nursery, tcp_proxy(cluster("echo", up.address), stat_prefix="t"))
        s = await trio.open_tcp_stream("127.0.0.1", port)
        payload = bytes(range(256)) * 4096  # 1 MiB, binary
        got = bytearray()

        async def send() -> None:
            await s.send_all(payload)
            await s.send_eof()

        async with trio.open_nursery() as n:
            n.start_soon(send)
            got += await read_until_eof(s)
        assert bytes(got) == payload
        await s.aclose()
        while stat(server, "cluster.echo.upstream_cx_active"):
            await trio.sleep(0.01)
        assert stat(server, "tcp.t.downstream_cx_total") == 1
        assert stat(server, "tcp.t.downstream_cx_rx_bytes_total") == len(payload)
        assert stat(server, "tcp.t.downstream_cx_tx_bytes_total") == len(payload)
        assert stat(server, "cluster.echo.upstream_cx_total") == 1
        assert stat(server, "cluster.echo.upstream_cx_destroy") == 1


async def test_downstream_half_close_reaches_upstream(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        up = await upstream(nursery, "collector", "collect")
        _, port = await proxy(nursery, tcp_proxy(cluster("c", up.address)))
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"abcdef")
        await s.send_eof()  # our write half only
        # The upstream saw EOF and still answers on the other half.
        assert await read_until_eof(s) == b"fedcba"
        assert up.received == [b"abcdef"]
        await s.aclose()


async def test_upstream_half_close_reaches_client(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        up = await upstream(nursery, "greeter", "greet")
        _, port = await proxy(nursery, tcp_proxy(cluster("g", up.address)))
        s = await trio.open_tcp_stream("127.0.0.1", port)
        # The upstream's EOF arrives, and the other direction stays open.
        assert await read_until_eof(s) == b"hello from greeter"
        await s.send_all(b"still talking")
        await s.send_eof()
        await up.eof_seen.wait()
        assert up.received == [b"still talking"]
        await s.aclose()


async def test_connect_failure_counted_and_logged(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        # A port nobody listens on.
        probe = trio.socket.socket()
        await probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
        probe.close()
        log = tmp_path / "tcp.log"
        chain = tcp_proxy(
            cluster("dead", f"127.0.0.1:{dead}"), stat_prefix="d", max_connect_attempts=2
        ).access_log(str(log), "%RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED%\n")
        server, port = await proxy(nursery, chain)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        assert await read_until_eof(s) == b""
        while not log.exists() or not log.read_text():
            await trio.sleep(0.02)
        assert log.read_text() == "UF,URX dead 0\n"
        assert stat(server, "cluster.dead.upstream_cx_connect_fail") == 2
        assert stat(server, "cluster.dead.upstream_cx_total") == 0
        assert stat(server, "tcp.d.downstream_cx_total") == 1


async def test_access_log_for_a_proxied_connection(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        up = await upstream(nursery, "echo")
        log = tmp_path / "tcp.log"
        chain = tcp_proxy(cluster("echo", up.address)).access_log(
            str(log),
            "%RESPONSE_FLAGS% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %PROTOCOL%\n",
        )
        _, port = await proxy(nursery, chain)
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"12345")
        await s.send_eof()
        assert await read_until_eof(s) == b"12345"
        await s.aclose()
        while not log.exists() or not log.read_text():
            await trio.sleep(0.02)
        assert log.read_text() == f"- {up.address} 5 5 -\n"


async def test_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await upstream(n, "echo", net=net)
        m = mesh(
            listener("tcp", "127.0.0.1:0").chain(
                tcp_proxy(cluster("echo", up.address), stat_prefix="idle", idle_timeout=30)
            )
        ).compile()
        server = await start_proxy(n, m, net)
        s = await net.connect_tcp("127.0.0.1", server.listener_address("tcp").port, timeout=0)
        t0 = trio.current_time()
        # Activity pushes the deadline forward.
        for _ in range(3):
            await trio.sleep(20)
            await s.send_all(b"ping")
            assert await s.receive_some(10) == b"ping"
        assert stat(server, "tcp.idle.idle_timeout") == 0
        assert await s.receive_some(10) == b""  # closed by the idle timeout
        assert trio.current_time() - t0 == 60 + 30
        assert stat(server, "tcp.idle.idle_timeout") == 1
        await trio.testing.wait_all_tasks_blocked()
        assert stat(server, "cluster.echo.upstream_cx_active") == 0
        n.cancel_scope.cancel()


async def test_default_idle_timeout_is_one_hour(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await upstream(n, "echo", net=net)
        m = mesh(
            listener("tcp", "127.0.0.1:0").chain(tcp_proxy(cluster("e", up.address)))
        ).compile()
        assert m.listeners[0].filter_chains[0].filters[0].idle_timeout == 3600  # type: ignore[attr-defined]
        server = await start_proxy(n, m, net)
        s = await net.connect_tcp("127.0.0.1", server.listener_address("tcp").port, timeout=0)
        t0 = trio.current_time()
        assert await s.receive_some(10) == b""
        assert trio.current_time() - t0 == 3600
        n.cancel_scope.cancel()


async def _names(port: int, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        seen[(await read_until_eof(s)).decode()] += 1
        await s.aclose()
    return seen


async def test_load_balancing_across_hosts(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        a = await upstream(nursery, "a", "name")
        b = await upstream(nursery, "b", "name")
        _, port = await proxy(nursery, tcp_proxy(cluster("ab", a.address, b.address)))
        assert await _names(port, 10) == {"a": 5, "b": 5}  # round robin


async def test_weighted_clusters(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        a = await upstream(nursery, "a", "name")
        b = await upstream(nursery, "b", "name")
        chain = tcp_proxy(weighted((cluster("ca", a.address), 3), (cluster("cb", b.address), 1)))
        server, port = await proxy(nursery, chain)
        seen = await _names(port, 120)
        assert seen["a"] + seen["b"] == 120
        assert seen["a"] > seen["b"] > 0
        assert stat(server, "cluster.ca.upstream_cx_total") == seen["a"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tcp-tls"))


async def test_tls_passthrough_by_sni(nursery: trio.Nursery, pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        leaf_a = pki.issue("a.example.test")
        leaf_b = pki.issue("b.example.test")
        echo_a, echo_b = TlsEcho(leaf_a.cert, leaf_a.key), TlsEcho(leaf_b.cert, leaf_b.key)
        await nursery.start(echo_a.run)
        await nursery.start(echo_b.run)
        m = mesh(
            listener("tcp", "127.0.0.1:0")
            .chain(tcp_proxy(cluster("a", echo_a.address)), server_names=["a.example.test"])
            .chain(tcp_proxy(cluster("b", echo_b.address)), server_names=["*.b.example.test",
                                                                          "b.example.test"])
        ).compile()  # fmt: skip
        server = await start_proxy(nursery, m)
        port = server.listener_address("tcp").port
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        for sni, echo in (("a.example.test", echo_a), ("b.example.test", echo_b)):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            s = trio.SSLStream(tcp, ctx, server_hostname=sni)
            await s.do_handshake()  # verified end to end: the upstream's certificate
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            assert subject["commonName"] == sni
            await s.send_all(b"through")
            assert await s.receive_some(100) == b"through"
            await s.aclose()
            assert echo.server_names == [sni]
        # The proxy did not terminate anything.
        assert stat(server, "listener.127.0.0.1_0.ssl.handshake") == 0
        assert stat(server, "tls_inspector.sni_found") == 2


async def test_tls_termination_in_front_of_tcp(nursery: trio.Nursery, pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        leaf = pki.issue("tcp.example.test")
        up = await upstream(nursery, "echo")
        server, port = await proxy(
            nursery, tcp_proxy(cluster("echo", up.address)), tls=tls(leaf.cert, leaf.key)
        )
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        s = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="tcp.example.test"
        )
        await s.send_all(b"secret")
        assert await s.receive_some(100) == b"secret"
        await s.aclose()
        assert stat(server, "listener.127.0.0.1_0.ssl.handshake") == 1
