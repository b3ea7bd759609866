"""Issue 8, target 5: the config graph is compiled once. Once a route has
served its first requests, serving more of them compiles no regular
expression (not even a cache lookup through `re.match(str, ...)`) and looks
up no stat by name (no stat name formatted per request).

The mesh is the benchmark's shape: a route, a round-robin cluster of two
hosts, stats on, an access log to a file, a `x-request-id` generated per
request; a real upstream and a raw keep-alive client on 127.0.0.1.
"""

from __future__ import annotations

import re
import sys
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import cluster, proxy_url, route_to, simple_mesh, start_proxy, start_upstream
from trioproxy.config import AccessLog
from trioproxy.observe.stats import StatsStore

PACKAGE = str(Path(__import__("trioproxy").__file__).parent)
WARM_UP = 20
MEASURED = 60


def from_trioproxy() -> str | None:
    """The first trioproxy frame on the caller's stack, as "file:line"."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return f"{frame.f_code.co_filename.removeprefix(PACKAGE)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


async def get(stream: trio.SocketStream, path: str) -> bytes:
    """One keep-alive GET; the response's status line."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        assert more, f"connection closed after {data!r}"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert match, head
    while len(body) < int(match.group(1)):
        more = await stream.receive_some(65536)
        assert more, "connection closed mid-body"
        body += more
    return head.split(b"\r\n", 1)[0]


async def test_steady_requests_compile_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: Tally[str] = Tally()
    looked_up: Tally[str] = Tally()
    counting = False
    real_compile = re._compile  # type: ignore[attr-defined]

    def counting_compile(pattern: Any, flags: Any) -> Any:
        if counting and (where := from_trioproxy()):
            compiled[f"{where} {pattern!r}"] += 1
        return real_compile(pattern, flags)

    def counting_lookup(kind: str) -> Any:
        real = getattr(StatsStore, kind)

        def lookup(self: StatsStore, name: str) -> Any:
            if counting:
                looked_up[f"{kind}({name!r}) from {from_trioproxy()}"] += 1
            return real(self, name)

        return lookup

    monkeypatch.setattr(re, "_compile", counting_compile)
    for kind in ("counter", "gauge", "histogram"):
        monkeypatch.setattr(StatsStore, kind, counting_lookup(kind))

    async with trio.open_nursery() as nursery:
        ups = [await start_upstream(nursery, f"u{i}") for i in range(2)]
        log = tmp_path / "access.log"
        mesh = simple_mesh(
            [route_to("origin")],
            [cluster("origin", *ups, lb_policy="round_robin")],
            access_logs=[AccessLog(path=str(log))],
        )
        server = await start_proxy(nursery, mesh)
        port = int(proxy_url(server).rsplit(":", 1)[1].split("/")[0])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for i in range(WARM_UP):
                assert await get(stream, f"/warm/{i}") == b"HTTP/1.1 200 OK"
            counting = True
            for i in range(MEASURED):
                assert await get(stream, f"/steady/{i}?q={i}") == b"HTTP/1.1 200 OK"
            counting = False
        nursery.cancel_scope.cancel()
    assert sum(len(u.requests) for u in ups) == WARM_UP + MEASURED
    assert all(u.requests for u in ups), "round robin used both hosts"
    assert not compiled, f"regex compiled per request: {dict(compiled)}"
    assert not looked_up, f"stats looked up by name per request: {dict(looked_up)}"


async def test_the_counters_would_see_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above can fail: a per-request lookup is caught."""
    seen: list[str] = []
    real = StatsStore.counter

    def lookup(self: StatsStore, name: str) -> Any:
        seen.append(name)
        return real(self, name)

    monkeypatch.setattr(StatsStore, "counter", lookup)
    StatsStore().counter(f"cluster.{'origin'}.upstream_rq_{200}")
    assert seen == ["cluster.origin.upstream_rq_200"]
