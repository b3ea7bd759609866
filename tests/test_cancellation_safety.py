"""Cancellation safety: a request cancelled at any checkpoint gives back
every counter, breaker slot and pooled connection it held.

The sweep cancels the downstream connection's task after exactly `k` task
steps of the whole program (counted by a trio instrument), for every `k`
from 1 until the request completes on its own. After each cancel the
cluster's books must balance: no active request, no retry slot, no pending
or dialling reservation, no lent connection (every open upstream connection
is idle in its pool), and no active downstream connection. Runs on a
MockClock over the in-memory network, so it is deterministic.
"""

from __future__ import annotations

import re

import trio
import trio.testing

from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from tests.memnet import MemoryNetwork
from trioproxy.config import CircuitBreakers, RetryPolicy
from trioproxy.runtime.server import Server
from trioproxy.upstream.cluster_manager import ClusterRuntime

REQUEST = (
    b"POST /r HTTP/1.1\r\nhost: example.com\r\ncontent-length: 5\r\nx-test-delay: 0.5\r\n\r\nhello"
)


class _StepCounter(trio.abc.Instrument):
    """Cancels `scope` once `limit` task steps have run."""

    def __init__(self, scope: trio.CancelScope, limit: int) -> None:
        self.scope = scope
        self.limit = limit
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps == self.limit:
            self.scope.cancel()


def _complete(data: bytes | bytearray) -> bool:
    """A whole content-length response is in `data`."""
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def _books(server: Server, c: ClusterRuntime) -> dict[str, int]:
    """Everything a request can hold; all zero when nothing is in flight."""
    st = c.pool_stats
    idle = sum(h.pool.idle_count for h in c.hosts)  # type: ignore[attr-defined]
    hcm = server.listeners["ingress"].hcm
    return {
        "rq_active": c.rq_active.value,
        "retries_active": c.retries_active,
        "host_active": sum(h.active_requests for h in c.hosts),
        "pending": st.pending,
        "dialing": st.dialing,
        "lent_connections": st.cx_active.value - idle,
        "downstream_cx_active": hcm.stats.cx_active.value,
    }


async def _one(server: Server, limit: int) -> tuple[bool, int]:
    """Serve one request, cancelled after `limit` steps; (completed, steps)."""
    hcm = server.listeners["ingress"].hcm
    client, proxy_side = trio.testing.memory_stream_pair()
    got = bytearray()
    async with trio.open_nursery() as n:

        async def read() -> None:
            while not _complete(got):
                data = await client.receive_some(65536)
                if not data:
                    return
                got.extend(data)
            n.cancel_scope.cancel()

        n.start_soon(read)
        with trio.CancelScope() as scope:
            counter = _StepCounter(scope, limit)
            await client.send_all(REQUEST)
            trio.lowlevel.add_instrument(counter)
            try:
                await hcm.serve_connection(
                    proxy_side, remote="127.0.0.1:5555", local="127.0.0.1:8000"
                )
            finally:
                trio.lowlevel.remove_instrument(counter)
        n.cancel_scope.cancel()
    await client.aclose()
    return bytes(got).startswith(b"HTTP/1.1 200"), counter.steps


async def _sweep(server: Server, prepare: object = None) -> int:
    """Cancel at every step count until the request completes; returns the count."""
    c = server.clusters.get("svc")
    assert c is not None
    zero = _books(server, c)
    assert set(zero.values()) == {0}, zero
    limit = 1
    while True:
        if callable(prepare):
            prepare()
        completed, _ = await _one(server, limit)
        # Let anything the cancel left behind (a pool's idle check, the
        # upstream's handler) run out.
        await trio.sleep(5)
        books = _books(server, c)
        assert set(books.values()) == {0}, (limit, books)
        if completed:
            return limit
        limit += 1
        assert limit < 5000, "the request never completed"


async def test_cancel_anywhere_in_a_retried_request(autojump_clock: trio.testing.MockClock) -> None:
    """503 then 200 with a retry policy: the sweep passes through the first
    try, the back-off, and the second try."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up", network=net)
        up2 = await start_upstream(n, "up2", network=net)
        policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2)
        mesh = simple_mesh(
            [route_to("svc", retry_policy=policy)],
            [cluster("svc", up, up2, circuit_breakers=CircuitBreakers(max_retries=8))],
        )
        server = await start_proxy(n, mesh, net)

        def first_fails() -> None:
            up.always_status = None
            up2.always_status = None
            up.next_statuses[:] = [503]
            up2.next_statuses[:] = [503]

        steps = await _sweep(server, first_fails)
        print("retry sweep steps", steps)
        assert steps > 20  # the sweep really walked through the request
        c = server.clusters.get("svc")
        assert c is not None and c.rq_retry.value > 0
        n.cancel_scope.cancel()


async def test_cancel_anywhere_while_pending_on_the_connection_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_connections 1: the swept request waits (pending) behind another
    request that holds the only connection, then gets it."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up", network=net)
        breakers = CircuitBreakers(max_connections=1, max_pending_requests=4)
        mesh = simple_mesh(
            [route_to("svc", timeout=0.0)], [cluster("svc", up, circuit_breakers=breakers)]
        )
        server = await start_proxy(n, mesh, net)
        c = server.clusters.get("svc")
        assert c is not None
        limit = 1
        saw_pending = False
        while True:
            # A holder takes the only connection for 1 s of mock time.
            holder_done = trio.Event()

            async def holder(done: trio.Event) -> None:
                client, proxy_side = trio.testing.memory_stream_pair()
                hcm = server.listeners["ingress"].hcm
                async with trio.open_nursery() as hn:
                    hn.start_soon(
                        lambda: hcm.serve_connection(
                            proxy_side, remote="127.0.0.1:6666", local="127.0.0.1:8000"
                        )
                    )
                    await client.send_all(
                        b"GET /hold HTTP/1.1\r\nhost: h\r\nx-test-delay: 1\r\n\r\n"
                    )
                    data = b""
                    while not _complete(data):
                        chunk = await client.receive_some(65536)
                        if not chunk:
                            break
                        data += chunk
                    await client.aclose()
                done.set()

            n.start_soon(holder, holder_done)
            while (
                c.pool_stats.cx_active.value
                - sum(
                    h.pool.idle_count  # type: ignore[attr-defined]
                    for h in c.hosts
                )
                < 1
            ):
                await trio.sleep(0.01)

            async def watch_pending(done: trio.Event) -> None:
                nonlocal saw_pending
                while not done.is_set():
                    saw_pending = saw_pending or c.pool_stats.pending > 0
                    await trio.sleep(0.05)

            n.start_soon(watch_pending, holder_done)
            completed, _ = await _one(server, limit)
            await holder_done.wait()
            await trio.sleep(5)
            books = _books(server, c)
            assert set(books.values()) == {0}, (limit, books)
            if completed:
                break
            limit += 1
            assert limit < 5000
        print("pending sweep steps", limit)
        assert saw_pending
        assert limit > 10
        n.cancel_scope.cancel()
