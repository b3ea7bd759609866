"""Tracing end to end: real clients (httpx) through the proxy to real
upstreams, spans reported to a real HTTP collector (`trace_collector`).

Checked: propagation headers the upstream sees (trace id kept, parent =
the proxy's client span), the span tree (server span parent of one client
span per try), tags, sampling (random 0 %, an incoming sampled=0,
x-client-trace-id), Zipkin v2 and OTLP JSON shapes, a dead collector and a
full queue (spans dropped and counted, requests unaffected), batching on
MockClock, x-request-id, and the DSL.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from trioproxy.dsl import MeshError, load_mesh

from tests.conftest import (
    addr,
    cluster,
    counter,
    dead_address,
    proxy_url,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.memnet import MemoryNetwork
from tests.trace_collector import Collector
from trioproxy.codec.stream import RequestHead
from trioproxy.config import HedgePolicy, Mesh, RetryPolicy, SocketAddress, Tracing
from trioproxy.config.dump import to_jsonable, to_tree
from trioproxy.http.conn_manager import ConnectionManager
from trioproxy.observe.stats import StatsStore
from trioproxy.observe.tracing.exporter import SpanExporter
from trioproxy.observe.tracing.span import Span
from trioproxy.runtime.server import Server

TRACE = "463ac35c9f6413ad48485a3953bb6124"
SPAN = "a2fb4a1d1a96d312"
PARENT = "0020000000000001"


async def start_collector(nursery: trio.Nursery, network: Any = None) -> Collector:
    c: Collector = await nursery.start(Collector().run, network)
    return c


def tracing(collector: Collector | str, **kw: Any) -> Tracing:
    address = collector if isinstance(collector, str) else collector.address
    kw.setdefault("min_flush_spans", 1)
    kw.setdefault("flush_interval", 0.05)
    if kw.get("provider") == "opentelemetry":
        kw.setdefault("collector_path", "/v1/traces")
        kw.setdefault("propagation", ("w3c",))
    kw.setdefault("provider", "zipkin")
    return Tracing(collector=addr(address), **kw)


def mesh(upstream: Any, trace: Tracing, **route: Any) -> Mesh:
    return simple_mesh([route_to("svc", **route)], [cluster("svc", upstream)], tracing=trace)


async def wait_counter(server: Server, name: str, n: int) -> None:
    """Wait for a counter the exporter bumps once the collector answered."""
    with trio.fail_after(10):
        while server.stats.counters[name].value < n:
            await trio.sleep(0.01)
    assert server.stats.counters[name].value == n


def by_kind(spans: list[dict[str, Any]], kind: Any) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == kind]


async def test_zipkin_b3_propagation_and_span_tree(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    server = await start_proxy(nursery, mesh(up, tracing(col, service_name="front")))
    async with httpx.AsyncClient() as c:
        r = await c.get(
            proxy_url(server, "/a?b=1"),
            headers={
                "x-b3-traceid": TRACE,
                "x-b3-spanid": SPAN,
                "x-b3-parentspanid": PARENT,
                "x-b3-sampled": "1",
                "user-agent": "tester",
            },
        )
    assert r.status_code == 200
    seen = up.requests[0]["headers"]
    spans = await col.wait_spans(2)
    assert col.reports[0][0] == "/api/v2/spans"
    [server_span] = by_kind(spans, "SERVER")
    [client_span] = by_kind(spans, "CLIENT")
    # Zipkin's shared span context (Envoy's default): the server span is the
    # caller's span, reported with shared: true.
    assert server_span["traceId"] == TRACE
    assert server_span["id"] == SPAN
    assert server_span["parentId"] == PARENT
    assert server_span["shared"] is True
    # The client span is the server span's child, and the upstream's parent.
    assert client_span["traceId"] == TRACE
    assert client_span["parentId"] == SPAN
    assert "shared" not in client_span
    assert seen["x-b3-traceid"] == TRACE
    assert seen["x-b3-spanid"] == client_span["id"]
    assert seen["x-b3-parentspanid"] == SPAN
    assert seen["x-b3-sampled"] == "1"
    assert "traceparent" not in seen  # only the configured format is written
    # Shapes and tags.
    for s in spans:
        assert re.fullmatch(r"[0-9a-f]{16}", s["id"])
        assert isinstance(s["timestamp"], int) and isinstance(s["duration"], int)
        assert s["duration"] >= 1
        assert s["localEndpoint"] == {"serviceName": "front"}
        assert all(isinstance(v, str) for v in s["tags"].values())
        assert s["tags"]["component"] == "proxy"
        assert s["tags"]["node_id"] == server.hostname
        assert "error" not in s["tags"]
    st = server_span["tags"]
    assert st["http.method"] == "GET"
    assert st["http.url"] == f"http://127.0.0.1:{server.listener_address('ingress').port}/a?b=1"
    assert st["http.status_code"] == "200"
    assert st["http.protocol"] == "HTTP/1.1"
    assert st["upstream_cluster"] == "svc"
    assert st["response_flags"] == "-"
    assert st["user_agent"] == "tester"
    assert st["guid:x-request-id"] == seen["x-request-id"]
    assert server_span["remoteEndpoint"]["ipv4"] == "127.0.0.1"
    assert server_span["name"] == "ingress"
    ct = client_span["tags"]
    assert client_span["name"] == "router svc egress"
    assert ct["http.status_code"] == "200"
    assert ct["upstream_cluster"] == "svc"
    assert ct["upstream_address"] == up.address
    assert ct["http.protocol"] == "HTTP/1.1"
    assert client_span["remoteEndpoint"] == {"ipv4": "127.0.0.1", "port": up.port}
    # The client span lies within the server span.
    assert server_span["timestamp"] <= client_span["timestamp"]
    assert (
        client_span["timestamp"] + client_span["duration"]
        <= server_span["timestamp"] + server_span["duration"] + 1
    )
    await settle(server)
    assert counter(server, "http.ingress_http.tracing.random_sampling") == 1
    await wait_counter(server, "tracing.zipkin.spans_sent", 2)


async def test_new_trace_without_incoming_context(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    server = await start_proxy(
        nursery, mesh(up, tracing(col, propagation=("b3-single", "w3c", "b3")))
    )
    async with httpx.AsyncClient() as c:
        await c.get(proxy_url(server))
    spans = await col.wait_spans(2)
    [server_span] = by_kind(spans, "SERVER")
    [client_span] = by_kind(spans, "CLIENT")
    assert "parentId" not in server_span and "shared" not in server_span
    assert re.fullmatch(r"[0-9a-f]{32}", server_span["traceId"])
    assert client_span["parentId"] == server_span["id"]
    seen = up.requests[0]["headers"]
    trace, cid = server_span["traceId"], client_span["id"]
    assert seen["b3"] == f"{trace}-{cid}-1-{server_span['id']}"
    assert seen["traceparent"] == f"00-{trace}-{cid}-01"
    assert seen["x-b3-spanid"] == cid


@pytest.mark.parametrize("provider", ["zipkin", "opentelemetry"])
async def test_two_proxy_hops_make_one_trace(nursery: trio.Nursery, provider: str) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    inner = await start_proxy(nursery, mesh(up, tracing(col, provider=provider)))
    inner_address = f"127.0.0.1:{inner.listener_address('ingress').port}"
    edge = await start_proxy(nursery, mesh(inner_address, tracing(col, provider=provider)))
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(edge))).status_code == 200
    spans = await col.wait_spans(4)
    if provider == "zipkin":
        [edge_server] = [s for s in spans if s["kind"] == "SERVER" and "shared" not in s]
        [inner_server] = [s for s in spans if s["kind"] == "SERVER" and s.get("shared")]
        [edge_client] = [
            s for s in spans if s["kind"] == "CLIENT" and s["parentId"] == edge_server["id"]
        ]
        # Shared span context: the inner proxy's server span is the edge's
        # client span, seen from the other side.
        assert inner_server["id"] == edge_client["id"]
        assert inner_server["parentId"] == edge_server["id"]
        trace_key, id_key, parent_key = "traceId", "id", "parentId"
    else:
        trace_key, id_key, parent_key = "traceId", "spanId", "parentSpanId"
        edge_server = next(s for s in spans if s["kind"] == 2 and parent_key not in s)
        edge_client = next(s for s in spans if s.get(parent_key) == edge_server[id_key])
        inner_server = next(s for s in spans if s.get(parent_key) == edge_client[id_key])
        assert inner_server["kind"] == 2
    inner_client = next(
        s for s in spans if s.get(parent_key) == inner_server[id_key] and s is not inner_server
    )
    assert {s[trace_key] for s in spans} == {edge_server[trace_key]}
    assert len({s[id_key] for s in spans}) == (3 if provider == "zipkin" else 4)
    assert inner_client is not edge_client
    # The same request id all the way (the inner proxy trusts 127.0.0.1).
    rid = up.requests[0]["headers"]["x-request-id"]
    if provider == "zipkin":
        assert {s["tags"]["guid:x-request-id"] for s in spans if s["kind"] == "SERVER"} == {rid}


async def test_otlp_w3c(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    server = await start_proxy(
        nursery, mesh(up, tracing(col, provider="opentelemetry", service_name="edge"))
    )
    async with httpx.AsyncClient() as c:
        r = await c.get(
            proxy_url(server, "/x"),
            headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=1"},
        )
    assert r.status_code == 200
    await col.wait_spans(2)
    path, body = col.reports[0]
    assert path == "/v1/traces"
    [rs] = body["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "edge"}} in rs["resource"]["attributes"]
    spans = col.spans()
    [server_span] = by_kind(spans, 2)
    [client_span] = by_kind(spans, 3)
    # Not Zipkin: the server span is a new child of the caller's span.
    assert server_span["traceId"] == TRACE
    assert server_span["parentSpanId"] == SPAN
    assert server_span["spanId"] != SPAN
    assert client_span["parentSpanId"] == server_span["spanId"]
    assert server_span["traceState"] == "vendor=1"
    seen = up.requests[0]["headers"]
    assert seen["traceparent"] == f"00-{TRACE}-{client_span['spanId']}-01"
    assert seen["tracestate"] == "vendor=1"
    assert "x-b3-traceid" not in seen
    for s in spans:
        assert isinstance(s["startTimeUnixNano"], str)
        assert int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"])
        assert s["status"] == {"code": 0}
    attrs_ = {a["key"]: a["value"] for a in server_span["attributes"]}
    assert attrs_["http.status_code"] == {"intValue": "200"}
    assert attrs_["http.method"] == {"stringValue": "GET"}
    assert attrs_["upstream_cluster"] == {"stringValue": "svc"}
    await settle(server)
    await wait_counter(server, "tracing.opentelemetry.spans_sent", 2)
    assert counter(server, "tracing.opentelemetry.reports_sent") >= 1


async def test_retried_request_has_a_client_span_per_try(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    up.next_statuses = [503]
    col = await start_collector(nursery)
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2)
    server = await start_proxy(nursery, mesh(up, tracing(col), retry_policy=policy))
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy_url(server))
    assert r.status_code == 200
    spans = await col.wait_spans(3)
    [server_span] = by_kind(spans, "SERVER")
    clients = sorted(by_kind(spans, "CLIENT"), key=lambda s: s["timestamp"])
    assert len(clients) == 2
    assert {s["parentId"] for s in clients} == {server_span["id"]}
    assert len({s["id"] for s in clients}) == 2
    assert clients[0]["tags"]["http.status_code"] == "503"
    assert clients[0]["tags"]["error"] == "true"
    assert clients[1]["tags"]["http.status_code"] == "200"
    assert "error" not in clients[1]["tags"]
    # Each try carried its own span id upstream.
    assert [q["headers"]["x-b3-spanid"] for q in up.requests] == [s["id"] for s in clients]
    assert server_span["tags"]["http.status_code"] == "200"


async def test_hedged_tries_have_a_client_span_each(nursery: trio.Nursery) -> None:
    slow = await start_upstream(nursery, "slow")
    fast = await start_upstream(nursery, "fast")
    slow.hang_all = True
    col = await start_collector(nursery)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", hedge_policy=HedgePolicy(initial_requests=2))],
            [cluster("svc", slow, fast)],
            tracing=tracing(col),
        ),
    )
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy_url(server))
    assert r.headers["x-upstream"] == "fast"
    spans = await col.wait_spans(3)
    [server_span] = by_kind(spans, "SERVER")
    clients = by_kind(spans, "CLIENT")
    assert len(clients) == 2
    assert {s["parentId"] for s in clients} == {server_span["id"]}
    by_host = {s["tags"]["upstream_address"]: s for s in clients}
    assert by_host[fast.address]["tags"]["http.status_code"] == "200"
    assert "error" not in by_host[fast.address]["tags"]
    # The loser was cancelled without a response: an error span.
    assert by_host[slow.address]["tags"]["error"] == "true"
    assert fast.requests[0]["headers"]["x-b3-spanid"] == by_host[fast.address]["id"]
    if slow.requests:  # the loser may be cancelled while still dialling
        assert slow.requests[0]["headers"]["x-b3-spanid"] == by_host[slow.address]["id"]


async def test_http2_downstream(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    trace = tracing(col, propagation=("w3c",), shared_span_context=False)
    server = await start_proxy(nursery, mesh(up, trace))
    async with httpx.AsyncClient(http1=False, http2=True) as c:
        responses = [
            await c.get(proxy_url(server), headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
            for _ in range(2)
        ]
    assert [r.http_version for r in responses] == ["HTTP/2", "HTTP/2"]
    spans = await col.wait_spans(4)
    servers = by_kind(spans, "SERVER")
    assert [s["tags"]["http.protocol"] for s in servers] == ["HTTP/2", "HTTP/2"]
    assert {s["traceId"] for s in spans} == {TRACE}
    # Not shared: each server span is a new child of the caller's span.
    assert {s["parentId"] for s in servers} == {SPAN}
    assert len({s["id"] for s in servers}) == 2


async def test_5xx_and_connect_failure_are_errors(nursery: trio.Nursery) -> None:
    dead = dead_address()
    col = await start_collector(nursery)
    server = await start_proxy(nursery, mesh(dead, tracing(col)))
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy_url(server))
    assert r.status_code == 503
    spans = await col.wait_spans(2)
    [server_span] = by_kind(spans, "SERVER")
    [client_span] = by_kind(spans, "CLIENT")
    assert server_span["tags"]["error"] == "true"
    assert server_span["tags"]["response_flags"] == "UF"
    assert client_span["tags"]["error"] == "true"
    assert "http.status_code" not in client_span["tags"]


async def test_sampling_decisions(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    server = await start_proxy(nursery, mesh(up, tracing(col, random_sampling=0)))
    async with httpx.AsyncClient() as c:
        # Random sampling 0 %: not traced, but ids still travel, unsampled.
        await c.get(proxy_url(server))
        seen = up.requests[-1]["headers"]
        assert seen["x-b3-sampled"] == "0"
        # x-client-trace-id forces a trace (client_sampling 100 %).
        await c.get(proxy_url(server), headers={"x-client-trace-id": "abc"})
        assert up.requests[-1]["headers"]["x-b3-sampled"] == "1"
        # An incoming sampled=1 is respected although we would not sample.
        await c.get(proxy_url(server), headers={"x-b3-sampled": "1"})
        # x-envoy-force-trace from an internal client (127.0.0.1).
        await c.get(proxy_url(server), headers={"x-envoy-force-trace": "true"})
    spans = await col.wait_spans(6)
    await settle(server)
    assert len(spans) == 6
    p = "http.ingress_http.tracing."
    assert counter(server, p + "not_traceable") == 2
    assert counter(server, p + "client_enabled") == 1
    assert counter(server, p + "service_forced") == 1
    assert counter(server, p + "random_sampling") == 0


async def test_incoming_unsampled_is_respected(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    server = await start_proxy(
        nursery, mesh(up, tracing(col, propagation=("w3c", "b3"), min_flush_spans=1))
    )
    async with httpx.AsyncClient() as c:
        await c.get(
            proxy_url(server),
            headers={"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0"},
        )
        await c.get(proxy_url(server), headers={"traceparent": f"00-{TRACE}-{SPAN}-00"})
        # A sampled request afterwards shows the exporter is working.
        await c.get(proxy_url(server), headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    await col.wait_spans(2)
    await settle(server)
    assert len(col.spans()) == 2
    first, second, third = (q["headers"] for q in up.requests)
    assert first["x-b3-sampled"] == "0" and first["x-b3-traceid"] == TRACE
    assert second["traceparent"].endswith("-00") and TRACE in second["traceparent"]
    assert third["traceparent"].endswith("-01")
    assert counter(server, "http.ingress_http.tracing.random_sampling") == 3


async def test_collector_down_drops_and_counts(nursery: trio.Nursery) -> None:
    dead = dead_address()
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, mesh(up, tracing(dead)))
    async with httpx.AsyncClient() as c:
        for _ in range(3):
            r = await c.get(proxy_url(server))
            assert r.status_code == 200
    await settle(server)
    await wait_counter(server, "tracing.zipkin.spans_dropped", 6)
    assert counter(server, "tracing.zipkin.reports_failed") >= 1
    assert counter(server, "tracing.zipkin.spans_sent") == 0


async def test_collector_error_status_is_a_dropped_report(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    col.status = 500
    server = await start_proxy(nursery, mesh(up, tracing(col, min_flush_spans=2)))
    async with httpx.AsyncClient() as c:
        await c.get(proxy_url(server))
    await col.wait_spans(2)
    await settle(server)
    await wait_counter(server, "tracing.zipkin.reports_dropped", 1)
    assert counter(server, "tracing.zipkin.spans_dropped") == 2
    assert counter(server, "tracing.zipkin.reports_sent") == 0


async def test_collector_cluster(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    trace = Tracing(
        provider="zipkin", collector_cluster="zipkin", min_flush_spans=1, flush_interval=0.05
    )
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc")],
            [cluster("svc", up), cluster("zipkin", col), cluster("nowhere")],
            tracing=trace,
        ),
    )
    async with httpx.AsyncClient() as c:
        for _ in range(2):
            assert (await c.get(proxy_url(server))).status_code == 200
    await col.wait_spans(4)
    await wait_counter(server, "tracing.zipkin.spans_sent", 4)
    # One connection to the cluster's host carried every report.
    assert col.connections == 1


async def test_collector_cluster_without_hosts_skips_reports(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    trace = Tracing(
        provider="zipkin", collector_cluster="nowhere", min_flush_spans=1, flush_interval=0.05
    )
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc")], [cluster("svc", up), cluster("nowhere")], tracing=trace),
    )
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server))).status_code == 200
    await settle(server)
    await wait_counter(server, "tracing.zipkin.spans_dropped", 2)
    assert counter(server, "tracing.zipkin.reports_skipped_no_cluster") >= 1
    assert counter(server, "tracing.zipkin.reports_failed") == 0


async def test_reload_turns_tracing_on(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    plain = simple_mesh([route_to("svc")], [cluster("svc", up)])
    server = await start_proxy(nursery, plain)
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server))).status_code == 200
        assert "x-b3-traceid" not in up.requests[-1]["headers"]
        diff = await server.reload(mesh(up, tracing(col)))
        assert diff is not None and diff.changed_listeners == ("ingress",)
    # A new connection reaches the new listener; its exporter was started.
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server))).status_code == 200
    await col.wait_spans(2)
    assert "x-b3-traceid" in up.requests[-1]["headers"]


async def test_bounded_queue_drops_and_counts(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    col = await start_collector(nursery)
    # Nothing flushes during the test: the queue fills up.
    trace = tracing(col, max_queue_spans=3, min_flush_spans=1000, flush_interval=3600)
    server = await start_proxy(nursery, mesh(up, trace))
    async with httpx.AsyncClient() as c:
        for _ in range(4):
            assert (await c.get(proxy_url(server))).status_code == 200
    await settle(server)
    [exporter] = server.span_exporters.values()
    assert exporter.queued == 3
    assert counter(server, "tracing.zipkin.spans_dropped") == 5
    assert col.reports == []


async def test_request_id_generated_and_kept(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:
        await c.get(proxy_url(server))
        await c.get(proxy_url(server), headers={"x-request-id": "mine"})
    first, second = (q["headers"]["x-request-id"] for q in up.requests)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", first
    )
    # 127.0.0.1 is internal: its request id is trusted.
    assert second == "mine"


@pytest.mark.parametrize(
    ("remote", "hcm", "kept"),
    [
        ("8.8.8.8:5000", {}, False),  # external: Envoy regenerates it
        ("8.8.8.8:5000", {"preserve_external_request_id": True}, True),
        ("8.8.8.8:5000", {"use_remote_address": False}, True),
        ("10.1.2.3:5000", {}, True),  # private: internal
        ("[::1]:5000", {}, True),
    ],
)
def test_external_request_id(remote: str, hcm: dict[str, Any], kept: bool) -> None:
    config = simple_mesh([], [], **hcm).listeners[0].filter_chains[0].filters[0]
    manager = ConnectionManager(config, router=None, stats=StatsStore())  # type: ignore[arg-type]
    head = RequestHead(method=b"GET", path=b"/", headers=[(b"x-request-id", b"client-made")])
    manager._prepare_request(head, remote, None)
    rids = [v for k, v in head.headers if k == b"x-request-id"]
    assert len(rids) == 1
    assert (rids[0] == b"client-made") == kept


# --------------------------------------------------------------- memory network, MockClock


def _span(i: int) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=f"{i + 1:016x}",
        parent_id=None,
        name="s",
        kind="SERVER",
        start_us=1,
    )


async def test_exporter_batches_on_timer_and_size(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    stats = StatsStore()
    async with trio.open_nursery() as nursery:
        col = await start_collector(nursery, net)
        cfg = Tracing(provider="zipkin", collector=addr(col.address))  # 5 spans / 5 s
        exporter = SpanExporter(cfg, net, stats)
        nursery.start_soon(exporter.run)
        for i in range(3):
            exporter.submit(_span(i))
        await trio.sleep(4.9)
        assert col.reports == []
        await trio.sleep(0.2)
        assert [len(body) for _, body in col.reports] == [3]
        assert stats.counters["tracing.zipkin.timer_flushed"].value == 1
        # Five waiting spans go at once, with no timer.
        start = trio.current_time()
        for i in range(5):
            exporter.submit(_span(i))
        await col.wait_spans(8)
        assert trio.current_time() - start < 1
        assert [len(body) for _, body in col.reports] == [3, 5]
        await trio.testing.wait_all_tasks_blocked()
        assert stats.counters["tracing.zipkin.spans_sent"].value == 8
        assert stats.counters["tracing.zipkin.reports_sent"].value == 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("collector_mode", ["keep_alive", "close", "close_silently"])
async def test_exporter_connection_reuse(
    autojump_clock: trio.testing.MockClock, collector_mode: str
) -> None:
    net = MemoryNetwork()
    stats = StatsStore()
    async with trio.open_nursery() as nursery:
        col = await start_collector(nursery, net)
        col.keep_alive = collector_mode != "close"
        col.close_after_each = collector_mode == "close_silently"
        cfg = Tracing(provider="zipkin", collector=addr(col.address), min_flush_spans=1)
        exporter = SpanExporter(cfg, net, stats)
        nursery.start_soon(exporter.run)
        for i in range(3):
            exporter.submit(_span(i))
            await col.wait_spans(i + 1)
            await trio.sleep(1)
        # Every report arrived once, whatever the collector did with the
        # connection; a kept-alive one carried them all.
        assert len(col.reports) == 3
        assert stats.counters["tracing.zipkin.reports_sent"].value == 3
        assert stats.counters["tracing.zipkin.reports_failed"].value == 0
        assert col.connections == (1 if collector_mode == "keep_alive" else 3)
        nursery.cancel_scope.cancel()


async def test_exporter_collector_timeout(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    net.blackhole("127.0.0.1", 9411)
    stats = StatsStore()
    cfg = Tracing(
        provider="opentelemetry",
        collector=SocketAddress(host="127.0.0.1", port=9411),
        min_flush_spans=1,
        collector_timeout=2.0,
    )
    exporter = SpanExporter(cfg, net, stats)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exporter.run)
        exporter.submit(_span(0))
        start = trio.current_time()
        # The submit path never waits; the exporter gives up after 2 s.
        await trio.sleep(1.9)
        assert stats.counters["tracing.opentelemetry.reports_failed"].value == 0
        await trio.sleep(0.2)
        assert stats.counters["tracing.opentelemetry.reports_failed"].value == 1
        assert stats.counters["tracing.opentelemetry.spans_dropped"].value == 1
        assert trio.current_time() - start < 3
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------- DSL


def _load(tmp_path: Path, body: str) -> Mesh:
    p = tmp_path / "mesh.py"
    p.write_text(
        "from trioproxy.dsl import cluster, http, listener, mesh, prefix\n" + textwrap.dedent(body)
    )
    return load_mesh(str(p))


def test_dsl_tracing(tmp_path: Path) -> None:
    m = _load(
        tmp_path,
        """
        svc = cluster("svc", "127.0.0.1:8081")
        MESH = mesh(
            listener("ingress", ":8000")
            .chain(http().tracing("opentelemetry", "127.0.0.1:4318", service_name="edge",
                                  random_sampling=10, propagation=["w3c", "b3-single"],
                                  max_queue_spans=100, flush_interval="250ms"))
            .route(prefix("/"), svc),
        )
        """,
    )
    hcm = m.listeners[0].filter_chains[0].filters[0]
    t = hcm.tracing  # type: ignore[attr-defined]
    assert attrs.evolve(t, location=None) == Tracing(
        provider="opentelemetry",
        collector=SocketAddress(host="127.0.0.1", port=4318),
        collector_path="/v1/traces",
        service_name="edge",
        random_sampling=10.0,
        propagation=("w3c", "b3-single"),
        max_queue_spans=100,
        flush_interval=0.25,
    )
    assert hcm.preserve_external_request_id is False  # type: ignore[attr-defined]
    assert "tracing opentelemetry -> 127.0.0.1:4318/v1/traces" in to_tree(m)
    assert to_jsonable(m)  # the dump (admin /config_dump) takes the new fields


def test_dsl_tracing_defaults_zipkin(tmp_path: Path) -> None:
    m = _load(
        tmp_path,
        """
        MESH = mesh(
            listener("ingress", ":8000")
            .chain(http(preserve_external_request_id=True).tracing())
            .route(prefix("/"), cluster("svc", "127.0.0.1:8081")),
        )
        """,
    )
    hcm = m.listeners[0].filter_chains[0].filters[0]
    t = hcm.tracing  # type: ignore[attr-defined]
    assert (t.provider, t.collector_path, t.propagation) == ("zipkin", "/api/v2/spans", ("b3",))
    assert t.collector == SocketAddress(host="127.0.0.1", port=9411)
    assert hcm.preserve_external_request_id is True  # type: ignore[attr-defined]


def test_dsl_tracing_collector_cluster(tmp_path: Path) -> None:
    m = _load(
        tmp_path,
        """
        zipkin = cluster("zipkin", "127.0.0.1:9411")
        MESH = mesh(
            listener("ingress", ":8000")
            .chain(http().tracing("zipkin", zipkin))
            .route(prefix("/"), cluster("svc", "127.0.0.1:8081")),
        )
        """,
    )
    t = m.listeners[0].filter_chains[0].filters[0].tracing  # type: ignore[attr-defined]
    assert (t.collector, t.collector_cluster) == (None, "zipkin")
    # Referenced only by tracing, the cluster is still part of the mesh.
    assert m.cluster("zipkin").endpoints[0].address == SocketAddress(host="127.0.0.1", port=9411)
    with pytest.raises(MeshError, match="unknown cluster 'zipkn'"):
        _load(
            tmp_path,
            """
            MESH = mesh(
                listener("ingress", ":8000")
                .chain(http().tracing("zipkin", "zipkn"))
                .route(prefix("/"), cluster("zipkin", "127.0.0.1:8081")),
            )
            """,
        )


def test_dsl_tracing_errors_carry_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(MeshError) as err:
        _load(
            tmp_path,
            """
            MESH = mesh(
                listener("ingress", ":8000")
                .chain(http().tracing("jaeger", "collector.local:9411", random_sampling=150,
                                      propagation="b4", max_queue_spans=0))
                .route(prefix("/"), cluster("svc", "127.0.0.1:8081")),
            )
            """,
        )
    text = str(err.value)
    for needle in (
        "unknown tracing provider 'jaeger'",
        "must be an IP address and port",
        "bad tracing random_sampling 150",
        "unknown tracing propagation 'b4'",
        "bad max_queue_spans 0",
    ):
        assert needle in text
    assert text.count("mesh.py:5") >= 5
