"""The DSL compiler and loader: every error kind, exact messages and `file:line`s.

Mesh files under tests/meshes/ are loaded for real; lines that must produce
an issue carry a `# E:<tag>` marker so that the expected line numbers are
read from the file rather than hard-coded.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trioproxy.dsl import (
    ClusterBuilder,
    ListenerBuilder,
    MatchBuilder,
    MeshBuilder,
    MeshError,
    MeshIssue,
    Target,
    admin,
    cluster,
    compile_mesh,
    demo_service,
    direct_response,
    endpoint,
    http,
    listener,
    load_mesh,
    mesh,
    path,
    prefix,
    redirect,
    regex,
    vhost,
    weighted,
)

from trioproxy.config import (
    AccessLog,
    Admin,
    Cluster,
    DemoService,
    DirectResponseAction,
    Endpoint,
    FilterChain,
    HeaderMatcher,
    HttpConnectionManager,
    HttpFilterConfig,
    Listener,
    Location,
    Mesh,
    QueryParameterMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    SocketAddress,
    VirtualHost,
    WeightedCluster,
)
from trioproxy.config.dump import to_jsonable

HERE = __file__
MESHES = Path(__file__).parent / "meshes"


def marker_line(file: Path, tag: str) -> int:
    """The line of `file` that ends with the marker `# E:<tag>`."""
    for number, text in enumerate(file.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# E:{tag}"):
            return number
    raise AssertionError(f"no marker {tag!r} in {file}")


def compile_errors(m: MeshBuilder) -> list[str]:
    """The issue messages of a mesh that must fail, with `HERE:<n>` made `HERE`.

    Also checks that every issue points into this test file.
    """
    with pytest.raises(MeshError) as info:
        m.compile()
    for issue in info.value.issues:
        assert issue.location is not None, issue
        assert issue.location.file == HERE, issue
    return [re.sub(re.escape(HERE) + r":\d+", "HERE", i.message) for i in info.value.issues]


def ok(name: str = "l", address: str = ":0") -> ListenerBuilder:
    return listener(name, address).route(prefix("/"), direct_response(200))


S1 = cluster("service1", "127.0.0.1:8081")


def routed(target: Target, **opts: object) -> MeshBuilder:
    """A mesh whose one listener routes "/" to `target`."""
    return mesh(listener("l", ":0").route(prefix("/"), target, **opts), S1)  # type: ignore[arg-type]


def matched(m: MatchBuilder) -> MeshBuilder:
    return mesh(listener("l", ":0").route(m, "service1"), S1)


_BIND = "expected 'host:port', ':port' or '[ipv6]:port' with an IP address or localhost"
_DUR = "expected seconds >= 0 or a string like '250ms', '2s', '1m'"
_WILD = "a wildcard '*' may appear once, as the first or last character"
_TARGETS = "a cluster, a cluster name, weighted(...), redirect(...) or direct_response(...)"

ERROR_CASES: list[tuple[str, Callable[[], MeshBuilder], list[str]]] = [
    (
        "unknown-cluster-did-you-mean",
        lambda: routed("servce1"),
        ["unknown cluster 'servce1' (did you mean 'service1'?)"],
    ),
    ("unknown-cluster", lambda: routed("zzz"), ["unknown cluster 'zzz'"]),
    (
        "unknown-cluster-in-weighted",
        lambda: routed(weighted(("service1", 1), ("service2", 1))),
        ["unknown cluster 'service2' (did you mean 'service1'?)"],
    ),
    (
        "duplicate-listener",
        lambda: mesh(ok("a"), ok("a")),
        ["duplicate listener 'a' (first defined at HERE)"],
    ),
    (
        "duplicate-cluster",
        lambda: mesh(ok(), cluster("c", "127.0.0.1:1"), cluster("c", "127.0.0.1:2")),
        ["duplicate cluster 'c' with a different definition (first defined at HERE)"],
    ),
    (
        "duplicate-cluster-via-route",
        lambda: mesh(
            listener("l", ":0").route(prefix("/"), cluster("c", "127.0.0.1:1", lb="random")),
            cluster("c", "127.0.0.1:1"),
        ),
        ["duplicate cluster 'c' with a different definition (first defined at HERE)"],
    ),
    (
        "duplicate-vhost",
        lambda: mesh(listener("l", ":0").vhost(vhost("api", "a.com")).vhost(vhost("api", "b.com"))),
        ["duplicate vhost 'api' (first defined at HERE)"],
    ),
    (
        "port-clash-same-host",
        lambda: mesh(ok("a", "127.0.0.1:8000"), ok("b", "127.0.0.1:8000")),
        ["listener 'b' address 127.0.0.1:8000 clashes with listener 'a' (127.0.0.1:8000 at HERE)"],
    ),
    (
        "port-clash-localhost",
        lambda: mesh(ok("a", "localhost:8000"), ok("b", "127.0.0.1:8000")),
        ["listener 'b' address 127.0.0.1:8000 clashes with listener 'a' (127.0.0.1:8000 at HERE)"],
    ),
    (
        "port-clash-ipv4-wildcard",
        lambda: mesh(ok("a", ":8000"), ok("b", "127.0.0.1:8000")),
        ["listener 'b' address 127.0.0.1:8000 clashes with listener 'a' (0.0.0.0:8000 at HERE)"],
    ),
    (
        "port-clash-ipv6-wildcard",
        lambda: mesh(ok("a", "127.0.0.1:8000"), ok("b", "[::]:8000")),
        ["listener 'b' address [::]:8000 clashes with listener 'a' (127.0.0.1:8000 at HERE)"],
    ),
    (
        "bad-regex-path",
        lambda: matched(regex("/a/(")),
        ["bad regex '/a/(': missing ), unterminated subpattern at position 3"],
    ),
    (
        "bad-regex-header",
        lambda: matched(prefix("/").header("X-Id", regex="[")),
        ["bad regex '[' for header 'x-id': unterminated character set at position 0"],
    ),
    (
        "bad-regex-query",
        lambda: matched(prefix("/").query("q", regex="*")),
        ["bad regex '*' for query parameter 'q': nothing to repeat at position 0"],
    ),
    (
        "bad-duration-route-timeout",
        lambda: routed("service1", timeout="fast"),
        [f"bad duration 'fast' for route timeout ({_DUR})"],
    ),
    (
        "bad-duration-http",
        lambda: mesh(listener("l", ":0").chain(http(idle_timeout=-1, request_timeout="1d"))),
        [
            f"bad duration -1 for idle_timeout ({_DUR})",
            f"bad duration '1d' for request_timeout ({_DUR})",
        ],
    ),
    (
        "bad-duration-connect-timeout",
        lambda: mesh(ok(), cluster("c").connect_timeout("soon")),
        [f"bad duration 'soon' for connect_timeout of cluster 'c' ({_DUR})"],
    ),
    (
        "zero-connect-timeout",
        lambda: mesh(ok(), cluster("c", connect_timeout=0), cluster("d").connect_timeout("0ms")),
        [
            "connect_timeout of cluster 'c' must be greater than 0",
            "connect_timeout of cluster 'd' must be greater than 0",
        ],
    ),
    (
        "bad-address-listener",
        lambda: mesh(ok("l", "nope")),
        [f"bad address 'nope' for listener 'l' ({_BIND})"],
    ),
    (
        "bad-address-endpoint",
        lambda: mesh(ok(), cluster("c", ":8000")),
        [
            "bad address ':8000' for an endpoint of cluster 'c'"
            " (expected 'host:port' or '[ipv6]:port' with an explicit host)"
        ],
    ),
    (
        "bad-address-admin",
        lambda: mesh(ok(), admin("admin:8001")),
        [f"bad address 'admin:8001' for admin ({_BIND})"],
    ),
    (
        "bad-port-listener",
        lambda: mesh(ok("l", ":70000")),
        ["bad port '70000' in address ':70000' for listener 'l' (expected 0..65535)"],
    ),
    (
        "bad-port-endpoint",
        lambda: mesh(ok(), cluster("c").endpoint("10.0.0.1:0")),
        ["bad port '0' in address '10.0.0.1:0' for an endpoint of cluster 'c' (expected 1..65535)"],
    ),
    (
        "domain-repeated-across-vhosts",
        lambda: mesh(
            listener("l", ":0")
            .vhost(vhost("a", "example.com", "www.example.com"))
            .vhost(vhost("b", "WWW.example.com"))
        ),
        ["domain 'www.example.com' of vhost 'b' is also in vhost 'a' at HERE"],
    ),
    (
        "domain-repeated-in-vhost",
        lambda: mesh(listener("l", ":0").vhost(vhost("a", "x.com", "x.com"))),
        ["domain 'x.com' repeated in vhost 'a'"],
    ),
    (
        "two-star-vhosts",
        lambda: mesh(listener("l", ":0").route(prefix("/"), "service1").vhost(vhost("all")), S1),
        ["more than one vhost with domain '*': 'all' and 'default' at HERE"],
    ),
    (
        "bad-wildcard-domains",
        lambda: mesh(listener("l", ":0").vhost(vhost("a", "a.*.com", "**", "*.a.*", "ok.*"))),
        [
            f"bad domain 'a.*.com' in vhost 'a' ({_WILD})",
            f"bad domain '**' in vhost 'a' ({_WILD})",
            f"bad domain '*.a.*' in vhost 'a' ({_WILD})",
        ],
    ),
    (
        "empty-domain",
        lambda: mesh(listener("l", ":0").vhost(vhost("a", ""))),
        ["bad domain '' in vhost 'a' (expected a host name)"],
    ),
    (
        "weighted-empty",
        lambda: routed(weighted()),
        ["weighted() needs at least one (cluster, weight) entry"],
    ),
    (
        "weighted-non-positive",
        lambda: routed(weighted(("service1", 0), (S1, -5))),
        [
            "weighted() weight for cluster 'service1' must be a positive integer, got 0",
            "weighted() weight for cluster 'service1' must be a positive integer, got -5",
            "weighted() names cluster 'service1' more than once",
        ],
    ),
    (
        "weighted-bad-entry",
        lambda: routed(weighted("service1")),  # type: ignore[arg-type]
        ["weighted() entry 1 must be a (cluster, weight) pair, got 'service1'"],
    ),
    (
        "bad-redirect-code",
        lambda: routed(redirect(code=200)),
        ["bad redirect code 200 (expected 301, 302, 303, 307, 308)"],
    ),
    (
        "bad-redirect-port-and-paths",
        lambda: routed(redirect(port=0, path="x", prefix_rewrite="/y")),
        [
            "bad redirect port 0 (expected an integer 1..65535)",
            "redirect() takes path= or prefix_rewrite=, not both",
            "redirect path 'x' must start with '/'",
        ],
    ),
    (
        "bad-direct-response-status",
        lambda: mesh(
            listener("l", ":0")
            .route(prefix("/a"), direct_response(600))
            .route(prefix("/b"), direct_response(99))
        ),
        [
            "bad direct_response status 600 (expected an integer 100..599)",
            "bad direct_response status 99 (expected an integer 100..599)",
        ],
    ),
    (
        "unknown-lb-did-you-mean",
        lambda: mesh(ok(), cluster("c", lb="roundrobin")),  # type: ignore[arg-type]
        ["unknown lb policy 'roundrobin' (did you mean 'round_robin'?)"],
    ),
    (
        "unknown-lb",
        lambda: mesh(ok(), cluster("c").lb("consistent")),  # type: ignore[arg-type]
        [
            "unknown lb policy 'consistent' (expected 'round_robin', 'least_request',"
            " 'random', 'ring_hash' or 'maglev')"
        ],
    ),
    (
        "unknown-codec",
        lambda: mesh(listener("l", ":0").chain(http(codec="http3"))),  # type: ignore[arg-type]
        ["unknown codec 'http3' (did you mean 'http2'?)"],
    ),
    (
        "options-on-redirect",
        lambda: routed(redirect(host="x"), prefix_rewrite="/", host_rewrite="h"),
        [
            "route option prefix_rewrite= needs a cluster or weighted() target, not redirect()",
            "route option host_rewrite= needs a cluster or weighted() target, not redirect()",
        ],
    ),
    (
        "options-on-direct-response",
        lambda: routed(direct_response(204), timeout="1s"),
        ["route option timeout= needs a cluster or weighted() target, not direct_response()"],
    ),
    (
        "more-than-one-admin",
        lambda: mesh(ok(), admin(), admin("127.0.0.1:9901"), admin("127.0.0.1:9902")),
        [
            "more than one admin (first defined at HERE)",
            "more than one admin (first defined at HERE)",
        ],
    ),
    (
        "demo-service-clash",
        lambda: mesh(ok("web", ":8080"), demo_service("hello", "127.0.0.1:8080")),
        [
            "demo_service 'hello' address 127.0.0.1:8080 clashes with listener 'web'"
            " (0.0.0.0:8080 at HERE)"
        ],
    ),
    (
        "admin-clash",
        lambda: mesh(ok("web", "127.0.0.1:8001"), admin()),
        ["admin address 127.0.0.1:8001 clashes with listener 'web' (127.0.0.1:8001 at HERE)"],
    ),
    (
        "duplicate-demo-service",
        lambda: mesh(ok(), demo_service("d", "127.0.0.1:0"), demo_service("d", "127.0.0.1:0")),
        ["duplicate demo_service 'd' (first defined at HERE)"],
    ),
    ("empty-mesh", lambda: mesh(), ["mesh has no listeners"]),
    (
        "only-clusters",
        lambda: mesh(S1, admin()),
        ["mesh has no listeners"],
    ),
    (
        "path-without-slash",
        lambda: mesh(
            listener("l", ":0")
            .route(prefix("api"), direct_response(200))
            .route(path("x"), direct_response(200))
        ),
        ["prefix 'api' must start with '/'", "path 'x' must start with '/'"],
    ),
    (
        "header-two-kinds",
        lambda: matched(prefix("/").header("x", exact="a", prefix="b")),
        [
            "header 'x': give only one of exact=, prefix=, suffix=, contains=, regex=, present="
            " (got exact=, prefix=)"
        ],
    ),
    (
        "query-absent",
        lambda: matched(prefix("/").query("debug", present=False)),
        ["query parameter 'debug': present=False is not supported"],
    ),
    (
        "bad-mesh-item",
        lambda: mesh(ok(), "service1"),  # type: ignore[arg-type]
        [
            "mesh() item 2 must be listener(...), cluster(...), admin(...), demo_service(...),"
            " statsd(...), runtime(...) or overload(...), got str"
        ],
    ),
    (
        "bad-match-and-target",
        lambda: mesh(listener("l", ":0").route("/", 42)),  # type: ignore[arg-type]
        [
            "a route match must be prefix(...), path(...) or regex(...), got str",
            f"a route target must be {_TARGETS}, got int",
        ],
    ),
    (
        "bad-endpoint-weight",
        lambda: mesh(ok(), cluster("c", endpoint("127.0.0.1:1", weight=0))),
        [
            "bad weight 0 for endpoint 127.0.0.1:1 of cluster 'c' (expected a positive integer)",
        ],
    ),
    (
        "bad-names",
        lambda: mesh(ok(""), cluster(None, "127.0.0.1:1")),  # type: ignore[arg-type]
        [
            "listener name must be a non-empty string, got ''",
            "cluster name must be a non-empty string, got None",
        ],
    ),
    (
        "bad-http-limits",
        lambda: mesh(
            listener("l", ":0").chain(
                http(max_request_headers_kb=0, max_headers_count=True, generate_request_id=1)  # type: ignore[arg-type]
            )
        ),
        [
            "bad max_request_headers_kb 0 (expected an integer 1..8192)",
            "bad max_headers_count True (expected an integer 1..2147483647)",
            "generate_request_id must be True or False, got 1",
        ],
    ),
    (
        "bad-filter",
        lambda: mesh(listener("l", ":0").chain(http().filter("gzip"))),  # type: ignore[arg-type]
        ["an HTTP filter must be an HttpFilterConfig, got str"],
    ),
    (
        "bad-chain",
        lambda: mesh(listener("l", ":0").chain(vhost("v"))),  # type: ignore[arg-type]
        ["listener 'l': a chain must be http(...) or tcp_proxy(...), got VhostBuilder"],
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [(build, expected) for _, build, expected in ERROR_CASES],
    ids=[case_id for case_id, _, _ in ERROR_CASES],
)
def test_compile_error(build: Callable[[], MeshBuilder], expected: list[str]) -> None:
    assert sorted(compile_errors(build())) == sorted(expected)


VALID_CASES: list[tuple[str, Callable[[], MeshBuilder]]] = [
    ("listener-without-routes", lambda: mesh(listener("l", ":0"))),
    ("listener-with-empty-chain", lambda: mesh(listener("l", ":0").chain(http()))),
    (
        "same-cluster-object-twice",
        lambda: mesh(ok(), S1, S1, listener("m", ":0").route(prefix("/"), S1)),
    ),
    (
        "equal-cluster-builders",
        lambda: mesh(
            listener("l", ":0").route(prefix("/"), cluster("c", "127.0.0.1:1")),
            cluster("c").endpoint("127.0.0.1:1"),
        ),
    ),
    (
        "equal-cluster-definitions",
        lambda: mesh(ok(), cluster("c", connect_timeout="5s"), cluster("c", connect_timeout=5)),
    ),
    ("port-zero-never-clashes", lambda: mesh(ok("a", ":0"), ok("b", ":0"), ok("c", "127.0.0.1:0"))),
    (
        "different-hosts-same-port",
        lambda: mesh(ok("a", "127.0.0.1:8000"), ok("b", "127.0.0.2:8000"), ok("c", "[::1]:8000")),
    ),
    (
        "wildcard-domains",
        lambda: mesh(
            listener("l", ":0")
            .vhost(vhost("a", "*.example.com", "example.*"))
            .vhost(vhost("b", "*"))
        ),
    ),
    (
        "vhosts-in-different-chains",
        lambda: mesh(
            listener("l", ":0")
            .vhost(vhost("a"))
            .chain(http(), source=["10.0.0.0/8"])
            .vhost(vhost("a")),
            listener("m", ":0").vhost(vhost("a")),
        ),
    ),
    ("weighted-with-builders", lambda: routed(weighted((S1, 1), (cluster("c", "h:1"), 2)))),
    ("redirect-options", lambda: routed(redirect(scheme="HTTPS", host="h", port=443, code=307))),
    ("route-timeout-zero", lambda: routed("service1", timeout=0)),
    ("header-absent", lambda: matched(prefix("/").header("x", present=False))),
    ("empty-cluster", lambda: mesh(ok(), cluster("c"))),
]


@pytest.mark.parametrize(
    "build", [b for _, b in VALID_CASES], ids=[case_id for case_id, _ in VALID_CASES]
)
def test_compile_valid(build: Callable[[], MeshBuilder]) -> None:
    compiled = build().compile()
    assert isinstance(compiled, Mesh)


def test_issues_point_at_the_offending_call() -> None:
    start = sys._getframe().f_lineno
    m = mesh(
        listener("l", ":0")  # start + 2
        .route(prefix("/a"), "nope")  # start + 3
        .route(
            prefix("/b")  # start + 5
            .header("x", regex="(")  # start + 6
            .query("q", prefix="a", suffix="b"),  # start + 7
            weighted(),  # start + 8
        ),
        cluster("c").lb("fast"),  # type: ignore[arg-type]  # start + 10
    )
    with pytest.raises(MeshError) as info:
        m.compile()
    assert [(i.location.line - start if i.location else None) for i in info.value.issues] == [
        3,
        6,
        7,
        8,
        10,
    ]


# --------------------------------------------------------------------------- compiled graph


def _hcm(stat_prefix: str, *vhosts: VirtualHost, **kw: object) -> FilterChain:
    return FilterChain(
        filters=(
            HttpConnectionManager(
                stat_prefix=stat_prefix,
                route_config=RouteConfig(virtual_hosts=vhosts),
                **kw,  # type: ignore[arg-type]
            ),
        )
    )


def _addr(host: str, port: int) -> SocketAddress:
    return SocketAddress(host=host, port=port)


GOOD = MESHES / "good.py"
EXPECTED_GOOD = Mesh(
    listeners=(
        Listener(
            name="ingress",
            address=_addr("0.0.0.0", 8000),
            filter_chains=(
                _hcm(
                    "ingress_http",
                    VirtualHost(
                        name="default",
                        routes=(
                            Route(
                                name="default/0",
                                match=RouteMatch(value="/service/1"),
                                action=RouteAction(cluster="service1"),
                            ),
                            Route(
                                name="default/1",
                                match=RouteMatch(value="/service/2"),
                                action=RouteAction(
                                    cluster="service2", timeout=2.0, prefix_rewrite="/"
                                ),
                            ),
                            Route(
                                name="default/2",
                                match=RouteMatch(path_kind="path", value="/health"),
                                action=DirectResponseAction(status=200, body=b"ok\n"),
                            ),
                        ),
                    ),
                    VirtualHost(
                        name="canary",
                        domains=("canary.example.com", "*.canary.example.com"),
                        routes=(
                            Route(
                                name="canary-split",
                                match=RouteMatch(
                                    headers=(HeaderMatcher(name="x-canary", kind="present"),)
                                ),
                                action=RouteAction(
                                    weighted_clusters=(
                                        WeightedCluster(name="service1", weight=90),
                                        WeightedCluster(name="service2", weight=10),
                                    )
                                ),
                            ),
                        ),
                    ),
                    access_logs=(AccessLog(path="-"),),
                ),
            ),
        ),
        Listener(
            name="redirector",
            address=_addr("127.0.0.1", 8080),
            filter_chains=(
                _hcm(
                    "redirector",
                    VirtualHost(
                        name="default",
                        routes=(
                            Route(
                                name="default/0",
                                match=RouteMatch(),
                                action=RedirectAction(scheme="https", port=8443, code=308),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    ),
    clusters=(
        Cluster(
            name="service1",
            endpoints=(
                Endpoint(address=_addr("127.0.0.1", 8081)),
                Endpoint(address=_addr("127.0.0.1", 8082)),
            ),
            lb_policy="least_request",
        ),
        Cluster(
            name="service2",
            endpoints=(Endpoint(address=_addr("127.0.0.1", 8083), weight=3),),
            connect_timeout=0.25,
        ),
    ),
    admin=Admin(address=_addr("127.0.0.1", 8001)),
    demo_services=(DemoService(name="hello", address=_addr("127.0.0.1", 8081)),),
    source=str(GOOD),
)


def test_good_mesh_compiles_to_expected_graph() -> None:
    assert load_mesh(GOOD) == EXPECTED_GOOD


def test_compiled_nodes_carry_locations() -> None:
    m = load_mesh(GOOD)
    text = GOOD.read_text().splitlines()
    ingress = m.listeners[0]
    assert ingress.location is not None
    assert ingress.location.file == str(GOOD)
    assert 'listener("ingress"' in text[ingress.location.line - 1]
    route = ingress.filter_chains[0].filters[0].route_config.virtual_hosts[0].routes[1]  # type: ignore[attr-defined]
    assert '"service2", timeout="2s"' in text[route.location.line - 1]
    service2 = m.cluster("service2")
    assert service2.location is not None
    assert text[service2.location.line - 1].startswith("service2 = cluster(")
    assert m.admin is not None and m.admin.location is not None
    assert "admin(" in text[m.admin.location.line - 1]


def test_graph_is_picklable_and_hashable() -> None:
    m = load_mesh(GOOD)
    again = pickle.loads(pickle.dumps(m))
    assert again == m
    assert hash(again) == hash(m)
    assert {m: 1}[again] == 1


def test_equality_ignores_locations() -> None:
    assert load_mesh(GOOD) == EXPECTED_GOOD  # EXPECTED_GOOD has no locations
    assert load_mesh(GOOD).listeners[0].location != EXPECTED_GOOD.listeners[0].location


def test_compile_mesh_function_and_method_agree() -> None:
    m = mesh(ok())
    assert compile_mesh(m, "x.py") == m.compile("x.py")
    assert m.compile("x.py").source == "x.py"


def test_compile_mesh_rejects_non_builder() -> None:
    with pytest.raises(MeshError) as info:
        compile_mesh("mesh")  # type: ignore[arg-type]
    assert str(info.value) == "expected mesh(...), got str"


def test_implicit_http_uses_listener_name_as_stat_prefix() -> None:
    m = mesh(listener("edge", ":0").route(prefix("/"), direct_response(200))).compile()
    hcm = m.listeners[0].filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.stat_prefix == "edge"


def test_matchers_compile() -> None:
    m = matched(
        prefix("/api")
        .case_insensitive()
        .header("X-User", suffix="@example.com", invert=True)
        .header(":method", exact="GET")
        .header("x-debug", present=False)
        .query("v", regex=r"\d+")
        .query("flag")
    ).compile()
    route = m.listeners[0].filter_chains[0].filters[0].route_config.virtual_hosts[0].routes[0]  # type: ignore[attr-defined]
    assert route.match == RouteMatch(
        value="/api",
        case_sensitive=False,
        headers=(
            HeaderMatcher(name="x-user", kind="suffix", value="@example.com", invert=True),
            HeaderMatcher(name=":method", kind="exact", value="GET"),
            HeaderMatcher(name="x-debug", kind="present", invert=True),
        ),
        query_parameters=(
            QueryParameterMatcher(name="v", kind="regex", value=r"\d+"),
            QueryParameterMatcher(name="flag", kind="present"),
        ),
    )


def test_http_options_compile() -> None:
    class Gzip(HttpFilterConfig):
        pass

    m = mesh(
        listener("l", ":0")
        .stat_prefix("edge")
        .chain(
            http(
                "front",
                codec="http2",
                server_name="edge",
                request_headers_timeout="500ms",
                idle_timeout="1h",
                stream_idle_timeout="1m",
                request_timeout=30,
                max_request_headers_kb=96,
                max_headers_count=50,
                generate_request_id=False,
                use_remote_address=False,
            )
            .access_log("/dev/stderr", format="%RESPONSE_CODE%\n")
            .access_log()
            .filter(Gzip())
        )
    ).compile()
    lis = m.listeners[0]
    assert lis.stat_prefix == "edge"
    assert lis.filter_chains == (
        _hcm(
            "front",
            codec="http2",
            server_name="edge",
            request_headers_timeout=0.5,
            idle_timeout=3600.0,
            stream_idle_timeout=60.0,
            request_timeout=30.0,
            max_request_headers_kb=96,
            max_headers_count=50,
            generate_request_id=False,
            use_remote_address=False,
            access_logs=(
                AccessLog(path="/dev/stderr", format="%RESPONSE_CODE%\n"),
                AccessLog(path="-"),
            ),
            http_filters=(Gzip(),),
        ),
    )


def test_cluster_order_is_first_appearance() -> None:
    m = mesh(
        listener("l", ":0").route(prefix("/b"), cluster("b", "h:1")),
        cluster("a", "h:2"),
        listener("m", ":0").route(prefix("/"), weighted((cluster("c", "h:3"), 1))),
    ).compile()
    assert [c.name for c in m.clusters] == ["b", "a", "c"]


# --------------------------------------------------------------------------- MeshError


def test_mesh_error_format_and_pickle() -> None:
    issues = [
        MeshIssue(location=Location(file="m.py", line=9), message="second"),
        MeshIssue(location=None, message="no place"),
        MeshIssue(location=Location(file="m.py", line=3), message="first"),
        MeshIssue(location=Location(file="helper.py", line=1), message="other file"),
    ]
    err = MeshError(issues)
    assert str(err) == "no place\nm.py:3: first\nm.py:9: second\nhelper.py:1: other file"
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, MeshError)
    assert again.issues == err.issues
    assert isinstance(err.issues, list)


# --------------------------------------------------------------------------- load_mesh


def test_broken_mesh_reports_every_error_with_its_line() -> None:
    broken = MESHES / "broken.py"
    with pytest.raises(MeshError) as info:
        load_mesh(broken)

    def at(tag: str) -> str:
        return f"{broken}:{marker_line(broken, tag)}"

    ingress = f"{broken}:{marker_line(broken, 'unknown') - 1}"
    first_admin = f"{broken}:{marker_line(broken, 'admin') - 1}"
    assert str(info.value).splitlines() == [
        f"{at('lb')}: unknown lb policy 'least_requests' (did you mean 'least_request'?)",
        f"{at('duration')}: bad duration '5 s' for connect_timeout of cluster 'service2' ({_DUR})",
        f"{at('unknown')}: unknown cluster 'servce1' (did you mean 'service1'?)",
        f"{at('regex')}: bad regex '/two/([': unterminated character set at position 6",
        f"{at('code')}: bad redirect code 304 (expected 301, 302, 303, 307, 308)",
        f"{at('option')}: route option timeout= needs a cluster or weighted() target,"
        " not direct_response()",
        f"{at('wildcard')}: bad domain 'api.*.example.com' in vhost 'api' ({_WILD})",
        f"{at('dup')}: duplicate listener 'ingress' (first defined at {ingress})",
        f"{at('dup')}: listener 'ingress' address 127.0.0.1:8000 clashes with listener"
        f" 'ingress' (0.0.0.0:8000 at {ingress})",
        f"{at('address')}: bad address '1.2.3.4' for listener 'bad' ({_BIND})",
        f"{at('admin')}: more than one admin (first defined at {first_admin})",
    ]


def test_relative_path_is_kept_in_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(MESHES.parent.parent)
    rel = os.path.join("tests", "meshes", "broken.py")
    with pytest.raises(MeshError) as info:
        load_mesh(rel)
    assert str(info.value).startswith(f"{rel}:{marker_line(MESHES / 'broken.py', 'lb')}: ")


def test_build_function() -> None:
    m = load_mesh(MESHES / "build_fn.py")
    assert [c.name for c in m.clusters] == ["backend"]
    assert m.source == str(MESHES / "build_fn.py")


def test_sibling_import_and_sys_path_restored() -> None:
    before = list(sys.path)
    m = load_mesh(MESHES / "sibling_import.py")
    assert m.cluster("web").endpoints == (Endpoint(address=_addr("127.0.0.1", 9100)),)
    assert sys.path == before
    loc = m.cluster("web").location
    assert loc is not None and loc.file == str(MESHES / "mesh_helpers.py")


def test_raises_while_importing() -> None:
    raises = MESHES / "raises.py"
    with pytest.raises(MeshError) as info:
        load_mesh(raises)
    assert str(info.value) == f"{raises}:{marker_line(raises, 'raise')}: KeyError: 'two'"
    assert isinstance(info.value.__cause__, KeyError)


def test_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "syntax_error.py"
    bad.write_text("from trioproxy.dsl import mesh\n\nMESH = mesh(\n    listener(\n\nx = 1 +\n")
    with pytest.raises(MeshError) as info:
        load_mesh(bad)
    (issue,) = info.value.issues
    assert issue.location is not None
    assert issue.location.file == str(bad)
    assert issue.location.line in (3, 4, 6)
    assert issue.message.startswith("SyntaxError: ")


def test_syntax_error_in_sibling(tmp_path: Path) -> None:
    (tmp_path / "broken_helper.py").write_text("def f(:\n    pass\n")
    (tmp_path / "mesh.py").write_text("import broken_helper\n")
    with pytest.raises(MeshError) as info:
        load_mesh(tmp_path / "mesh.py")
    assert str(info.value) == f"{tmp_path / 'broken_helper.py'}:1: SyntaxError: invalid syntax"


def test_exception_in_sibling_points_at_sibling(tmp_path: Path) -> None:
    (tmp_path / "helper2.py").write_text("def f():\n    return 1 / 0\n")
    (tmp_path / "mesh.py").write_text("import helper2\n\nhelper2.f()\n")
    with pytest.raises(MeshError) as info:
        load_mesh(tmp_path / "mesh.py")
    assert str(info.value) == f"{tmp_path / 'helper2.py'}:2: ZeroDivisionError: division by zero"


def test_exception_in_build(tmp_path: Path) -> None:
    f = tmp_path / "mesh.py"
    f.write_text("def build():\n    raise RuntimeError('no backends')\n")
    with pytest.raises(MeshError) as info:
        load_mesh(f)
    assert str(info.value) == f"{f}:2: RuntimeError: no backends"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MeshError) as info:
        load_mesh(tmp_path / "nope.py")
    assert str(info.value) == f"mesh file not found: {tmp_path / 'nope.py'}"


def test_no_mesh_defined(tmp_path: Path) -> None:
    f = tmp_path / "empty.py"
    f.write_text("X = 1\n")
    with pytest.raises(MeshError) as info:
        load_mesh(f)
    assert str(info.value) == f"{f}:1: mesh file defines neither MESH nor build()"


WRONG_TYPES = [
    ("MESH = 1\n", 1, "MESH must be a mesh(...), got int"),
    (
        "from trioproxy.dsl import listener\n\nMESH = listener('l', ':0')\n",
        3,
        "MESH must be a mesh(...), got ListenerBuilder",
    ),
    ("\n\ndef build():\n    return [1]\n", 3, "build() must be a mesh(...), got list"),
    ("build = 3\n", 1, "build must be a function, got int"),
]


@pytest.mark.parametrize(("source", "line", "message"), WRONG_TYPES)
def test_wrong_mesh_type(tmp_path: Path, source: str, line: int, message: str) -> None:
    f = tmp_path / "wrong.py"
    f.write_text(source)
    with pytest.raises(MeshError) as info:
        load_mesh(f)
    assert str(info.value) == f"{f}:{line}: {message}"


def test_precompiled_mesh(tmp_path: Path) -> None:
    f = tmp_path / "pre.py"
    f.write_text(
        textwrap.dedent(
            """
            from trioproxy.dsl import direct_response, listener, mesh, prefix

            MESH = mesh(listener("l", ":0").route(prefix("/"), direct_response(200))).compile()
            """
        )
    )
    assert load_mesh(f).source == str(f)


def test_compile_error_inside_file_is_passed_through(tmp_path: Path) -> None:
    f = tmp_path / "inner.py"
    f.write_text("from trioproxy.dsl import mesh\n\nMESH = mesh().compile()\n")
    with pytest.raises(MeshError) as info:
        load_mesh(f)
    assert str(info.value) == f"{f}:3: mesh has no listeners"


def test_reload_sees_edited_sibling(tmp_path: Path) -> None:
    helper = tmp_path / "ports_helper.py"
    helper.write_text("PORT = 1111\n")
    f = tmp_path / "mesh.py"
    f.write_text(
        textwrap.dedent(
            """
            from ports_helper import PORT

            from trioproxy.dsl import cluster, listener, mesh, prefix

            MESH = mesh(listener("l", ":0").route(prefix("/"), cluster("c", f"h:{PORT}")))
            """
        )
    )
    assert load_mesh(f).cluster("c").endpoints[0].address.port == 1111
    helper.write_text("PORT = 22222\n")
    assert load_mesh(f).cluster("c").endpoints[0].address.port == 22222


def test_fresh_module_per_load(tmp_path: Path) -> None:
    f = tmp_path / "counter.py"
    f.write_text(
        textwrap.dedent(
            """
            import sys

            from trioproxy.dsl import direct_response, listener, mesh, prefix

            NAME = __name__
            MESH = mesh(listener(NAME, ":0").route(prefix("/"), direct_response(200)))
            """
        )
    )
    first = load_mesh(f).listeners[0].name
    second = load_mesh(f).listeners[0].name
    assert first != second
    assert first.startswith("_trioproxy_mesh_")


def test_user_filter_class_in_mesh_file_pickles(tmp_path: Path) -> None:
    f = tmp_path / "filters_mesh.py"
    f.write_text(
        textwrap.dedent(
            """
            import attrs

            from trioproxy.config import HttpFilterConfig
            from trioproxy.dsl import direct_response, http, listener, mesh, prefix


            @attrs.frozen(kw_only=True)
            class Tag(HttpFilterConfig):
                value: str = "x"


            MESH = mesh(
                listener("l", ":0")
                .chain(http().filter(Tag()))
                .route(prefix("/"), direct_response(200))
            )
            """
        )
    )
    m = load_mesh(f)
    assert pickle.loads(pickle.dumps(m)) == m


# --------------------------------------------------------------------------- property test

_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=0, max_size=8)
_DURATION = st.one_of(
    st.integers(0, 3600),
    st.floats(0, 3600, allow_nan=False),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 999), st.sampled_from(["ms", "s", "m", "h"])),
)


@st.composite
def programs(draw: st.DrawFn) -> MeshBuilder:
    """Random valid builder programs: listeners, ports, vhosts, routes, clusters."""
    clusters: list[ClusterBuilder] = []
    for i in range(draw(st.integers(1, 4))):
        eps = draw(st.lists(st.integers(1, 65535), max_size=3))
        c = cluster(
            f"c{i}",
            *(f"10.0.0.{i + 1}:{port}" for port in eps),
            lb=draw(st.sampled_from(["round_robin", "least_request", "random"])),
            connect_timeout=draw(st.integers(1, 60)),
        )
        clusters.append(c)
    names = [c.name for c in clusters]
    refs: list[ClusterBuilder | str] = [*clusters, *names]

    forwarding: st.SearchStrategy[Target] = st.one_of(
        st.sampled_from(clusters),
        st.sampled_from(names),
        st.lists(
            st.tuples(st.sampled_from(refs), st.integers(1, 100)),
            min_size=1,
            max_size=3,
            unique_by=lambda e: e[0] if isinstance(e[0], str) else e[0].name,
        ).map(lambda entries: weighted(*entries)),
    )
    local: st.SearchStrategy[Target] = st.one_of(
        st.builds(
            redirect,
            host=st.none() | st.just("example.com"),
            code=st.sampled_from([301, 302, 303, 307, 308]),
        ),
        st.builds(direct_response, st.integers(100, 599), st.text(max_size=20)),
    )
    matches = st.tuples(
        st.one_of(
            st.builds(prefix, _SEGMENT.map(lambda s: "/" + s)),
            st.builds(path, _SEGMENT.map(lambda s: "/" + s)),
            st.builds(regex, st.sampled_from([r"/.*", r"/api/\d+", r"/(a|b)/?"])),
        ),
        st.booleans(),
    ).map(lambda mh: mh[0].header("x-test", exact="1") if mh[1] else mh[0])

    items: list[object] = []
    ports = draw(st.lists(st.integers(1, 65535), unique=True, max_size=4))
    n_listeners = draw(st.integers(1, 4))
    for i in range(n_listeners):
        port = ports[i] if i < len(ports) else 0
        lb = listener(f"l{i}", draw(st.sampled_from([f":{port}", f"127.0.0.1:{port}"])))
        if draw(st.booleans()):
            lb = lb.chain(http(idle_timeout=draw(_DURATION)).access_log())
        for _ in range(draw(st.integers(0, 4))):
            if draw(st.booleans()):
                lb = lb.route(draw(matches), draw(forwarding), timeout=draw(_DURATION))
            else:
                lb = lb.route(draw(matches), draw(local))
        for j in range(draw(st.integers(0, 2))):
            vh = vhost(f"v{j}", f"host{j}.example.com", f"*.h{j}.example.org")
            vh = vh.route(draw(matches), draw(forwarding))
            lb = lb.vhost(vh)
        items.append(lb)
    items.extend(draw(st.permutations(clusters)))
    if draw(st.booleans()):
        items.append(admin("127.0.0.1:0"))
    return mesh(*items)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(programs())
def test_random_valid_programs_compile_and_round_trip(program: MeshBuilder) -> None:
    compiled = program.compile("prop.py")
    assert pickle.loads(pickle.dumps(compiled)) == compiled
    assert hash(pickle.loads(pickle.dumps(compiled))) == hash(compiled)
    assert program.compile("prop.py") == compiled  # deterministic
    json.dumps(to_jsonable(compiled))
    names = [c.name for c in compiled.clusters]
    assert sorted(names) == sorted(set(names))
    listeners = [i for i in program._items if isinstance(i, ListenerBuilder)]
    assert [lis.name for lis in compiled.listeners] == [lb.name for lb in listeners]
