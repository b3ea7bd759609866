"""The Autobahn WebSocket test cases, run directly against an echo server and
again through the proxy to the same server: the proxy's results must equal
the direct run's, case by case.

The driver is `kosoku` (PyPI): a Rust runner that executes Autobahn
TestSuite's own Python case files in fuzzingclient mode under Python 3. It
runs as its console script in a child process (`kosoku ADDRESS -i CASE ...
-p 2 -o DIR`), which writes Autobahn's usual reports (DIR/index.html to
browse, index.json and one JSON per case to compare). In the test's own
process (its asyncio API in a worker thread), the case code would share the
GIL with the echo server and the proxy: the compression cases, 1000 round
trips each, then run ten times slower. The echo server and the proxy stay in
the test's trio loop.

The echo server is wsproto (sans-IO) driven by trio, one task per
connection, accepting permessage-deflate: the peer hypercorn and wsproto run
Autobahn against, and it passes every case of the suite directly. It handles
all events of one read before writing, so a message followed by a bad frame
is always echoed before the connection is failed. (trio-websocket, used in
tests/test_websocket.py, echoes from a separate task: ten cases of groups 3-5
then flip between OK and NON-STRICT from run to run, direct or proxied,
depending on how TCP splits the client's writes; and it cannot negotiate
compression.)

Cases:
- 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close
  handling), 9 (limits and performance: messages up to 16 MiB, where a
  tunnel's buffering and back-pressure show) and 10 (auto-fragmentation):
  all of them.
- 12/13 (permessage-deflate): the whole of 12/13 takes ~7 minutes per run
  here (216 cases of 1000 messages each), too long for CI. We run the first
  case of each subgroup (1000 16-byte messages): 12.1-12.5 cover the five
  payload corpora with the default offer, 13.1-13.7 the suite's seven
  client offers (no_context_takeover, max_window_bits 9/15, several offers
  at once) and server answers, i.e. the `Sec-WebSocket-Extensions`
  negotiations the proxy must pass through untouched; and 12.1.11,
  compressed messages auto-fragmented to 256 octets (RSV1 on first frames
  only).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from tests.conftest import IN_CI, cluster, counter, gauge, route_to, simple_mesh, start_proxy

# A `*` in a kosoku case pattern matches any suffix ("12.*.1" would be 50
# cases), so the compression cases are listed one by one.
CASES = (
    *(f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 9, 10)),
    *(f"12.{subgroup}.1" for subgroup in range(1, 6)),
    "12.1.11",
    *(f"13.{subgroup}.1" for subgroup in range(1, 8)),
)

# Cases run two at a time, one per core of the CI box. The direct run takes
# ~10 s here, the proxied one ~14 s (group 9 is half of each); they run one
# after the other so that neither competes with the other for the CPU.
CONCURRENCY = 2

# A bound on each run, well above that for a slow or busy CI machine (with
# three copies of this test at once on two cores, each run took ~20 s).
# A proxy that corrupts or stalls a stream makes cases hang, not fail.
RUN_TIMEOUT = 120

# Autobahn's largest messages are 16 MiB (9.1.6, 9.2.6); a bigger one is
# refused with 1009 as trio-websocket would.
MAX_MESSAGE = 16 * 1024 * 1024
RECEIVE_SIZE = 64 * 1024
# After failing a connection, how long to wait for the client to close its
# side (Autobahn's own close handshake timeout is 1 s).
DRAIN_TIMEOUT = 2


class _EchoConnection:
    """One client's echo, sans-IO: bytes in, bytes to send out."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        # The message being received, until its last frame.
        self.text: list[str] = []
        self.binary = bytearray()
        self.size = 0
        # The connection was failed (a protocol error): nothing more to parse.
        self.failed = False

    @property
    def closed(self) -> bool:
        return self.ws.state is ConnectionState.CLOSED

    def receive_data(self, data: bytes) -> bytes:
        """Take what the client sent (b"" at EOF); return the answer."""
        self.ws.receive_data(data or None)
        out = bytearray()
        for event in self.ws.events():
            if isinstance(event, Request):
                out += self.ws.send(AcceptConnection(extensions=[PerMessageDeflate()]))
            elif isinstance(event, TextMessage | BytesMessage):
                out += self._message(event)
            elif isinstance(event, Ping):
                out += self.ws.send(event.response())
            elif isinstance(event, CloseConnection):
                out += self._close(event)
            if self.failed or self.ws.state is not ConnectionState.OPEN:
                break
        return bytes(out)

    def _message(self, event: TextMessage | BytesMessage) -> bytes:
        if isinstance(event, TextMessage):
            self.text.append(event.data)
        else:
            self.binary += event.data
        self.size += len(event.data)
        if self.size > MAX_MESSAGE:
            return self._close(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
        if not event.message_finished:
            return b""
        echo: TextMessage | BytesMessage
        if isinstance(event, TextMessage):
            echo = TextMessage(data="".join(self.text))
        else:
            echo = BytesMessage(data=bytes(self.binary))
        self.text, self.binary, self.size = [], bytearray(), 0
        return self.ws.send(echo)

    def _close(self, event: CloseConnection) -> bytes:
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            return self.ws.send(event.response())  # the peer's close: answer it
        if self.ws.state is ConnectionState.OPEN:
            # wsproto reports a protocol error as a close event with the
            # state still OPEN: fail the connection (RFC 6455 7.1.7).
            self.failed = True
            return self.ws.send(CloseConnection(code=event.code, reason=event.reason))
        return b""  # the TCP connection ended


class EchoServer:
    """Echoes every message back, answers pings and closes."""

    def __init__(self) -> None:
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = _EchoConnection()
        async with stream:
            try:
                while not conn.closed:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    await stream.send_all(conn.receive_data(data))
                    if conn.failed:
                        # Close our side, then read until the client closes
                        # its own: closing with unread data would be a reset.
                        await stream.send_eof()
                        with trio.move_on_after(DRAIN_TIMEOUT):
                            while await stream.receive_some(RECEIVE_SIZE):
                                pass
                        return
            except trio.BrokenResourceError:
                return

    async def run(
        self, task_status: trio.TaskStatus[EchoServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self)


def _kosoku() -> str:
    """The `kosoku` console script of the running interpreter."""
    here = Path(sys.executable).parent / "kosoku"
    found = str(here) if here.exists() else shutil.which("kosoku")
    if found is None:  # pragma: no cover - depends on the environment
        if IN_CI:
            pytest.fail("kosoku's console script not found")
        pytest.skip("kosoku not installed (pip install -e '.[test]')")
    return found


Verdict = tuple[str, str, int | None, bool]


async def _run_cases(address: str, reports: Path) -> dict[str, Verdict]:
    """Run the selected cases against `address`; their Autobahn reports go to
    `reports` (index.html to browse). Returns case id → (behavior, close
    behavior, close code the server sent, clean close)."""
    command = [_kosoku(), address, "--parallelism", str(CONCURRENCY), "--outdir", str(reports)]
    for case in CASES:
        command += ["--include", case]
    with trio.move_on_after(RUN_TIMEOUT) as scope:
        # Exit status 1 means some case did not pass: its report says how.
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    if scope.cancelled_caught:
        # kosoku writes no report until every case has ended.
        pytest.fail(f"kosoku against {address} did not finish within {RUN_TIMEOUT} s")
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    (index,) = json.loads((reports / "index.json").read_text()).values()
    verdicts = {}
    for case_id, entry in index.items():
        report = json.loads((reports / entry["reportfile"]).read_text())
        verdicts[case_id] = (
            entry["behavior"],
            entry["behaviorClose"],
            entry["remoteCloseCode"],
            report["wasClean"],
        )
    return verdicts


def _summary(verdicts: dict[str, Verdict]) -> str:
    """Per group, how many cases got each verdict."""
    groups: dict[str, dict[str, int]] = {}
    for case_id, (behavior, close, _, _) in verdicts.items():
        label = behavior if close in ("OK", "INFORMATIONAL") else f"{behavior}/close {close}"
        counts = groups.setdefault(case_id.split(".")[0], {})
        counts[label] = counts.get(label, 0) + 1
    return "; ".join(
        f"{group}: " + ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        for group, counts in sorted(groups.items(), key=lambda item: int(item[0]))
    )


async def test_autobahn_through_proxy_matches_direct(nursery: trio.Nursery, tmp_path: Path) -> None:
    echo: EchoServer = await nursery.start(EchoServer().run)
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("echo")], [cluster("echo", f"127.0.0.1:{echo.port}")]),
    )
    port = server.listener_address("ingress").port

    started = trio.current_time()
    direct = await _run_cases(f"127.0.0.1:{echo.port}", tmp_path / "direct")
    halfway = trio.current_time()
    proxied = await _run_cases(f"127.0.0.1:{port}", tmp_path / "proxied")
    print(
        f"\ndirect  ({halfway - started:.1f} s): {_summary(direct)}"
        f"\nproxied ({trio.current_time() - halfway:.1f} s): {_summary(proxied)}"
    )

    # The harness itself worked: every case reached a verdict directly.
    assert len(direct) > 300, _summary(direct)
    errors = [case_id for case_id, (behavior, *_) in direct.items() if behavior == "ERROR"]
    assert not errors, f"cases with no verdict against the echo server itself: {errors}"

    differences = {
        case_id: {"direct": direct.get(case_id), "proxied": proxied.get(case_id)}
        for case_id in sorted(direct.keys() | proxied.keys())
        if direct.get(case_id) != proxied.get(case_id)
    }
    assert not differences, (
        f"proxied results differ from direct ones: {differences}\n"
        f"direct:  {_summary(direct)}\nproxied: {_summary(proxied)}"
    )

    # Every case was one upgraded connection through the proxy, and every
    # tunnel has ended.
    assert counter(server, "http.ingress_http.downstream_cx_upgrades_total") == len(proxied)
    with trio.fail_after(5):
        while gauge(server, "http.ingress_http.downstream_cx_upgrades_active"):
            await trio.sleep(0.01)
