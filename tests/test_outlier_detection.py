"""Outlier detection: the sans-IO detector with explicit times, then a real
cluster where one host starts failing and is ejected under load."""

from __future__ import annotations

import random

import httpx
import pytest
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
from trioproxy.upstream.outlier import OutlierDetector, success_rate_threshold


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


# --------------------------------------------------------------------------- statistics


def _feed(d: OutlierDetector, host: FakeHost, ok: int, failed: int, now: float = 0.0) -> None:
    for _ in range(ok):
        d.on_result(host, 200, now)
    for _ in range(failed):
        d.on_result(host, 500, now)


def test_success_rate_threshold_math() -> None:
    # mean 90, population stdev 20: 90 - 1.9 * 20 = 52.
    assert success_rate_threshold([100, 100, 100, 100, 50], 1900) == pytest.approx(52.0)
    assert success_rate_threshold([80, 80, 80], 1900) == pytest.approx(80.0)  # no spread
    assert success_rate_threshold([100, 0], 1000) == pytest.approx(0.0)


def test_success_rate_ejects_the_outlier_each_interval() -> None:
    d, hosts, _changes, stats = detector(n=10, consecutive_5xx=10_000, max_ejection_percent=50)
    for h in hosts[:9]:
        _feed(d, h, 100, 0)
    _feed(d, hosts[9], 60, 40)  # 60 %, far below the others
    d.sweep(now=10.0)
    assert [h.outlier_ejected for h in hosts] == [False] * 9 + [True]
    p = "cluster.c.outlier_detection."
    assert stats.counters[p + "ejections_detected_success_rate"].value == 1
    assert stats.counters[p + "ejections_enforced_success_rate"].value == 1
    # Counts are per interval: the next sweep sees nothing new and ejects nothing.
    d.sweep(now=20.0)
    assert stats.counters[p + "ejections_detected_success_rate"].value == 1


def test_success_rate_needs_volume_and_hosts() -> None:
    # Below the request volume (100 per host per interval): no statistics.
    d, hosts, _c, stats = detector(n=6, consecutive_5xx=10_000)
    for h in hosts[:5]:
        _feed(d, h, 99, 0)
    _feed(d, hosts[5], 50, 49)
    d.sweep(now=10.0)
    assert not any(h.outlier_ejected for h in hosts)
    # Enough volume, but only 4 hosts have it (success_rate_minimum_hosts 5).
    d, hosts, _c, stats = detector(n=6, consecutive_5xx=10_000)
    for h in hosts[:3]:
        _feed(d, h, 100, 0)
    _feed(d, hosts[5], 50, 50)
    d.sweep(now=10.0)
    assert not any(h.outlier_ejected for h in hosts)
    assert stats.counters["cluster.c.outlier_detection.ejections_detected_success_rate"].value == 0


def test_success_rate_detected_but_not_enforced_at_zero() -> None:
    d, hosts, _c, stats = detector(n=5, consecutive_5xx=10_000, enforcing_success_rate=0)
    for h in hosts[:4]:
        _feed(d, h, 100, 0)
    _feed(d, hosts[4], 10, 90)
    d.sweep(now=10.0)
    assert not hosts[4].outlier_ejected
    p = "cluster.c.outlier_detection."
    assert stats.counters[p + "ejections_detected_success_rate"].value == 1
    assert stats.counters[p + "ejections_enforced_success_rate"].value == 0


def test_failure_percentage_is_off_unless_enforced() -> None:
    p = "cluster.c.outlier_detection."
    # Default enforcing_failure_percentage 0: detected only. (Success rate is
    # switched off here with an unreachable volume.)
    d, hosts, _c, stats = detector(n=5, consecutive_5xx=10_000, success_rate_request_volume=10**6)
    for h in hosts[:4]:
        _feed(d, h, 50, 0)
    _feed(d, hosts[4], 5, 45)  # 90 % failures >= 85
    d.sweep(now=10.0)
    assert not hosts[4].outlier_ejected
    assert stats.counters[p + "ejections_detected_failure_percentage"].value == 1
    d, hosts, _c, stats = detector(
        n=5,
        consecutive_5xx=10_000,
        success_rate_request_volume=10**6,
        enforcing_failure_percentage=100,
    )
    for h in hosts[:4]:
        _feed(d, h, 50, 0)
    _feed(d, hosts[4], 8, 42)  # 84 %: just under the threshold
    d.sweep(now=10.0)
    assert not hosts[4].outlier_ejected
    _feed(d, hosts[4], 7, 43, now=15.0)  # 86 %
    for h in hosts[:4]:
        _feed(d, h, 50, 0, now=15.0)
    d.sweep(now=20.0)
    assert hosts[4].outlier_ejected
    assert stats.counters[p + "ejections_enforced_failure_percentage"].value == 1


def test_statistical_ejections_respect_max_ejection_percent() -> None:
    d, hosts, _c, stats = detector(n=10, consecutive_5xx=10_000, enforcing_failure_percentage=100)
    for h in hosts[:7]:
        _feed(d, h, 100, 0)
    for h in hosts[7:]:
        _feed(d, h, 0, 100)
    d.sweep(now=10.0)
    assert sum(h.outlier_ejected for h in hosts) == 1  # 10 % of 10
    assert stats.counters["cluster.c.outlier_detection.ejections_overflow"].value >= 1


def test_multiplier_decays_while_the_host_stays_in() -> None:
    d, hosts, _c, _s = detector(interval=10.0, base_ejection_time=30.0)
    h = hosts[0]
    _feed(d, h, 0, 5, now=0.0)
    assert h.outlier_ejected and d.multiplier(h) == 1
    d.sweep(now=30.0)
    assert not h.outlier_ejected
    _feed(d, h, 0, 5, now=35.0)  # straight back: the multiplier grows
    assert d.multiplier(h) == 2
    d.sweep(now=95.0)  # 60 s later
    assert not h.outlier_ejected and d.multiplier(h) == 2
    d.sweep(now=100.0)  # un-ejected for less than an interval: no decay yet
    assert d.multiplier(h) == 2
    d.sweep(now=105.0)
    assert d.multiplier(h) == 1
    d.sweep(now=115.0)
    assert d.multiplier(h) == 0
    d.sweep(now=125.0)
    assert d.multiplier(h) == 0  # never below zero
    _feed(d, h, 0, 5, now=130.0)
    d.sweep(now=159.0)
    assert h.outlier_ejected
    d.sweep(now=160.0)  # forgiven: 30 s again, not 90 s
    assert not h.outlier_ejected


def test_multiplier_is_bounded_and_jitter_adds_time() -> None:
    d, hosts, _c, _s = detector(
        base_ejection_time=10.0, max_ejection_time=30.0, max_ejection_time_jitter=5.0
    )
    h = hosts[0]
    until = []
    for round_ in range(6):
        now = 1000.0 * round_
        _feed(d, h, 0, 5, now=now)
        st = d._state[id(h)]
        until.append(st.ejected_until - now)
        d.sweep(now=now + 40.0)
    # Multiplier 1, 2, 3, 4 then capped (4 x 10 is not < 30 + 10).
    assert [d.multiplier(h)] == [4]
    base = [10.0, 20.0, 30.0, 30.0, 30.0, 30.0]
    assert all(b <= u <= b + 5.0 for b, u in zip(base, until, strict=True)), until
    assert len({round(u - b, 6) for b, u in zip(base, until, strict=True)}) > 1  # jittered


async def test_success_rate_ejection_on_mock_clock(autojump_clock: object) -> None:
    """Five hosts, one answering 503: consecutive-5xx detection is out of
    reach (10 000), so the success-rate sweep at the end of the interval is
    what takes the bad host out; traffic then avoids it."""
    from tests.memnet import MemoryNetwork, RawClient

    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        ups = [await start_upstream(n, f"u{i}", network=net) for i in range(5)]
        ups[2].always_status = 503
        od = OutlierDetection(
            consecutive_5xx=10_000, success_rate_request_volume=10, max_ejection_percent=50
        )
        server = await start_proxy(
            n, simple_mesh([route_to("svc")], [cluster("svc", *ups, outlier_detection=od)]), net
        )
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        statuses = [(await client.request()).status for _ in range(60)]
        assert statuses.count(503) == 12  # round robin: every fifth try
        host = server.clusters.get("svc").hosts[2]  # type: ignore[union-attr]
        assert not host.outlier_ejected
        await trio.sleep(10.5)  # one interval: the sweep
        assert host.outlier_ejected
        p = "cluster.svc.outlier_detection."
        assert counter(server, p + "ejections_detected_success_rate") == 1
        assert counter(server, p + "ejections_enforced_success_rate") == 1
        assert counter(server, p + "ejections_enforced_consecutive_5xx") == 0
        before = len(ups[2].requests)
        assert {(await client.request()).status for _ in range(20)} == {200}
        assert len(ups[2].requests) == before
        # Back after base_ejection_time (30 s), checked at the next sweeps.
        await trio.sleep(30)
        assert not host.outlier_ejected
        n.cancel_scope.cancel()
