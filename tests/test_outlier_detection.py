"""Outlier detection: the sans-IO detector with explicit times, then a real
cluster where one host starts failing and is ejected under load."""

from __future__ import annotations

import random

import httpx
import trio

from tests.conftest import (
    cluster,
    counter,
    gauge,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from trioproxy.config import CircuitBreakers, OutlierDetection, RetryPolicy
from trioproxy.observe.stats import StatsStore
from trioproxy.upstream.outlier import OutlierDetector


class FakeHost:
    def __init__(self) -> None:
        self.outlier_ejected = False


def detector(
    n: int = 10, **cfg: object
) -> tuple[OutlierDetector, list[FakeHost], list[int], StatsStore]:
    hosts = [FakeHost() for _ in range(n)]
    changes: list[int] = []
    stats = StatsStore()
    d = OutlierDetector(
        OutlierDetection(**cfg),  # type: ignore[arg-type]
        hosts,
        stats,
        "cluster.c.",
        on_change=lambda: changes.append(1),
        rng=random.Random(1),
    )
    return d, hosts, changes, stats


def test_five_consecutive_5xx_eject_and_time_brings_back() -> None:
    d, hosts, changes, stats = detector()
    h = hosts[0]
    for _ in range(4):
        d.on_result(h, 500, now=0.0)
    d.on_result(h, 200, now=0.0)  # a success resets the count
    for _ in range(4):
        d.on_result(h, 500, now=1.0)
    assert not h.outlier_ejected
    d.on_result(h, 500, now=1.0)
    assert h.outlier_ejected and changes == [1]
    assert stats.gauges["cluster.c.outlier_detection.ejections_active"].value == 1
    d.sweep(now=30.9)  # base_ejection_time 30 s from t=1
    assert h.outlier_ejected
    d.sweep(now=31.0)
    assert not h.outlier_ejected
    assert stats.gauges["cluster.c.outlier_detection.ejections_active"].value == 0
    # The second ejection lasts twice as long.
    for _ in range(5):
        d.on_result(h, 503, now=100.0)
    assert h.outlier_ejected
    d.sweep(now=159.0)
    assert h.outlier_ejected
    d.sweep(now=160.0)
    assert not h.outlier_ejected
    assert stats.counters["cluster.c.outlier_detection.ejections_total"].value == 2


def test_ejection_time_is_capped() -> None:
    d, hosts, _changes, _stats = detector(base_ejection_time=100.0, max_ejection_time=150.0)
    h = hosts[0]
    for round_ in range(3):
        for _ in range(5):
            d.on_result(h, 500, now=1000.0 * round_)
        assert h.outlier_ejected
        d.sweep(now=1000.0 * round_ + 150.0)
        assert not h.outlier_ejected, round_


def test_max_ejection_percent_but_always_one() -> None:
    d, hosts, _changes, stats = detector(n=3, max_ejection_percent=10)
    for h in hosts[:2]:
        for _ in range(5):
            d.on_result(h, 500, now=0.0)
    # 10 % of 3 hosts rounds down to 0, but one host may always be ejected.
    assert [h.outlier_ejected for h in hosts] == [True, False, False]
    assert stats.counters["cluster.c.outlier_detection.ejections_overflow"].value == 1


def test_gateway_failures_are_detected_but_not_enforced_by_default() -> None:
    d, hosts, _changes, stats = detector(consecutive_5xx=100)
    for _ in range(5):
        d.on_result(hosts[0], 502, now=0.0)
    assert not hosts[0].outlier_ejected
    p = "cluster.c.outlier_detection."
    assert stats.counters[p + "ejections_detected_consecutive_gateway_failure"].value == 1
    assert stats.counters[p + "ejections_enforced_consecutive_gateway_failure"].value == 0
    d2, hosts2, _c, _s = detector(consecutive_5xx=100, enforcing_consecutive_gateway_failure=100)
    for _ in range(5):
        d2.on_result(hosts2[0], 504, now=0.0)
    assert hosts2[0].outlier_ejected


async def test_a_dying_host_is_ejected_and_retries_hide_it(nursery: trio.Nursery) -> None:
    """Three hosts, one starts answering 503: with retries and outlier
    detection, every request from 20 concurrent clients succeeds and the
    bad host leaves the balancer."""
    ups = [await start_upstream(nursery, f"u{i}") for i in range(3)]
    retry = RetryPolicy(retry_on=frozenset({"5xx", "reset", "connect-failure"}), num_retries=2)
    outlier = OutlierDetection(max_ejection_percent=50)
    # 20 clients retry at once: Envoy's default of 3 concurrent retries would
    # overflow (and answer 503), which is the breaker working, not this test.
    breakers = CircuitBreakers(max_retries=64)
    server = await start_proxy(
        nursery,
        simple_mesh(
            [route_to("svc", retry_policy=retry)],
            [cluster("svc", *ups, outlier_detection=outlier, circuit_breakers=breakers)],
        ),
    )
    ups[1].always_status = 503
    url = f"http://127.0.0.1:{server.listener_address('ingress').port}/"
    statuses: list[int] = []

    async def client() -> None:
        async with httpx.AsyncClient() as c:
            for _ in range(10):
                statuses.append((await c.get(url)).status_code)

    with trio.fail_after(30):
        async with trio.open_nursery() as inner:
            for _ in range(20):
                inner.start_soon(client)
    assert sorted(set(statuses)) == [200], sorted(set(statuses))
    assert len(statuses) == 200
    await settle(server)
    print(
        f"\nfault test: {len(statuses)} sent, {statuses.count(200)} succeeded, "
        f"{counter(server, 'cluster.svc.upstream_rq_retry')} retried, "
        f"{counter(server, 'cluster.svc.outlier_detection.ejections_total')} ejection(s), "
        f"{len(ups[1].requests)} tries reached the failing host"
    )
    assert gauge(server, "cluster.svc.outlier_detection.ejections_active") == 1
    assert counter(server, "cluster.svc.outlier_detection.ejections_enforced_consecutive_5xx") >= 1
    # Once ejected, the bad host got no more tries.
    bad_before = len(ups[1].requests)
    async with httpx.AsyncClient() as c:
        for _ in range(10):
            assert (await c.get(url)).status_code == 200
    assert len(ups[1].requests) == bad_before
    assert gauge(server, "cluster.svc.membership_healthy") == 2
    # /clusters shows the flag.
    host = server.clusters.get("svc").hosts[1]  # type: ignore[union-attr]
    assert host.outlier_ejected
