"""The stats store and Envoy's stats per subsystem, driven by real traffic.

One test per group of issue 5 item 1 (listener, HTTP connection manager,
cluster, server): each sends requests through a running proxy to a real
upstream and checks the numbers; then histogram quantiles (cumulative and
interval, as Envoy prints them) and Envoy's tag extraction.
"""

from __future__ import annotations

import math

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import (
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
from trioproxy.config import Cluster, Endpoint, RetryPolicy, SocketAddress
from trioproxy.observe.stats import QUANTILE_LABELS, QUANTILES, Histogram, StatsStore
from trioproxy.observe.tags import extract_tags
from trioproxy.runtime.server import Server

LISTENER = "listener.127.0.0.1_0."
HCM = "http.ingress_http."


def hist(server: Server, name: str) -> Histogram:
    return server.stats.histograms[name]


def closed_port() -> int:
    """A port with nothing listening on it (bound, then closed)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- histograms


def test_quantiles_are_envoys() -> None:
    assert QUANTILE_LABELS == (
        "P0", "P25", "P50", "P75", "P90", "P95", "P99", "P99.5", "P99.9", "P100",
    )  # fmt: skip


def test_histogram_cumulative_and_interval_quantiles() -> None:
    store = StatsStore()
    h = store.histogram("cluster.x.upstream_rq_time")
    assert h.summary() == "No recorded values"
    for v in range(1, 101):  # 1..100 ms
        h.record(v)
    # Nothing flushed yet: no interval values (Envoy prints nan), and the
    # cumulative ones span the recorded range.
    s = h.summary()
    parts = s.split(" ")
    assert [p.split("(")[0] for p in parts] == list(QUANTILE_LABELS)
    assert all(p.split("(")[1].startswith("nan,") for p in parts)
    assert h.quantile(0) == 1 and h.quantile(1) == 100
    assert 25 <= h.quantile(0.5) <= 100  # type: ignore[operator]
    cumulative = [h.quantile(q) for q in QUANTILES]
    assert cumulative == sorted(cumulative)

    store.close_intervals()
    assert h.interval is not None and h.interval.count == 100
    assert h.interval_quantile(1.0) == 100
    assert "nan" not in h.summary()

    # The next interval holds only what was recorded since the flush.
    for _ in range(10):
        h.record(3000)
    store.close_intervals()
    assert h.interval.count == 10
    assert h.interval_quantile(0.0) == 2500  # bucket precision: (2500, 5000]
    assert h.interval_quantile(1.0) == 3000  # clamped by the overall max
    assert h.quantile(1.0) == 3000 and h.count == 110
    # An interval with nothing recorded prints nan again.
    store.close_intervals()
    assert h.interval is None
    assert h.summary().startswith("P0(nan,1)")


def test_histogram_samples_are_bounded() -> None:
    store = StatsStore()
    store.keep_samples()
    h = store.histogram("x")
    for v in range(Histogram.max_samples + 5):
        h.record(v)
    taken = store.take_samples()
    assert len(taken["x"]) == Histogram.max_samples
    assert h.samples_dropped == 5
    assert store.take_samples() == {}
    assert h.count == Histogram.max_samples + 5  # quantiles lose nothing


# --------------------------------------------------------------------------- per subsystem


async def test_listener_stats(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    for _ in range(3):  # three connections, one request each
        async with httpx.AsyncClient() as c:
            assert (await c.get(proxy_url(server))).status_code == 200
    with trio.fail_after(5):
        while gauge(server, LISTENER + "downstream_cx_active"):
            await trio.sleep(0.001)
    assert counter(server, LISTENER + "downstream_cx_total") == 3
    assert counter(server, LISTENER + "downstream_cx_destroy") == 3
    length = hist(server, LISTENER + "downstream_cx_length_ms")
    assert length.count == 3 and length.min >= 0

    # While a connection is open it is active.
    async with httpx.AsyncClient() as c:
        await c.get(proxy_url(server))
        assert gauge(server, LISTENER + "downstream_cx_active") == 1
        assert counter(server, LISTENER + "downstream_cx_total") == 4


async def test_connection_manager_stats(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    async with httpx.AsyncClient() as c:  # HTTP/1.1
        for status in (200, 201, 302, 404, 404, 503):
            r = await c.get(proxy_url(server), headers={"x-test-status": str(status)})
            assert r.status_code == status
    async with httpx.AsyncClient(http1=False, http2=True) as c:  # h2 prior knowledge
        r = await c.get(proxy_url(server))
        assert (r.http_version, r.status_code) == ("HTTP/2", 200)
    await settle(server)

    assert counter(server, HCM + "downstream_rq_total") == 7
    assert counter(server, HCM + "downstream_rq_1xx") == 0
    assert counter(server, HCM + "downstream_rq_2xx") == 3
    assert counter(server, HCM + "downstream_rq_3xx") == 1
    assert counter(server, HCM + "downstream_rq_4xx") == 2
    assert counter(server, HCM + "downstream_rq_5xx") == 1
    assert counter(server, HCM + "downstream_cx_http1_total") == 1
    assert counter(server, HCM + "downstream_cx_http2_total") == 1
    assert counter(server, HCM + "downstream_rq_http1_total") == 6
    assert counter(server, HCM + "downstream_rq_http2_total") == 1
    assert hist(server, HCM + "downstream_rq_time").count == 7

    # A request the upstream holds for 50 ms takes at least that long.
    async with httpx.AsyncClient() as c:
        await c.get(proxy_url(server), headers={"x-test-delay": "0.05"})
    await settle(server)
    assert hist(server, HCM + "downstream_rq_time").max >= 50


async def test_cluster_stats(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    dead = Cluster(
        name="dead",
        endpoints=(Endpoint(address=SocketAddress(host="127.0.0.1", port=closed_port())),),
    )
    retry = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=1)
    mesh = simple_mesh(
        [
            route_to("dead", "/dead"),
            route_to("svc", "/retry", retry_policy=retry),
            route_to("svc", "/slow", timeout=0.05),
            route_to("svc"),
        ],
        [cluster("svc", up), dead],
    )
    server = await start_proxy(nursery, mesh)
    C = "cluster.svc."
    async with httpx.AsyncClient() as c:
        for status in (200, 200, 503):
            r = await c.get(proxy_url(server), headers={"x-test-status": str(status)})
            assert r.status_code == status
        assert gauge(server, C + "upstream_cx_active") == 1  # kept alive in the pool
        # 503 then a retry that also gets 503.
        r = await c.get(proxy_url(server, "/retry"), headers={"x-test-status": "503"})
        assert r.status_code == 503
        r = await c.get(proxy_url(server, "/slow"), headers={"x-test-hang": "1"})
        assert r.status_code == 504
        r = await c.get(proxy_url(server, "/dead"))
        assert (r.status_code, r.headers.get("x-envoy-response-flags", "UF")) == (503, "UF")
    await settle(server)

    assert counter(server, C + "upstream_rq_total") == 6
    assert counter(server, C + "upstream_rq_200") == 2
    assert counter(server, C + "upstream_rq_2xx") == 2
    assert counter(server, C + "upstream_rq_503") == 3
    assert counter(server, C + "upstream_rq_5xx") == 3
    assert counter(server, C + "upstream_rq_retry") == 1
    assert counter(server, C + "upstream_rq_timeout") == 1
    assert hist(server, C + "upstream_rq_time").count == 5  # every response received
    assert counter(server, C + "upstream_cx_total") >= 1
    assert counter(server, C + "upstream_cx_connect_fail") == 0
    assert gauge(server, C + "membership_total") == 1
    assert gauge(server, C + "membership_healthy") == 1
    assert counter(server, "cluster.dead.upstream_cx_connect_fail") == 1
    assert counter(server, "cluster.dead.upstream_cx_total") == 0
    assert "cluster.dead.upstream_cx_connect_timeout" in server.stats.counters
    assert gauge(server, "cluster_manager.active_clusters") == 2


async def test_server_stats(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    assert gauge(server, "server.live") == 1
    assert gauge(server, "server.concurrency") == 1
    await trio.sleep(0.01)  # the uptime task's first round
    assert gauge(server, "server.memory_allocated") > 0
    assert gauge(server, "server.uptime") >= 0


async def test_flush_loop_closes_intervals(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    h = server.stats.histogram("test.h")
    h.record(7)
    assert h.interval is None
    await trio.sleep(server.mesh.stats_flush_interval + 0.1)  # Envoy's 5 s
    assert h.interval is not None and h.interval.count == 1


# --------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("name", "extracted", "tags"),
    [
        (
            "cluster.x.upstream_rq_200",
            "cluster.upstream_rq",
            (("envoy.response_code", "200"), ("envoy.cluster_name", "x")),
        ),
        (
            "cluster.x.upstream_rq_2xx",
            "cluster.upstream_rq_xx",
            (("envoy.response_code_class", "2"), ("envoy.cluster_name", "x")),
        ),
        (
            "http.ingress_http.downstream_rq_5xx",
            "http.downstream_rq_xx",
            (
                ("envoy.response_code_class", "5"),
                ("envoy.http_conn_manager_prefix", "ingress_http"),
            ),
        ),
        (
            "http.ingress_http.downstream_rq_time",
            "http.downstream_rq_time",
            (("envoy.http_conn_manager_prefix", "ingress_http"),),
        ),
        (
            "listener.0.0.0.0_8000.downstream_cx_total",
            "listener.downstream_cx_total",
            (("envoy.listener_address", "0.0.0.0_8000"),),
        ),
        (
            "listener.__1_8000.downstream_cx_total",
            "listener.downstream_cx_total",
            (("envoy.listener_address", "__1_8000"),),
        ),
        # A listener named by stat_prefix is not an address: untagged, as in Envoy.
        ("listener.ingress.downstream_cx_total", "listener.ingress.downstream_cx_total", ()),
        (
            "cluster.x.grpc.Greeter.SayHello.success",
            "cluster.grpc.success",
            (
                ("envoy.grpc_bridge_method", "SayHello"),
                ("envoy.grpc_bridge_service", "Greeter"),
                ("envoy.cluster_name", "x"),
            ),
        ),
        (
            "tcp.db.downstream_cx_total",
            "tcp.downstream_cx_total",
            (("envoy.tcp_prefix", "db"),),
        ),
        ("server.live", "server.live", ()),
        ("cluster_manager.active_clusters", "cluster_manager.active_clusters", ()),
    ],
)
def test_envoy_tag_extraction(name: str, extracted: str, tags: tuple[tuple[str, str], ...]) -> None:
    t = extract_tags(name)
    assert (t.name, t.tags) == (extracted, tags)


def test_no_quantile_is_nan_once_recorded() -> None:
    h = Histogram("x")
    h.record(0.1)
    assert all(not math.isnan(h.quantile(q) or 0) for q in QUANTILES)


# --------------------------------------------------------------------------- prometheus


async def test_prometheus_parses_with_prometheus_client(nursery: trio.Nursery) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    up = await start_upstream(nursery)
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc")], [cluster("svc", up), cluster("other", up)], admin=True),
    )
    async with httpx.AsyncClient() as c:
        for status in (200, 200, 404, 503):
            await c.get(proxy_url(server), headers={"x-test-status": str(status)})
    await settle(server)
    bound = server.admin_bound
    assert bound is not None
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"http://127.0.0.1:{bound.port}/stats/prometheus")).text

    # One TYPE line per family, even with many labelled members.
    type_lines = [line for line in body.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))
    parsed = list(text_string_to_metric_families(body))
    families = {f.name: f for f in parsed}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for f in parsed:
        for smp in f.samples:
            key = (smp.name, tuple(sorted(smp.labels.items())))
            assert key not in samples, key
            samples[key] = smp.value

    # prometheus_client names a counter family without `_total` and its
    # samples with it: envoy_cluster_upstream_rq{code} and
    # envoy_cluster_upstream_rq_total{} both read as `..._rq_total`,
    # told apart by their labels.
    assert families["envoy_cluster_upstream_rq"].type == "counter"
    svc = ("envoy_cluster_name", "svc")
    rq = "envoy_cluster_upstream_rq_total"
    assert samples[(rq, (svc, ("envoy_response_code", "200")))] == 2
    assert samples[(rq, (svc, ("envoy_response_code", "404")))] == 1
    assert samples[(rq, (svc,))] == 4
    assert samples[(rq, (("envoy_cluster_name", "other"),))] == 0
    xx = "envoy_cluster_upstream_rq_xx_total"
    assert samples[(xx, (svc, ("envoy_response_code_class", "2")))] == 2
    assert samples[(xx, (svc, ("envoy_response_code_class", "4")))] == 1
    prefix = ("envoy_http_conn_manager_prefix", "ingress_http")
    hxx = "envoy_http_downstream_rq_xx_total"
    assert samples[(hxx, (prefix, ("envoy_response_code_class", "5")))] == 1
    assert samples[("envoy_http_downstream_rq_total", (prefix,))] == 4
    addr = ("envoy_listener_address", "127.0.0.1_0")
    assert samples[("envoy_listener_downstream_cx_total", (addr,))] == 1
    assert families["envoy_cluster_membership_healthy"].type == "gauge"
    assert samples[("envoy_server_live", ())] == 1

    # Histograms: Envoy's default buckets, cumulative, +Inf == _count.
    rq_time = families["envoy_cluster_upstream_rq_time"]
    assert rq_time.type == "histogram"
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in rq_time.samples
        if s.name.endswith("_bucket") and s.labels["envoy_cluster_name"] == "svc"
    ]
    assert [b for b, _ in buckets] == [*Histogram.bucket_bounds(), math.inf]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts) and counts[-1] == 4
    assert samples[("envoy_cluster_upstream_rq_time_count", (svc,))] == 4
    assert samples[("envoy_cluster_upstream_rq_time_sum", (svc,))] >= 0
    cx_length = families["envoy_listener_downstream_cx_length_ms"]
    assert cx_length.type == "histogram"


def test_concurrency_follows_the_workers_option() -> None:
    mesh = simple_mesh([route_to("svc")], [cluster("svc", "127.0.0.1:1")])
    assert Server(mesh).stats.gauges["server.concurrency"].value == 1
    assert Server(mesh, options={"concurrency": 3}).stats.gauges["server.concurrency"].value == 3


# --------------------------------------------------------------------------- properties

_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)


@given(cluster_name=_SEGMENT, code=st.integers(100, 599))
def test_cluster_code_tags_for_any_cluster_name(cluster_name: str, code: int) -> None:
    t = extract_tags(f"cluster.{cluster_name}.upstream_rq_{code}")
    assert (t.name, t.tags) == (
        "cluster.upstream_rq",
        (("envoy.response_code", str(code)), ("envoy.cluster_name", cluster_name)),
    )
    t = extract_tags(f"cluster.{cluster_name}.upstream_rq_{code // 100}xx")
    assert t.name == "cluster.upstream_rq_xx"


@given(st.lists(_SEGMENT, min_size=1, max_size=6).map(".".join))
def test_extraction_only_cuts_text_out(name: str) -> None:
    t = extract_tags(name)
    # What remains plus what was cut is the whole name: every tag value and
    # every kept character comes from it, nothing is invented.
    assert len(t.name) <= len(name)
    assert all(v in name for _, v in t.tags)
    assert len({k for k, _ in t.tags}) == len(t.tags)
    it = iter(name)
    assert all(ch in it for ch in t.name)  # a subsequence of the original


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s))
def test_prometheus_label_values_are_escaped(value: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from trioproxy.observe.admin import _prom_labels

    body = f"# TYPE envoy_x counter\nenvoy_x{_prom_labels((('envoy.cluster_name', value),))} 1\n"
    (family,) = text_string_to_metric_families(body)
    assert family.samples[0].labels == {"envoy_cluster_name": value}
