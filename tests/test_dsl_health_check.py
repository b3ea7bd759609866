"""DSL: the three health-check kinds on clusters, the health_check HTTP filter,
their compile errors (with file:line) and their config dump."""

from __future__ import annotations

import json
import re
import sys

import pytest
from trioproxy.dsl import MeshError, cluster, direct_response, listener, mesh, prefix
from trioproxy.dsl._builders import ClusterBuilder

from trioproxy.config import GrpcHealthCheck, HeaderMatcher, HealthCheck, Mesh, TcpHealthCheck
from trioproxy.config.dump import to_jsonable, to_tree
from trioproxy.filters.http.health_check import LocalHealthCheck

HERE = __file__


def _compile(c: ClusterBuilder) -> Mesh:
    return mesh(listener("l", ":0").route(prefix("/"), c)).compile()


def _errors(c: ClusterBuilder) -> list[tuple[int, str]]:
    with pytest.raises(MeshError) as info:
        _compile(c)
    out = []
    for issue in info.value.issues:
        assert issue.location is not None and issue.location.file == HERE, issue
        out.append((issue.location.line, issue.message))
    return out


def test_tcp_health_check_compiles() -> None:
    c = cluster("c", "127.0.0.1:1").tcp_health_check(
        b"PING", [b"PO", b"NG"], interval="250ms", unhealthy_threshold=3
    )
    hc = _compile(c).clusters[0].health_check
    assert hc == HealthCheck(
        checker=TcpHealthCheck(send=b"PING", receive=(b"PO", b"NG")),
        interval=0.25,
        unhealthy_threshold=3,
    )
    one = _compile(cluster("c", "127.0.0.1:1").tcp_health_check(expect=b"OK")).clusters[0]
    assert one.health_check is not None
    assert one.health_check.checker == TcpHealthCheck(receive=(b"OK",))
    bare = _compile(cluster("c", "127.0.0.1:1").tcp_health_check()).clusters[0]
    assert bare.health_check is not None and bare.health_check.checker == TcpHealthCheck()


def test_grpc_health_check_compiles() -> None:
    c = cluster("c", "127.0.0.1:1").http2().grpc_health_check("pkg.Svc", authority="a.internal")
    hc = _compile(c).clusters[0].health_check
    assert hc is not None
    assert hc.checker == GrpcHealthCheck(service_name="pkg.Svc", authority="a.internal")


def test_a_later_health_check_replaces_the_earlier() -> None:
    c = cluster("c", "127.0.0.1:1").health_check("/h").tcp_health_check()
    hc = _compile(c).clusters[0].health_check
    assert hc is not None and isinstance(hc.checker, TcpHealthCheck)


def test_health_check_errors_point_at_the_call() -> None:
    line = sys._getframe().f_lineno
    errs = _errors(
        cluster("c", "127.0.0.1:1").tcp_health_check("PING", ["PONG", b""], timeout=0)  # type: ignore
    )
    assert [(n - line, m) for n, m in errs] == [
        (2, "timeout of tcp_health_check of cluster 'c' must be greater than 0"),
        (2, "tcp_health_check of cluster 'c': send must be bytes, got str (write b'PING')"),
        (2, "tcp_health_check of cluster 'c': expect must be bytes, got str (write b'PONG')"),
        (2, "tcp_health_check of cluster 'c': an expected block is empty"),
    ]
    line = sys._getframe().f_lineno
    errs = _errors(
        cluster("g", "127.0.0.1:1").grpc_health_check(7, authority="")  # type: ignore[arg-type]
    )
    assert [(n - line, m) for n, m in errs] == [
        (2, "grpc_health_check of cluster 'g': service must be a string, got int"),
        (2, "grpc_health_check of cluster 'g': authority must be a non-empty string, got ''"),
        (
            2,
            "grpc_health_check of cluster 'g': gRPC health checks need HTTP/2;"
            " add .http2() (or .auto_http() with TLS)",
        ),
    ]


def test_health_check_filter_errors() -> None:
    from trioproxy.dsl import http

    line = sys._getframe().f_lineno
    m = mesh(
        listener("l", ":0")
        .chain(http("in").health_check("healthz").health_check())  # line + 3
        .route(prefix("/"), direct_response(200))
    )
    with pytest.raises(MeshError) as info:
        m.compile()
    got = [(i.location.line - line if i.location else None, i.message) for i in info.value.issues]
    assert got == [
        (3, "health_check filter of http 'in': path must start with '/', got 'healthz'"),
        (3, "health_check filter of http 'in': one health_check per http(...)"),
    ]


def test_config_dump_shows_the_checker() -> None:
    from trioproxy.dsl import http

    m = mesh(
        listener("l", ":0")
        .chain(http("in").health_check())
        .route(prefix("/"), cluster("c", "127.0.0.1:1").tcp_health_check(b"\x00PING", b"PONG"))
    ).compile()
    dumped = to_jsonable(m)
    hc = dumped["clusters"][0]["health_check"]  # type: ignore[index]
    assert hc["checker"] == {
        "@type": "TcpHealthCheck",
        "send": {"text": "0050494e47"},
        "receive": [{"text": "504f4e47"}],
    }
    json.dumps(dumped)
    tree = to_tree(m)
    assert re.search(r"health_check tcp send=0050494e47 receive=504f4e47 interval=5s", tree), tree
    flt = dumped["listeners"][0]["filter_chains"][0]["filters"][0]["http_filters"][0]  # type: ignore[index]
    assert flt["@type"] == "trioproxy.filters.http.health_check.LocalHealthCheck"
    assert flt["pass_through_mode"] is False


def test_outlier_detection_statistics_options() -> None:
    c = cluster("c", "127.0.0.1:1").outlier_detection(
        enforcing_failure_percentage=100,
        failure_percentage_threshold=70,
        success_rate_stdev_factor=1000,
        max_ejection_time_jitter="2s",
    )
    od = _compile(c).clusters[0].outlier_detection
    assert od is not None
    assert (od.enforcing_failure_percentage, od.failure_percentage_threshold) == (100, 70)
    assert (od.success_rate_stdev_factor, od.max_ejection_time_jitter) == (1000, 2.0)
    assert (od.enforcing_success_rate, od.success_rate_minimum_hosts) == (100, 5)
    assert (od.success_rate_request_volume, od.failure_percentage_request_volume) == (100, 50)
    line = sys._getframe().f_lineno
    errs = _errors(
        cluster("c", "127.0.0.1:1").outlier_detection(
            failure_percentage_threshold=101, success_rate_minimum_hosts=0
        )
    )
    assert [n - line for n, _m in errs] == [2, 2]
    messages = " ".join(m for _n, m in errs)
    assert "failure_percentage_threshold" in messages
    assert "success_rate_minimum_hosts" in messages


def test_dsl_health_check_filter() -> None:
    from trioproxy.dsl import http

    up = cluster("svc", "127.0.0.1:9")
    m = mesh(listener("l", ":0").chain(http("in").health_check("/ready")).route(prefix("/"), up))
    graph = m.compile()
    hcm = graph.listeners[0].filter_chains[0].filters[0]
    assert hcm.http_filters == (  # type: ignore[attr-defined]
        LocalHealthCheck(headers=(HeaderMatcher(name=":path", kind="exact", value="/ready"),)),
    )
