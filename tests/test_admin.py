"""The admin port, driven with httpx over real sockets.

Each test runs a proxy (with an admin on 127.0.0.1:0) in the test's loop,
sends traffic through it to a real upstream, then reads the admin endpoints
and checks names, values and shapes against Envoy's.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import (
    addr,
    cluster,
    counter,
    gauge,
    proxy_url,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from trioproxy.config import AccessLog, Cluster, Endpoint, Mesh, SocketAddress
from trioproxy.observe.admin import ENDPOINTS, parse_query
from trioproxy.observe.stats import QUANTILES
from trioproxy.runtime.server import Server

# --------------------------------------------------------------------------- helpers


def admin_url(server: Server, path: str = "/") -> str:
    bound = server.admin_bound
    assert bound is not None, "the mesh has no admin"
    return f"http://{bound.host}:{bound.port}{path}"


async def start(nursery: trio.Nursery, *clusters: Cluster) -> tuple[Server, Any]:
    """A proxy with an admin; `/` routes to cluster "svc" (one real upstream)."""
    up = await start_upstream(nursery)
    mesh = simple_mesh([route_to("svc")], [cluster("svc", up), *clusters], admin=True)
    return await start_proxy(nursery, mesh), up


async def traffic(server: Server) -> None:
    """Two 200s and one 503 from the upstream, on one keep-alive connection."""
    async with httpx.AsyncClient() as c:
        for headers in ({}, {}, {"x-test-status": "503"}):
            r = await c.get(proxy_url(server, "/x"), headers=headers)
            assert r.status_code == int(headers.get("x-test-status", 200))
    await settle(server)


def text_stats(body: str) -> tuple[dict[str, int], dict[str, str]]:
    """Parse /stats text: counters and gauges as ints, histograms as their summary."""
    values: dict[str, int] = {}
    hists: dict[str, str] = {}
    for line in body.splitlines():
        name, sep, value = line.partition(": ")
        assert sep, f"not 'name: value': {line!r}"
        if value.lstrip("-").isdigit():
            values[name] = int(value)
        else:
            hists[name] = value
    return values, hists


async def get(server: Server, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.get(admin_url(server, path), **kw)


async def post(server: Server, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.post(admin_url(server, path), **kw)


def listener_stat(server: Server, stat: str) -> str:
    """`listener.<configured address>.<stat>`: the listeners here are declared on
    port 0, and, as in Envoy (`listener.127.0.0.1_0.downstream_cx_total` in its
    integration tests), the stat name keeps the configured port, not the bound one."""
    assert server.mesh.listeners[0].address == SocketAddress(host="127.0.0.1", port=0)
    return f"listener.127.0.0.1_0.{stat}"


# --------------------------------------------------------------------------- /stats


async def test_stats_text_has_envoy_names_with_right_values(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    r = await get(server, "/stats")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values, hists = text_stats(r.text)

    assert values["cluster.svc.upstream_rq_total"] == 3
    assert values["cluster.svc.upstream_rq_2xx"] == 2
    assert values["cluster.svc.upstream_rq_200"] == 2
    assert values["cluster.svc.upstream_rq_5xx"] == 1
    assert values["cluster.svc.upstream_rq_503"] == 1
    assert values["cluster.svc.upstream_rq_active"] == 0
    assert values["cluster.svc.membership_total"] == 1
    assert values["cluster.svc.membership_healthy"] == 1
    assert values["http.ingress_http.downstream_rq_total"] == 3
    assert values["http.ingress_http.downstream_rq_2xx"] == 2
    assert values["http.ingress_http.downstream_rq_5xx"] == 1
    # httpx kept its one connection alive for all three requests.
    assert values[listener_stat(server, "downstream_cx_total")] == 1
    assert values["cluster_manager.active_clusters"] == 1
    assert values["server.live"] == 1

    # Every counter and gauge is printed with the store's value, sorted by
    # name, histograms after them (Envoy's layout).
    names = [line.partition(": ")[0] for line in r.text.splitlines()]
    plain = names[: len(values)]
    assert plain == sorted(plain) and set(plain) == set(values)
    for name in server.stats.counters:
        assert values[name] == counter(server, name), name
    assert "cluster.svc.upstream_rq_time" in hists
    assert hists["cluster.svc.upstream_rq_time"].startswith("P0(")
    assert [p.split("(")[0] for p in hists["cluster.svc.upstream_rq_time"].split()] == [
        f"P{q * 100:g}" for q in QUANTILES
    ]


async def test_stats_filter_is_a_regex(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)

    r = await get(server, "/stats", params={"filter": r"^cluster\.svc\.upstream_rq_2xx$"})
    assert r.text == "cluster.svc.upstream_rq_2xx: 2\n"

    # A literal `+` stays a `+` (Envoy does not decode it as a space): the
    # usual way to type a regex into curl.
    r = await get(server, r"/stats?filter=^cluster\.svc\.upstream_rq_[0-9]+$")
    assert r.text == "cluster.svc.upstream_rq_200: 2\ncluster.svc.upstream_rq_503: 1\n"

    # Percent-encoded, as Prometheus sends it (envoyproxy/envoy#10926).
    r = await get(server, "/stats?filter=rq_200%24%7Cdownstream_rq_total%24")
    values, _ = text_stats(r.text)
    assert values == {
        "cluster.svc.upstream_rq_200": 2,
        "http.ingress_http.downstream_rq_total": 3,
    }

    # The filter applies to histograms too.
    r = await get(server, "/stats", params={"filter": "upstream_rq_time$"})
    assert r.text.startswith("cluster.svc.upstream_rq_time: P0(")
    assert r.text.count("\n") == 1

    r = await get(server, "/stats", params={"filter": "no-such-stat"})
    assert (r.status_code, r.text) == (200, "")

    r = await get(server, "/stats", params={"filter": "rq_(["})
    assert r.status_code == 400
    assert "invalid filter regex" in r.text


async def test_stats_usedonly(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    everything, all_hists = text_stats((await get(server, "/stats")).text)
    used, used_hists = text_stats((await get(server, "/stats?usedonly")).text)

    assert set(used) < set(everything)
    assert used["cluster.svc.upstream_rq_total"] == 3
    # Created at start-up, never touched by these requests.
    assert "cluster.svc.upstream_rq_timeout" in everything
    assert "cluster.svc.upstream_rq_timeout" not in used
    for name in used:
        assert used[name] == everything[name], name
    assert "cluster.svc.upstream_rq_time" in used_hists
    assert set(used_hists) <= set(all_hists)
    assert all(summary != "No recorded values" for summary in used_hists.values())

    # usedonly and filter combine.
    r = await get(server, "/stats?usedonly&filter=upstream_rq_t")
    assert r.text == "cluster.svc.upstream_rq_total: 3\n" + (
        f"cluster.svc.upstream_rq_time: {used_hists['cluster.svc.upstream_rq_time']}\n"
    )


async def test_stats_json_has_envoys_shape(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    r = await get(server, "/stats?format=json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert list(data) == ["stats"]
    *plain, last = data["stats"]

    # {"stats": [{"name": ..., "value": ...}, ..., {"histograms": {...}}]}
    for item in plain:
        assert set(item) == {"name", "value"}
        assert isinstance(item["name"], str) and isinstance(item["value"], int)
    values = {item["name"]: item["value"] for item in plain}
    assert values["cluster.svc.upstream_rq_2xx"] == 2
    assert values["cluster.svc.upstream_rq_total"] == 3
    assert values["http.ingress_http.downstream_rq_total"] == 3
    assert values[listener_stat(server, "downstream_cx_total")] == 1

    hist = last["histograms"]
    assert hist["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    computed = {h["name"]: h["values"] for h in hist["computed_quantiles"]}
    rq_time = computed["cluster.svc.upstream_rq_time"]
    assert len(rq_time) == len(QUANTILES)
    for v in rq_time:
        assert set(v) == {"interval", "cumulative"}
        assert isinstance(v["cumulative"], int | float) and v["cumulative"] >= 0
    cumulative = [v["cumulative"] for v in rq_time]
    assert cumulative == sorted(cumulative)
    # A histogram with nothing recorded has null quantiles, as in Envoy.
    text_values, _ = text_stats((await get(server, "/stats")).text)
    unused = [n for n, h in server.stats.histograms.items() if not h.used]
    for name in unused:
        assert all(v["cumulative"] is None for v in computed[name])

    # The same values as the text form (counters do not move between reads).
    for name, value in values.items():
        if name in server.stats.counters:
            assert text_values[name] == value, name

    # Filter and usedonly apply to the JSON form too.
    r = await get(server, "/stats", params={"format": "json", "filter": "upstream_rq_2"})
    data = r.json()["stats"]
    assert data[:-1] == [
        {"name": "cluster.svc.upstream_rq_200", "value": 2},
        {"name": "cluster.svc.upstream_rq_2xx", "value": 2},
    ]
    assert data[-1]["histograms"]["computed_quantiles"] == []


async def test_stats_unknown_format_is_400(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    r = await get(server, "/stats?format=yaml")
    assert r.status_code == 400
    assert "json" in r.text and "prometheus" in r.text


# --------------------------------------------------------------------------- prometheus

_PROM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PROM_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)"
)
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(body: str) -> tuple[dict[str, str], dict[tuple[str, str], float]]:
    """A strict reader of the text exposition format 0.0.4.

    Returns the TYPE of each metric family and every sample keyed by
    (name, labels text). Fails on any line it does not understand, on a
    sample without a preceding TYPE, and on a family declared twice.
    """
    types: dict[str, str] = {}
    samples: dict[tuple[str, str], float] = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert _PROM_NAME.fullmatch(name), line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"family declared twice: {line}"
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = _PROM_SAMPLE.fullmatch(line)
        assert m, f"bad sample line: {line!r}"
        labels = m["labels"] or ""
        if labels:
            assert _PROM_LABEL.sub("", labels).replace(",", "") == "", line
        name = m["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(family) == "histogram", f"no TYPE for {line}"
        assert (name, labels) not in samples, f"duplicate sample: {line}"
        samples[(name, labels)] = float(m["value"])
    return types, samples


async def test_prometheus_is_parseable_with_envoy_values(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    r = await get(server, "/stats/prometheus")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4"
    types, samples = parse_prometheus(r.text)

    # Envoy's tag extraction: the cluster name, response code (class),
    # connection manager prefix and listener address become labels.
    svc = 'envoy_cluster_name="svc"'
    assert types["envoy_cluster_upstream_rq_total"] == "counter"
    assert samples[("envoy_cluster_upstream_rq_total", svc)] == 3
    assert samples[("envoy_cluster_upstream_rq_xx", f'envoy_response_code_class="2",{svc}')] == 2
    assert samples[("envoy_cluster_upstream_rq", f'envoy_response_code="200",{svc}')] == 2
    assert samples[("envoy_cluster_upstream_rq", f'envoy_response_code="503",{svc}')] == 1
    ingress = 'envoy_http_conn_manager_prefix="ingress_http"'
    assert samples[("envoy_http_downstream_rq_total", ingress)] == 3
    assert (
        samples[("envoy_listener_downstream_cx_total", 'envoy_listener_address="127.0.0.1_0"')] == 1
    )
    assert types["envoy_cluster_upstream_rq_active"] == "gauge"
    assert samples[("envoy_cluster_membership_healthy", svc)] == 1
    assert samples[("envoy_server_live", "")] == 1

    # Histograms: cumulative buckets ending in +Inf == _count, plus _sum.
    name = "envoy_cluster_upstream_rq_time"
    assert types[name] == "histogram"
    buckets = [
        (float(re.fullmatch(r'envoy_cluster_name="svc",le="([^"]+)"', labels)[1]), value)  # type: ignore[index]
        for (n, labels), value in samples.items()
        if n == f"{name}_bucket"
    ]
    bounds = [b for b, _ in buckets]
    counts = [c for _, c in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf
    assert counts == sorted(counts)
    assert counts[-1] == samples[(f"{name}_count", svc)] == 3
    assert samples[(f"{name}_sum", svc)] >= 0


async def test_prometheus_via_stats_format_and_filters(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    # Filtered to counters: the two forms print the same thing (gauges such as
    # server.uptime may move between two reads).
    flt = {"filter": r"^cluster\.svc\.upstream_rq_"}
    a = await get(server, "/stats/prometheus", params=flt)
    b = await get(server, "/stats", params={"format": "prometheus", **flt})
    assert a.text == b.text
    types, samples = parse_prometheus(a.text)
    assert all(n.startswith("envoy_cluster_upstream_rq") for n in types)
    assert samples[("envoy_cluster_upstream_rq_total", 'envoy_cluster_name="svc"')] == 3
    assert "envoy_cluster_upstream_rq_time" in types

    # ?usedonly leaves out stats never touched.
    types, _ = parse_prometheus((await get(server, "/stats/prometheus?usedonly")).text)
    assert "envoy_cluster_upstream_rq_total" in types
    assert "envoy_cluster_upstream_rq_timeout" not in types

    r = await get(server, "/stats/prometheus", params={"filter": "nothing-matches"})
    assert (r.status_code, r.text) == (200, "")
    r = await get(server, "/stats/prometheus", params={"filter": "(("})
    assert r.status_code == 400


# --------------------------------------------------------------------------- /clusters


async def test_clusters_text_per_host(nursery: trio.Nursery) -> None:
    a = await start_upstream(nursery, "a")
    b = await start_upstream(nursery, "b")
    weighted = Cluster(
        name="svc",
        endpoints=(
            Endpoint(address=addr(a.address), weight=3),
            Endpoint(address=addr(b.address), weight=1),
        ),
    )
    mesh = simple_mesh([route_to("svc")], [weighted, Cluster(name="empty")], admin=True)
    server = await start_proxy(nursery, mesh)
    c = await clusters_text(server)
    for host, weight in ((a.address, "3"), (b.address, "1")):
        p = f"svc::{host}::"
        assert c[p + "weight"] == weight
        assert c[p + "health_flags"] == "healthy"
        assert c[p + "rq_active"] == "0"
        assert c[p + "rq_total"] == "0"
        assert c[p + "rq_success"] == "0"
        assert c[p + "rq_error"] == "0"
        assert c[p + "cx_active"] == "0"
    assert c["svc::observability_name"] == "svc"
    assert c["svc::added_via_api"] == "false"
    # A cluster with no hosts is still listed.
    assert c["empty::observability_name"] == "empty"


async def clusters_text(server: Server) -> dict[str, str]:
    """/clusters as {"cluster::host::stat": value}."""
    r = await get(server, "/clusters")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        key, sep, value = line.rpartition("::")
        assert sep, line
        out[key] = value
    return out


async def test_clusters_rq_active_while_in_flight(nursery: trio.Nursery) -> None:
    server, up = await start(nursery)
    p = f"svc::{up.address}::"

    async def hang(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with httpx.AsyncClient(timeout=30) as client:
                await client.get(proxy_url(server), headers={"x-test-hang": "1"})

    hanging = await nursery.start(hang)
    with trio.fail_after(10):
        while (await clusters_text(server))[p + "rq_active"] != "1":
            await trio.sleep(0.01)
    c = await clusters_text(server)
    assert c[p + "rq_total"] == "1"
    assert c[p + "cx_active"] == "1"
    hanging.cancel()  # the client leaves; the proxy gives up on the upstream
    with trio.fail_after(10):
        while (await clusters_text(server))[p + "rq_active"] != "0":
            await trio.sleep(0.01)


async def test_clusters_json(nursery: trio.Nursery) -> None:
    server, up = await start(nursery, Cluster(name="empty"))
    await traffic(server)
    r = await get(server, "/clusters?format=json")
    assert r.headers["content-type"] == "application/json"
    statuses = {c["name"]: c for c in r.json()["cluster_statuses"]}
    assert set(statuses) == {"svc", "empty"}
    assert statuses["empty"]["host_statuses"] == []
    assert statuses["svc"]["added_via_api"] is False
    [host] = statuses["svc"]["host_statuses"]
    assert host["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": up.port}}
    assert host["weight"] == 1
    assert host["health_status"] == {"eds_health_status": "HEALTHY"}
    stats = {s["name"]: s["value"] for s in host["stats"]}
    assert stats["rq_total"] == 3
    assert stats["rq_success"] == 2
    assert stats["rq_error"] == 1
    assert stats["rq_active"] == 0
    assert stats["cx_active"] == 1  # the pooled keep-alive connection
    assert {s["name"]: s["type"] for s in host["stats"]}["rq_total"] == "COUNTER"


async def test_clusters_json_ipv6_host(nursery: trio.Nursery) -> None:
    ipv6 = Cluster(
        name="v6", endpoints=(Endpoint(address=SocketAddress(host="::1", port=8080), priority=1),)
    )
    server, _ = await start(nursery, ipv6)
    statuses = {
        c["name"]: c
        for c in (await get(server, "/clusters?format=json")).json()["cluster_statuses"]
    }
    [host] = statuses["v6"]["host_statuses"]
    assert host["address"] == {"socket_address": {"address": "::1", "port_value": 8080}}
    text = (await get(server, "/clusters")).text
    assert "v6::[::1]:8080::weight::1\n" in text
    assert "v6::[::1]:8080::priority::1\n" in text
    assert host["priority"] == 1


# --------------------------------------------------------------------------- other endpoints


async def test_config_dump_is_the_running_graph(nursery: trio.Nursery) -> None:
    server, up = await start(nursery)
    r = await get(server, "/config_dump")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert [lc["name"] for lc in data["listeners"]] == ["ingress"]
    assert [c["name"] for c in data["clusters"]] == ["svc"]
    [ep] = data["clusters"][0]["endpoints"]
    assert ep["address"] == {"host": "127.0.0.1", "port": up.port}
    assert data["admin"]["address"] == {"host": "127.0.0.1", "port": 0}
    assert "ingress_http" in r.text
    json.dumps(data)  # plain JSON all the way down


async def test_ready_and_server_info(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    r = await get(server, "/ready")
    assert (r.status_code, r.text) == (200, "LIVE\n")

    r = await get(server, "/server_info")
    assert r.status_code == 200
    info = r.json()
    assert info["state"] == "LIVE"
    assert info["version"] == f"trioproxy/{server.version}"
    assert re.fullmatch(r"\d+s", info["uptime_current_epoch"])
    assert re.fullmatch(r"\d+s", info["uptime_all_epochs"])
    assert info["hostname"] == socket.gethostname()
    assert isinstance(info["command_line_options"], dict)

    # Not live: 503 with the state, so a readiness probe fails.
    server.state = "DRAINING"
    try:
        r = await get(server, "/ready")
        assert (r.status_code, r.text) == (503, "DRAINING\n")
        assert (await get(server, "/server_info")).json()["state"] == "DRAINING"
    finally:
        server.state = "LIVE"


async def test_listeners_shows_the_real_port(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    port = server.listener_address("ingress").port
    assert (await get(server, "/listeners")).text == f"ingress::127.0.0.1:{port}\n"
    data = (await get(server, "/listeners?format=json")).json()
    assert data == {
        "listener_statuses": [
            {
                "name": "ingress",
                "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            }
        ]
    }


async def test_help_lists_every_endpoint(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    r = await get(server, "/help")
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert lines[0] == "admin commands are:"
    listed = {line.strip().split(":")[0].split(" ")[0]: line for line in lines[1:]}
    for path in (
        "/stats",
        "/stats/prometheus",
        "/clusters",
        "/config_dump",
        "/ready",
        "/server_info",
        "/help",
        "/reset_counters",
        "/listeners",
        "/quitquitquit",
    ):
        assert path in listed, path
    assert set(listed) == set(ENDPOINTS)
    assert "(POST)" in listed["/reset_counters"]
    assert "(POST)" not in listed["/stats"]

    home = await get(server, "/")
    assert home.headers["content-type"].startswith("text/html")
    assert '<a href="/stats">' in home.text


async def test_reset_counters(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    assert counter(server, "cluster.svc.upstream_rq_total") == 3
    r = await post(server, "/reset_counters")
    assert (r.status_code, r.text) == (200, "OK\n")

    values, _ = text_stats((await get(server, "/stats")).text)
    for name in server.stats.counters:
        assert values[name] == 0, name
    # Gauges are state, not counts: they keep their values.
    assert values["cluster.svc.membership_total"] == 1
    assert values["server.live"] == 1

    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server))).status_code == 200
    await settle(server)
    values, _ = text_stats((await get(server, "/stats")).text)
    assert values["cluster.svc.upstream_rq_total"] == 1
    assert values["cluster.svc.upstream_rq_2xx"] == 1


async def test_methods(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    await traffic(server)
    mutating = sorted(p for p, ep in ENDPOINTS.items() if ep.mutating)
    assert {"/reset_counters", "/quitquitquit", "/logging"} <= set(mutating)
    async with httpx.AsyncClient() as c:
        # GET on an endpoint that changes the server does nothing: 405 + Allow.
        # (Envoy answers 400 here; 405 names the real problem.)
        for path in mutating:
            r = await c.get(admin_url(server, path))
            assert r.status_code == 405, path
            assert r.headers["allow"] == "POST"
            assert "POST" in r.text
        assert server.state == "LIVE"  # GET /quitquitquit did not stop it
        assert counter(server, "cluster.svc.upstream_rq_total") == 3  # nor reset

        r = await c.post(admin_url(server, "/stats"))
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, HEAD"
        r = await c.delete(admin_url(server, "/clusters"))
        assert r.status_code == 405

        r = await c.head(admin_url(server, "/server_info"))
        assert r.status_code == 200
        assert r.content == b""
        assert int(r.headers["content-length"]) > 0

        r = await c.get(admin_url(server, "/no/such/thing"))
        assert r.status_code == 404
        assert "/help" in r.text
        # A POST with a body on the same keep-alive connection still works.
        r = await c.post(admin_url(server, "/reset_counters"), content=b"x" * 100_000)
        assert r.status_code == 200
        r = await c.get(admin_url(server, "/ready"))
        assert r.text == "LIVE\n"
    assert counter(server, "cluster.svc.upstream_rq_total") == 0


async def test_logging_changes_the_level(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    root = logging.getLogger("trioproxy")
    before = root.level
    try:
        r = await post(server, "/logging?level=debug")
        assert r.status_code == 200
        assert "trioproxy: debug" in r.text
        assert root.level == logging.DEBUG
        r = await post(server, "/logging?level=loud")
        assert r.status_code == 400
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


async def test_quitquitquit_stops_the_server(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    mesh = simple_mesh([route_to("svc")], [cluster("svc", up)], admin=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            server = await start_proxy(n, mesh)
            r = await post(server, "/quitquitquit")
            assert (r.status_code, r.text) == (200, "OK\n")
            # run() returns, so this nursery closes on its own.
    assert server.state == "DRAINING"
    assert gauge(server, "server.live") == 0


async def test_admin_port_is_not_shared() -> None:
    # Another process on the admin port, with SO_REUSEPORT as our listeners
    # use: the admin must still refuse to share it.
    other = trio.socket.socket()
    try:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await other.bind(("127.0.0.1", 0))
        other.listen(1)
        host, port = other.getsockname()
        mesh = Mesh(clusters=(Cluster(name="svc"),))
        server = Server(mesh, admin_address=SocketAddress(host=host, port=port))
        with trio.fail_after(5), pytest.raises(BaseException) as info:
            await server.run()
        [error] = leaves(info.value)
        assert isinstance(error, OSError)
        assert error.errno == errno.EADDRINUSE
        assert f"admin cannot listen on 127.0.0.1:{port}" in str(error)
    finally:
        other.close()


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def test_parse_query() -> None:
    assert parse_query("") == {}
    assert parse_query("usedonly") == {"usedonly": ""}
    assert parse_query("filter=a+b&format=json") == {"filter": "a+b", "format": "json"}
    assert parse_query("filter=a%7Cb%20c&&x=") == {"filter": "a|b c", "x": ""}
    assert parse_query("a=1&a=2") == {"a": "1"}  # the first value, as Envoy's getFirstValue


async def _wait_for_text(path: Path, text: str) -> str:
    """The access log flushes from a worker thread about once a second."""
    with trio.fail_after(10):
        while not (path.exists() and text in path.read_text()):
            await trio.sleep(0.05)
    return path.read_text()


async def test_reopen_logs_after_rotation(nursery: trio.Nursery, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    up = await start_upstream(nursery)
    mesh = simple_mesh(
        [route_to("svc")],
        [cluster("svc", up)],
        admin=True,
        access_logs=[AccessLog(path=str(log), format="%REQ(:PATH)%\n")],
    )
    server = await start_proxy(nursery, mesh)
    assert (await get(server, "/reopen_logs")).status_code == 405  # mutating: POST only
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server, "/before"))).status_code == 200
        await _wait_for_text(log, "/before\n")
        os.rename(log, tmp_path / "access.log.1")
        r = await post(server, "/reopen_logs")
        assert (r.status_code, r.text) == (200, "OK\n")
        assert (await c.get(proxy_url(server, "/after"))).status_code == 200
        assert await _wait_for_text(log, "/after\n") == "/after\n"
    assert (tmp_path / "access.log.1").read_text() == "/before\n"
