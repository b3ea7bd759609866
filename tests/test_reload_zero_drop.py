"""Zero dropped requests: steady keep-alive load (HTTP/1.1 and HTTP/2
clients) while the mesh is reloaded 20 times, alternating the target.

Every request must succeed (0 non-2xx, 0 connection errors) and come from
the target in force when the proxy routed it. The proxy runs in this trio
loop, so the swap instant is known to lie within [before, after] of each
`Server.reload` call; a request is matched against its route somewhere in
[start, end] of the client's request. So:

- a request with no swap inside [start, end] must come from the target in
  force at `start` (exact);
- a request that straddles a swap may come from the target before or after
  it (and only those): these are counted as "straddling".

Two modes: "route" flips a route between clusters a and b (route-table swap);
"cluster" flips cluster svc's endpoint between the two upstreams (new
ClusterRuntime and pools; the old pools finish their requests, then close).
Run with -s for the figures.
"""

from __future__ import annotations

import bisect

import httpx
import pytest
import trio

from tests.conftest import cluster, proxy_url, route_to, simple_mesh, start_upstream
from trioproxy.config import Mesh
from trioproxy.runtime.server import Server

RELOADS = 20
INTERVAL = 0.1
H1_CLIENTS = 4
H2_CLIENTS = 2
H2_STREAMS = 3  # concurrent requests per HTTP/2 connection


@pytest.mark.parametrize("mode", ["route", "cluster"])
async def test_zero_dropped_requests_across_20_reloads(mode: str) -> None:
    async with trio.open_nursery() as n:
        up_a = await start_upstream(n, "a")
        up_b = await start_upstream(n, "b")

        def mesh_for(target: str) -> Mesh:
            if mode == "route":
                return simple_mesh([route_to(target)], [cluster("a", up_a), cluster("b", up_b)])
            return simple_mesh([route_to("svc")], [cluster("svc", up_a if target == "a" else up_b)])

        server: Server = await n.start(Server(mesh_for("a")).run)
        url = proxy_url(server)
        # (swap window start, swap window end, target after the swap)
        swaps: list[tuple[float, float, str]] = []
        results: list[tuple[float, float, str | None, str]] = []  # start, end, upstream, kind
        failures: list[str] = []
        stop = trio.Event()

        def in_force(t: float) -> str:
            # The target whose swap window ended at or before t ("a" at first).
            ends = [s[1] for s in swaps]
            i = bisect.bisect_right(ends, t)
            return "a" if i == 0 else swaps[i - 1][2]

        async def load(client: httpx.AsyncClient, kind: str) -> None:
            while not stop.is_set():
                start = trio.current_time()
                try:
                    r = await client.get(url)
                except httpx.TransportError as exc:
                    failures.append(f"{kind}: {exc!r}")
                    continue
                end = trio.current_time()
                if r.status_code != 200:
                    failures.append(f"{kind}: status {r.status_code}")
                results.append((start, end, r.headers.get("x-upstream"), kind))

        async with (
            httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as h1a,
            httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as h1b,
            httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as h1c,
            httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as h1d,
            httpx.AsyncClient(http1=False, http2=True) as h2a,
            httpx.AsyncClient(http1=False, http2=True) as h2b,
            trio.open_nursery() as clients,
        ):
            for c in (h1a, h1b, h1c, h1d)[:H1_CLIENTS]:
                clients.start_soon(load, c, "h1")
            for c in (h2a, h2b)[:H2_CLIENTS]:
                for _ in range(H2_STREAMS):
                    clients.start_soon(load, c, "h2")
            await trio.sleep(0.2)
            for i in range(RELOADS):
                target = "b" if i % 2 == 0 else "a"
                before = trio.current_time()
                diff = await server.reload(mesh_for(target))
                after = trio.current_time()
                assert diff is not None and not diff.empty
                swaps.append((before, after, target))
                await trio.sleep(INTERVAL)
            stop.set()

        wrong: list[tuple[float, float, str | None, str]] = []
        straddling = 0
        for start, end, got, _kind in results:
            crossed = [s for s in swaps if s[0] < end and s[1] > start]
            allowed = {in_force(start)} | {s[2] for s in crossed}
            if crossed:
                straddling += 1
            if got not in allowed:
                wrong.append((start, end, got, _kind))
        h1 = sum(1 for r in results if r[3] == "h1")
        h2 = len(results) - h1
        print(
            f"\nzero-drop ({mode}): {len(results)} requests ({h1} HTTP/1.1, {h2} HTTP/2) "
            f"over {RELOADS} reloads; failures {len(failures)}; wrong target {len(wrong)}; "
            f"straddling a swap {straddling}; "
            f"from a {sum(1 for r in results if r[2] == 'a')}, "
            f"from b {sum(1 for r in results if r[2] == 'b')}"
        )
        assert failures == []
        assert wrong == []
        assert h1 > 0 and h2 > 0
        assert {r[2] for r in results} == {"a", "b"}
        # The downstream connections lived through every reload: one each.
        cx = server.stats.counters["listener.127.0.0.1_0.downstream_cx_total"].value
        assert cx == H1_CLIENTS + H2_CLIENTS
        # Every retired cluster runtime closed once idle (only the live ones remain).
        with trio.fail_after(5):
            while len(server.clusters._scopes) != len(server.clusters.clusters):
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
