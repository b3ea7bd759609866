"""What the proxy-running fuzz targets share: error-log capture, the gauges
that must return to 0, waiting for quiet, and running one example under
`MockClock(autojump_threshold=0)`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

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
