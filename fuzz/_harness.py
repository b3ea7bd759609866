"""What the proxy-running fuzz targets share: error-log capture, the gauges
that must return to 0, waiting for quiet, and running one example under
`MockClock(autojump_threshold=0)`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import strategies as st

from trioproxy.runtime.server import Server


class Records(logging.Handler):
    """ERROR records of the `trioproxy` logger, for the failure message."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


def active(server: Server) -> dict[str, int]:
    """Every non-zero `*_active` gauge (idle upstream connections excepted)."""
    return {
        name: g.value
        for name, g in server.stats.gauges.items()
        if name.endswith("_active") and not name.endswith("upstream_cx_active") and g.value
    }


async def quiet() -> None:
    """Let every task run until all are blocked (a few rounds)."""
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()


def check_no_crash(server: Server, logs: Records) -> None:
    assert server.connection_errors.value == 0, "\n".join(logs.messages)
    assert not active(server), f"still active after the client left: {active(server)}"


def run(fn: Callable[..., Awaitable[None]], *args: Any) -> Records:
    """`trio.run(fn, *args, logs)` on a MockClock, capturing trioproxy's errors."""
    logs = Records()
    logger = logging.getLogger("trioproxy")
    logger.addHandler(logs)
    try:
        trio.run(fn, *args, logs, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(logs)
    return logs


def framing_lines(draw: st.DrawFn, defects: set[str], body: bytes, framing: str) -> list[bytes]:
    """The framing header lines of an HTTP/1.1 message with `body` sent as
    `framing` ("length", "chunked", or anything else: neither), plus the
    framing defects asked for: "both_framing" (Content-Length and chunked)
    and "wrong_length" (a second, random Content-Length)."""
    lines = []
    if framing == "length" or ("both_framing" in defects and framing == "chunked"):
        lines.append(b"content-length: %d" % len(body))
    if "wrong_length" in defects:
        lines.append(b"content-length: %d" % draw(st.integers(0, len(body) + 50)))
    if framing == "chunked" or ("both_framing" in defects and framing == "length"):
        lines.append(b"transfer-encoding: chunked")
    return lines


def framed_payload(draw: st.DrawFn, defects: set[str], body: bytes, framing: str) -> bytes:
    """`body` as it goes on the wire: chunked (random chunk sizes, upper-
    or lower-case hex, chunk extensions, an optional trailer) or as is;
    with the defects "chunk_size" (a bad size line) and "trailer" (a bad
    or forbidden trailer)."""
    if framing != "chunked":
        return body
    sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=4))
    wire, i, k = bytearray(), 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        size = draw(st.sampled_from([b"%x" % n, b"%X" % n, b"%x;ext=1" % n]))
        wire += size + b"\r\n" + body[i : i + n] + b"\r\n"
        i, k = i + n, k + 1
    if "chunk_size" in defects:
        bad = draw(st.sampled_from([b"-1", b"zz", b"1" * 30, b"5 ", b"0x5", b""]))
        wire += bad + b"\r\nhello\r\n"
    wire += b"0\r\n"
    if draw(st.booleans()):
        wire += b"x-trailer: yes\r\n"
    if "trailer" in defects:
        wire += draw(st.sampled_from([b"bad trailer\r\n", b"content-length: 5\r\n"]))
    wire += b"\r\n"
    return bytes(wire)
