"""The admin's live dashboard: `GET /events` (server-sent events, parsed
here) and `GET /` rendered by headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import (
    cluster,
    proxy_url,
    require_tool,
    route_to,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from trioproxy.runtime.server import Server


async def start(nursery: trio.Nursery) -> Server:
    up = await start_upstream(nursery)
    mesh = simple_mesh([route_to("svc")], [cluster("svc", up)], admin=True)
    return await start_proxy(nursery, mesh)


def admin(server: Server, path: str) -> str:
    bound = server.admin_bound
    assert bound is not None
    return f"http://{bound.host}:{bound.port}{path}"


async def events(server: Server, n: int, interval: float = 0.1) -> list[dict[str, Any]]:
    """Read `n` snapshot events from /events, parsing the SSE framing."""
    out: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient() as c,
        c.stream("GET", admin(server, f"/events?interval={interval}&count={n}")) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        event, data = "", []
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif line == "" and data:
                assert event == "snapshot"
                out.append(json.loads("\n".join(data)))
                event, data = "", []
    return out


async def send(server: Server, n: int) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(n):
            assert (await c.get(proxy_url(server, "/x"))).status_code == 200


async def test_events_stream_snapshots_that_follow_traffic(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    before = await events(server, 2)
    assert len(before) == 2 and before[1]["time"] > before[0]["time"]
    svc = next(c for c in before[0]["clusters"] if c["name"] == "svc")
    assert svc["rq_total"] == 0 and svc["hosts"][0]["healthy"] is True
    assert before[0]["listeners"][0]["name"] == "ingress"
    assert set(before[0]["errors_by_flag"]) >= {"UF", "UH", "UT", "NR"}
    await send(server, 3)
    after = await events(server, 1)
    svc = next(c for c in after[0]["clusters"] if c["name"] == "svc")
    assert svc["rq_total"] == 3 and svc["hosts"][0]["rq_total"] == 3
    assert svc["latency_ms"]["P50"] is not None
    assert after[0]["http"][0]["rq_total"] == 3


async def test_events_bad_parameters(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    async with httpx.AsyncClient() as c:
        assert (await c.get(admin(server, "/events?interval=x"))).status_code == 400
        assert (await c.get(admin(server, "/events?count=0"))).status_code == 400


async def test_page_is_self_contained(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    async with httpx.AsyncClient() as c:
        page = (await c.get(admin(server, "/"))).text
    assert 'new EventSource("/events"+location.search)' in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page


async def test_chromium_renders_the_dashboard(nursery: trio.Nursery, tmp_path: Path) -> None:
    exe = require_tool("chromium")
    server = await start(nursery)
    await send(server, 7)
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    # count=3: the page closes its EventSource after 3 snapshots, so the
    # network goes idle and Chromium's virtual time can run out.
    url = admin(server, "/?interval=0.2&count=3")
    shot = tmp_path / "dashboard.png"
    with trio.fail_after(120):
        dom = await trio.run_process(
            [*args, "--dump-dom", url], capture_stdout=True, capture_stderr=True
        )
        await trio.run_process(
            [*args, f"--screenshot={shot}", "--window-size=1200,900", url],
            capture_stdout=True,
            capture_stderr=True,
        )
    html = dom.stdout.decode()
    assert '<td class="cluster">svc</td>' in html, html[-2000:]
    assert '<td class="rq" data-cluster="svc">7</td>' in html
    assert shot.stat().st_size > 1000  # kept under pytest's tmp dir as an artifact
