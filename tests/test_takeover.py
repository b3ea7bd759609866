"""`trioproxy serve --takeover`: hot restart of a new process beside the old.

Real processes and clients, every wait bounded. Under steady load (HTTP/1.1
keep-alive clients, HTTP/1.1 clients opening a new connection per request,
and an HTTP/2 client with concurrent streams) a second `serve --takeover`
binds the same listener (SO_REUSEPORT), the old process drains and exits 0,
and no request fails: a client whose connection the old side ends
(`connection: close`, GOAWAY) reconnects, to the new process. The old and new
meshes answer different bodies, so each response says which process served
it. Connections the kernel queued on the old socket are accepted before it
closes (without that, this test sees resets in 2 runs out of 3).

Also: --takeover with nothing running serves normally; an invalid new mesh
or a wrong admin token exits 1 and leaves the old process serving. In
process: a drain serves the connections queued on the socket; a handover
gives idle HTTP/1.1 connections a grace (MockClock), also one whose
keep-alive response was on its way when the drain began. Run with -s for the
figures.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio
import trio.testing

from tests.conftest import admin_live, cluster, poll_until, route_to, simple_mesh, start_upstream
from tests.memnet import MemoryNetwork, RawClient
from tests.test_cli import (
    assert_no_traceback,
    free_ports,
    marker_line,
    run_cli,
    serving,
    write_mesh,
)
from trioproxy.codec.stream import ResponseHead
from trioproxy.http.conn_manager import Http1Stream
from trioproxy.runtime.server import HANDOVER_IDLE_GRACE, Server

TOKEN = "takeover-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
H1_CLIENTS = 4
# Clients that open a new connection for every request: during the handover
# some land in the old socket's accept queue (the SO_REUSEPORT handover case).
H1_FRESH_CLIENTS = 2
H2_STREAMS = 2  # concurrent requests on the one HTTP/2 connection
BOUND = 30.0  # every wait on a subprocess


class _Retry(Exception):
    """The server did not process the request (RFC 9113 §6.8): send it again."""


class _H2Conn:
    """One HTTP/2 (prior knowledge) connection of `_H2Client`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.send_lock = trio.Lock()
        self.goaway: int | None = None  # last_stream_id of the latest GOAWAY
        self.closed = False
        self.status: dict[int, int] = {}
        self.body: dict[int, bytes] = {}
        self.complete: set[int] = set()  # ended by END_STREAM, not reset
        self.ended: dict[int, trio.Event] = {}

    async def flush(self) -> None:
        async with self.send_lock:
            data = self.h2.data_to_send()
            if data:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.send_all(data)

    async def read(self) -> None:
        buf = b""
        try:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return
                buf += data
                # One frame at a time: python-hyper/h2 closes the connection on
                # any GOAWAY, but RFC 9113 §6.8 lets the streams up to its
                # last_stream_id finish, so after a GOAWAY the state is set
                # back to CLIENT_OPEN before the next frame (test client only).
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    n = 9 + int.from_bytes(buf[:3], "big")
                    frame, buf = buf[:n], buf[n:]
                    self._events(self.h2.receive_data(frame))
                await self.flush()
        finally:
            self.closed = True
            for e in self.ended.values():
                e.set()
            await trio.aclose_forcefully(self.stream)

    def _events(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                assert ev.stream_id is not None and ev.headers is not None
                self.status[ev.stream_id] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                assert ev.stream_id is not None and ev.data is not None
                self.body[ev.stream_id] = self.body.get(ev.stream_id, b"") + ev.data
                assert ev.flow_controlled_length is not None
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                assert ev.stream_id is not None
                self.complete.add(ev.stream_id)
                self.ended[ev.stream_id].set()
            elif isinstance(ev, h2.events.StreamReset):
                assert ev.stream_id is not None
                self.ended[ev.stream_id].set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.last_stream_id
                self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    async def get(self, authority: str) -> tuple[int, str]:
        """(status, body) of GET /.

        Raises:
            _Retry: the connection is going away and the server did not take
                this request (send it on a new connection).
            ConnectionError: the request was lost (a failure).
        """
        if self.closed or self.goaway is not None:
            raise _Retry
        sid = self.h2.get_next_available_stream_id()
        self.ended[sid] = trio.Event()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", authority)]
        self.h2.send_headers(sid, [*headers, (":path", "/")], end_stream=True)
        await self.flush()
        await self.ended[sid].wait()
        if sid in self.complete:
            return self.status[sid], self.body.get(sid, b"").decode()
        if self.goaway is not None and sid > self.goaway:
            raise _Retry
        raise ConnectionError(f"stream {sid} lost (goaway {self.goaway}, closed {self.closed})")


class _H2Client:
    """An HTTP/2 client that follows GOAWAY as RFC 9113 §6.8 says: streams
    up to its last_stream_id finish; new requests, and any the server did
    not take, go on a new connection. (httpx/httpcore fails every stream
    still open when a GOAWAY arrives, even those the server will answer.)"""

    def __init__(self, nursery: trio.Nursery, port: int) -> None:
        self.nursery = nursery
        self.port = port
        self.conn: _H2Conn | None = None
        self.lock = trio.Lock()
        self.connects = 0

    async def _current(self) -> _H2Conn:
        async with self.lock:
            c = self.conn
            if c is None or c.closed or c.goaway is not None:
                c = _H2Conn(await trio.open_tcp_stream("127.0.0.1", self.port))
                c.h2.initiate_connection()
                await c.flush()
                self.nursery.start_soon(c.read)
                self.conn = c
                self.connects += 1
            return c

    async def get(self) -> tuple[int, str]:
        for _ in range(10):  # a retry per connection going away; bounded
            c = await self._current()
            try:
                return await c.get(f"127.0.0.1:{self.port}")
            except _Retry:
                continue
        raise ConnectionError("10 connections in a row went away")

    async def aclose(self) -> None:
        if self.conn is not None:
            await trio.aclose_forcefully(self.conn.stream)


def _mesh(tmp_path: Path, name: str, *, port: int, admin: int, body: str) -> Path:
    return write_mesh(
        tmp_path,
        f"""
        from trioproxy.dsl import admin, direct_response, listener, mesh, prefix

        MESH = mesh(
            listener("ingress", "127.0.0.1:{port}")
            .route(prefix("/"), direct_response(200, "{body}")),
            admin("127.0.0.1:{admin}", token="{TOKEN}"),
        )
        """,
        name=name,
    )


def _ready(admin: int, proc: subprocess.Popen[bytes], err: Path) -> None:
    """Poll admin /ready (with the token) until LIVE; fail if `proc` exits."""
    poll_until(
        lambda: admin_live(admin, AUTH),
        f"admin {admin} to be ready",
        BOUND,
        proc=proc,
        output=err.read_text,
    )


def _stats(admin: int) -> dict[str, str]:
    text = httpx.get(f"http://127.0.0.1:{admin}/stats", headers=AUTH, timeout=10).text
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_takeover_under_load_drops_nothing(tmp_path: Path, workers: str) -> None:
    port, admin = free_ports(2)
    old_mesh = _mesh(tmp_path, "old.py", port=port, admin=admin, body="old")
    new_mesh = _mesh(tmp_path, "new.py", port=port, admin=admin, body="new")
    url = f"http://127.0.0.1:{port}/"
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    common = ("--workers", workers, "--no-watch", "--drain-time-s", "20")
    with contextlib.ExitStack() as procs:
        old = procs.enter_context(serving(tmp_path / "old", str(old_mesh), *common))
        _ready(admin, old.proc, old.err)
        # (start, end, body, kind); connection: close answers (each means a
        # reconnect by that client); failures.
        results: list[tuple[float, float, str, str]] = []
        closes = 0
        failures: list[tuple[float, str]] = []  # (when, what)
        stop = trio.Event()

        async def load(client: httpx.AsyncClient, kind: str) -> None:
            nonlocal closes
            while not stop.is_set():
                start = time.monotonic()
                try:
                    r = await client.get(url)
                except httpx.TransportError as exc:
                    failures.append((time.monotonic(), f"{kind}: {exc!r}"))
                    continue
                if r.status_code != 200:
                    failures.append((time.monotonic(), f"{kind}: status {r.status_code}"))
                if r.headers.get("connection", "").lower() == "close":
                    closes += 1
                results.append((start, time.monotonic(), r.text, kind))

        async def load_h2(client: _H2Client) -> None:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    status, body = await client.get()
                except OSError as exc:
                    failures.append((time.monotonic(), f"h2: {exc!r}"))
                    continue
                if status != 200:
                    failures.append((time.monotonic(), f"h2: status {status}"))
                results.append((start, time.monotonic(), body, "h2"))

        timeout = httpx.Timeout(10)
        h1s = [
            httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=timeout)
            for _ in range(H1_CLIENTS)
        ]
        fresh = [
            httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=timeout)
            for _ in range(H1_FRESH_CLIENTS)
        ]
        async with trio.open_nursery() as readers:
            h2c = _H2Client(readers, port)
            async with trio.open_nursery() as clients:
                for c in h1s:
                    clients.start_soon(load, c, "h1")
                for c in fresh:
                    clients.start_soon(load, c, "fresh")
                for _ in range(H2_STREAMS):
                    clients.start_soon(load_h2, h2c)
                await trio.sleep(0.5)
                assert results, "no load on the old process"
                new = procs.enter_context(
                    serving(tmp_path / "new", str(new_mesh), "--takeover", *common)
                )
                started = time.monotonic()
                # Polling subprocesses (bounded): the old one exits once drained.
                while old.proc.poll() is None:
                    if time.monotonic() - started > BOUND or new.proc.poll() is not None:
                        stop.set()
                        pytest.fail(
                            f"old: {old.proc.poll()}\n{old.stderr}\nnew: {new.proc.poll()}\n"
                            f"{new.stderr}"
                        )
                    await trio.sleep(0.05)
                old_exited = time.monotonic()
                handover = old_exited - started
                await trio.to_thread.run_sync(_ready, admin, new.proc, new.err)
                await trio.sleep(0.5)  # more load, on the new process alone
                stop.set()
            await h2c.aclose()
        for c in (*h1s, *fresh):
            await c.aclose()
        stats = _stats(admin)
        assert new.stop(signal.SIGTERM) == 0
        new_err = new.stderr
        old_code = old.proc.returncode
        old_err = old.stderr

    bodies = [r[2] for r in results]
    after = [r for r in results if r[0] > old_exited]
    h2_count = sum(1 for r in results if r[3] == "h2")
    fresh_count = sum(1 for r in results if r[3] == "fresh")
    queued = sum(int(m) for m in re.findall(r"took (\d+) queued connection", old_err))
    first_new = min(r[1] for r in results if r[2] == "new") - started
    new_cx = int(stats.get(f"listener.127.0.0.1_{port}.downstream_cx_total", "0"))
    print(
        f"\ntakeover (--workers {workers}): {len(results)} requests "
        f"({len(results) - h2_count} HTTP/1.1 of which {fresh_count} on a new connection each, "
        f"{h2_count} HTTP/2), {len(failures)} failures, "
        f"{bodies.count('old')} from old, {bodies.count('new')} from new, "
        f"{closes} HTTP/1.1 connection: close answers, {h2c.connects} HTTP/2 connections, "
        f"{new_cx} connections to new, {queued} taken from the old accept queue; "
        f"--takeover started -> first answer from new {first_new:.2f}s -> old exited "
        f"{handover:.2f}s"
    )
    # When (after --takeover started) and both logs, to tell which side failed.
    lost = [f"{when - started:.3f}s {what}" for when, what in failures]
    assert lost == [], f"{lost}\nold:\n{old_err}\nnew:\n{new_err}"
    assert old_code == 0, old_err
    assert_no_traceback(old_err)
    assert_no_traceback(new_err)
    assert "took over from pid" in new_err
    assert set(bodies) == {"old", "new"}
    assert after and all(r[2] == "new" for r in after)
    assert h2_count > 0 and len(results) - h2_count > 0
    # Every client reconnected to the new process.
    assert new_cx >= H1_CLIENTS + 1
    assert fresh_count > 0


def test_takeover_with_nothing_running_serves_normally(tmp_path: Path) -> None:
    port, admin = free_ports(2)
    mesh = _mesh(tmp_path, "new.py", port=port, admin=admin, body="new")
    with serving(tmp_path, str(mesh), "--takeover", "--workers", "1", "--no-watch") as proxy:
        _ready(admin, proxy.proc, proxy.err)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "new"
        assert proxy.stop(signal.SIGTERM) == 0
        assert f"no trioproxy answers at 127.0.0.1:{admin}; serving normally" in proxy.stderr


def test_takeover_refused_leaves_the_old_one_serving(tmp_path: Path) -> None:
    port, admin = free_ports(2)
    old_mesh = _mesh(tmp_path, "old.py", port=port, admin=admin, body="old")
    bad = write_mesh(
        tmp_path,
        f"""
        from trioproxy.dsl import admin, cluster, listener, mesh, prefix

        MESH = mesh(
            listener("ingress", "127.0.0.1:{port}")
            .route(prefix("/"), "nowhere"),  # E:unknown
            admin("127.0.0.1:{admin}", token="{TOKEN}"),
        )
        """,
        name="bad.py",
    )
    wrong_token = write_mesh(
        tmp_path,
        old_mesh.read_text().replace(TOKEN, "not-the-token"),
        name="wrong_token.py",
    )
    with serving(tmp_path, str(old_mesh), "--workers", "1", "--no-watch") as old:
        _ready(admin, old.proc, old.err)
        # An invalid mesh: every error with its file:line, exit 1, nothing bound.
        r = run_cli("serve", str(bad), "--takeover", "--workers", "1", timeout=BOUND)
        assert r.returncode == 1
        assert_no_traceback(r.stderr)
        assert f"{bad}:{marker_line(bad, 'unknown')}: unknown cluster 'nowhere'" in r.stderr
        # Another admin token: the old admin refuses (401) before anything binds.
        r = run_cli("serve", str(wrong_token), "--takeover", "--workers", "1", timeout=BOUND)
        assert r.returncode == 1
        assert_no_traceback(r.stderr)
        assert "cannot take over" in r.stderr and "401" in r.stderr and "token" in r.stderr
        # The old process served on, untouched.
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "old"
        assert httpx.get(f"http://127.0.0.1:{admin}/ready", headers=AUTH, timeout=10).text == (
            "LIVE\n"
        )
        assert old.proc.poll() is None
        assert old.stop(signal.SIGTERM) == 0


def test_takeover_bad_address_is_a_usage_error(tmp_path: Path) -> None:
    port, admin = free_ports(2)
    mesh = _mesh(tmp_path, "m.py", port=port, admin=admin, body="x")
    r = run_cli("serve", str(mesh), "--takeover", "nope", timeout=BOUND)
    assert r.returncode == 2
    assert "bad --takeover address 'nope'" in r.stderr


# ---------------------------------------------------------------- in process


async def test_drain_takes_the_connections_queued_on_the_socket() -> None:
    """Connections the kernel completed into the listening socket's accept
    queue before a drain are served (told to close), not reset."""
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up")
        server = Server(simple_mesh([route_to("svc")], [cluster("svc", up)]))
        await n.start(server.run)
        port = server.listener_address("ingress").port
        # Blocking connects with no checkpoint in between: the kernel queues
        # them on the socket and the server has accepted none of them.
        socks = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n")
            socks.append(s)
        server.drain_listeners()  # no checkpoint: the accept loop is cancelled
        for s in socks:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(s))
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data
            assert b"\r\nconnection: close\r\n" in data.lower()
            await stream.aclose()
        cx = server.stats.counters["listener.127.0.0.1_0.downstream_cx_total"].value
        assert cx == 3
        n.cancel_scope.cancel()


async def test_handover_gives_idle_http1_connections_a_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a takeover, an idle keep-alive connection is not closed under a
    request on its way: one arriving within HANDOVER_IDLE_GRACE is answered
    with `connection: close`; one that stays idle is closed at its end."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up", network=net)
        server = Server(simple_mesh([route_to("svc")], [cluster("svc", up)]), network=net)
        await n.start(server.run)
        port = server.listener_address("ingress").port
        late = await RawClient.connect(net, port)
        assert (await late.request()).status == 200
        idle = await RawClient.connect(net, port)
        assert (await idle.request()).status == 200
        started = trio.current_time()
        server.hand_over()
        await trio.sleep(1)
        r = await late.request()
        assert r.status == 200
        assert r.headers["connection"] == "close"
        assert await late.closed_by_peer()
        assert await idle.closed_by_peer()
        assert HANDOVER_IDLE_GRACE <= trio.current_time() - started < HANDOVER_IDLE_GRACE + 1
        n.cancel_scope.cancel()


async def test_handover_during_a_keep_alive_response_serves_the_next_request(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain that begins while a response is on its way, its head already
    sent without `connection: close`, does not close the connection under
    the request the client sends next (that was a reset under load): the
    request is answered, with `connection: close`."""
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "up", network=net)
        server = Server(simple_mesh([route_to("svc")], [cluster("svc", up)]), network=net)
        await n.start(server.run)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        encode = Http1Stream._encode_head

        def encode_then_drain(stream: Http1Stream, head: ResponseHead) -> bytes:
            data = encode(stream, head)
            monkeypatch.setattr(Http1Stream, "_encode_head", encode)
            stream._hcm.drain(idle_grace=HANDOVER_IDLE_GRACE)
            return data

        monkeypatch.setattr(Http1Stream, "_encode_head", encode_then_drain)
        r = await client.request()
        assert r.status == 200
        assert "connection" not in r.headers
        assert all(hcm.draining for lr in server.listeners.values() for hcm in lr.hcms)
        r = await client.request()
        assert r.status == 200
        assert r.headers["connection"] == "close"
        assert await client.closed_by_peer()
        n.cancel_scope.cancel()
