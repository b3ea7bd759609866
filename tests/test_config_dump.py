"""`trioproxy.config.dump`: the graph as JSON-able data and as a tree for people.

Graphs here are built by hand from config classes, so these tests do not
depend on the DSL.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

from trioproxy.config import (
    AccessLog,
    Admin,
    Cluster,
    DemoService,
    DirectResponseAction,
    Endpoint,
    FilterChain,
    HeaderMatcher,
    HedgePolicy,
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
from trioproxy.config.dump import to_jsonable, to_tree


class Level(enum.Enum):
    GZIP = "gzip"


@attrs.frozen(kw_only=True)
class CompressorConfig(HttpFilterConfig):
    level: Level = Level.GZIP
    content_types: frozenset[str] = frozenset({"text/html", "application/json"})
    min_length: int = 30


LOC = Location(file="mesh.py", line=7)

ROUTES = (
    Route(
        name="default/0",
        match=RouteMatch(
            value="/api",
            case_sensitive=False,
            headers=(HeaderMatcher(name="x-env", kind="exact", value="prod", invert=True),),
            query_parameters=(QueryParameterMatcher(name="debug", kind="present"),),
        ),
        action=RouteAction(cluster="api", timeout=2.5, prefix_rewrite="/"),
        location=LOC,
    ),
    Route(
        name="split",
        match=RouteMatch(path_kind="regex", value=r"/v\d+/.*"),
        action=RouteAction(
            weighted_clusters=(
                WeightedCluster(name="api", weight=80),
                WeightedCluster(name="canary", weight=20),
            ),
            timeout=0.25,
        ),
    ),
    Route(
        name="old",
        match=RouteMatch(path_kind="path", value="/old"),
        action=RedirectAction(scheme="https", path="/new", code=308),
    ),
    Route(
        name="health",
        match=RouteMatch(path_kind="path", value="/health"),
        action=DirectResponseAction(status=200, body="héllo\n".encode()),
    ),
    Route(
        name="binary",
        match=RouteMatch(path_kind="path", value="/bin"),
        action=DirectResponseAction(status=200, body=b"\xff\xfe"),
    ),
)

MESH = Mesh(
    listeners=(
        Listener(
            name="ingress",
            address=SocketAddress(host="0.0.0.0", port=8000),
            filter_chains=(
                FilterChain(
                    filters=(
                        HttpConnectionManager(
                            stat_prefix="ingress_http",
                            route_config=RouteConfig(
                                virtual_hosts=(
                                    VirtualHost(name="default", routes=ROUTES, location=LOC),
                                    VirtualHost(name="empty", domains=("*.example.com",)),
                                )
                            ),
                            http_filters=(CompressorConfig(),),
                            access_logs=(AccessLog(path="-", location=LOC),),
                            request_timeout=0.0,
                            location=LOC,
                        ),
                    ),
                    location=LOC,
                ),
            ),
            location=LOC,
        ),
        Listener(
            name="bare",
            address=SocketAddress(host="::1", port=9000),
            filter_chains=(),
            stat_prefix="bare_stats",
        ),
    ),
    clusters=(
        Cluster(
            name="api",
            endpoints=(
                Endpoint(address=SocketAddress(host="127.0.0.1", port=8081)),
                Endpoint(address=SocketAddress(host="api.internal", port=80), weight=3),
            ),
            lb_policy="least_request",
            location=LOC,
        ),
        Cluster(name="canary", connect_timeout=0.5),
    ),
    admin=Admin(address=SocketAddress(host="127.0.0.1", port=8001), location=LOC),
    demo_services=(DemoService(name="hello", address=SocketAddress(host="127.0.0.1", port=8081)),),
    source="mesh.py",
)


# --------------------------------------------------------------------------- to_jsonable


def test_jsonable_dumps_and_round_trips_through_json() -> None:
    data = to_jsonable(MESH)
    text = json.dumps(data, sort_keys=True)
    assert json.loads(text) == data


def test_jsonable_top_level() -> None:
    data = to_jsonable(MESH)
    assert set(data) == {
        "listeners",
        "clusters",
        "admin",
        "demo_services",
        "stats_sinks",
        "stats_flush_interval",
        "runtime",
        "overload",
        "source",
    }
    assert data["source"] == "mesh.py"
    assert data["admin"] == {"address": {"host": "127.0.0.1", "port": 8001}, "token": None}
    assert data["demo_services"] == [
        {"name": "hello", "address": {"host": "127.0.0.1", "port": 8081}}
    ]


def test_jsonable_omits_locations() -> None:
    assert "location" not in json.dumps(to_jsonable(MESH))
    assert 'mesh.py", "line' not in json.dumps(to_jsonable(MESH))


def test_jsonable_clusters() -> None:
    data: Any = to_jsonable(MESH)
    api, canary = data["clusters"]
    assert api == {
        "name": "api",
        "type": "static",
        "endpoints": [
            {"address": {"host": "127.0.0.1", "port": 8081}, "weight": 1, "priority": 0}
            | {"health_status": "UNKNOWN", "hostname": ""},
            {"address": {"host": "api.internal", "port": 80}, "weight": 3, "priority": 0}
            | {"health_status": "UNKNOWN", "hostname": ""},
        ],
        "dns": None,
        "eds_file": None,
        "lb_policy": "least_request",
        "protocol": "http1",
        "http1_parser": "httptools",
        "connect_timeout": 5.0,
        "choice_count": 2,
        "active_request_bias": 1.0,
        "minimum_ring_size": 1024,
        "maximum_ring_size": 8 * 1024 * 1024,
        "maglev_table_size": 65537,
        "healthy_panic_threshold": 50.0,
        "idle_timeout": 3600.0,
        "max_idle_per_host": 128,
        "tls": None,
        "circuit_breakers": {
            "max_connections": 1024,
            "max_pending_requests": 1024,
            "max_requests": 1024,
            "max_retries": 3,
            "max_connections_per_host": None,
            "budget_percent": None,
            "min_retry_concurrency": 3,
        },
        "health_check": None,
        "outlier_detection": None,
    }
    assert canary["endpoints"] == []
    assert canary["connect_timeout"] == 0.5


def _hcm_json() -> Any:
    data: Any = to_jsonable(MESH)
    (chain,) = data["listeners"][0]["filter_chains"]
    (hcm,) = chain["filters"]
    return hcm


def test_jsonable_routes_and_actions_are_typed() -> None:
    hcm = _hcm_json()
    assert hcm["@type"] == "HttpConnectionManager"
    vhosts = hcm["route_config"]["virtual_hosts"]
    assert [v["name"] for v in vhosts] == ["default", "empty"]
    routes = vhosts[0]["routes"]
    assert routes[0] == {
        "name": "default/0",
        "match": {
            "path_kind": "prefix",
            "value": "/api",
            "case_sensitive": False,
            "headers": [{"name": "x-env", "kind": "exact", "value": "prod", "invert": True}],
            "query_parameters": [{"name": "debug", "kind": "present", "value": ""}],
            "grpc": False,
            "runtime_fraction": None,
        },
        "action": {
            "@type": "RouteAction",
            "cluster": "api",
            "weighted_clusters": [],
            "timeout": 2.5,
            "prefix_rewrite": "/",
            "host_rewrite": None,
            "retry_policy": None,
            "hedge_policy": None,
            "allow_upgrades": True,
            "hash_policy": [],
        },
    }
    assert routes[1]["action"]["weighted_clusters"] == [
        {"name": "api", "weight": 80},
        {"name": "canary", "weight": 20},
    ]
    assert routes[2]["action"]["@type"] == "RedirectAction"
    assert routes[2]["action"]["code"] == 308


def test_jsonable_decodes_bytes_as_utf8() -> None:
    routes = _hcm_json()["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[3]["action"] == {
        "@type": "DirectResponseAction",
        "status": 200,
        "body": "héllo\n",
        "content_type": "text/plain",
    }
    assert routes[4]["action"]["body"] == "\ufffd\ufffd"  # undecodable bytes replaced


def test_jsonable_user_filter_config() -> None:
    (flt,) = _hcm_json()["http_filters"]
    assert flt == {
        "@type": f"{__name__}.CompressorConfig",
        "level": "gzip",
        "content_types": ["application/json", "text/html"],
        "min_length": 30,
    }


def test_jsonable_access_log_and_hcm_settings() -> None:
    hcm = _hcm_json()
    assert hcm["access_logs"] == [
        {"path": "-", "format": AccessLog().format, "json_format": None, "filter": None}
    ]
    assert hcm["stat_prefix"] == "ingress_http"
    assert hcm["codec"] == "auto"
    assert hcm["request_headers_timeout"] == 10.0


def test_jsonable_empty_mesh() -> None:
    assert to_jsonable(Mesh()) == {
        "listeners": [],
        "clusters": [],
        "admin": None,
        "demo_services": [],
        "stats_sinks": [],
        "stats_flush_interval": 5.0,
        "runtime": [],
        "overload": None,
        "source": "",
    }


# --------------------------------------------------------------------------- to_tree


EXPECTED_TREE = """\
mesh mesh.py
  listeners
    listener ingress 0.0.0.0:8000
      chain 0
        http stat_prefix=ingress_http codec=auto idle_timeout=3600s stream_idle_timeout=300s \
request_timeout=off
          access_log -
          filter CompressorConfig(level=<Level.GZIP: 'gzip'>, \
content_types=frozenset({...}), min_length=30)
          vhost default domains=*
            route default/0: prefix /api (case-insensitive) header not(x-env exact 'prod') \
query debug present -> cluster api timeout=2.5s prefix_rewrite=/
            route split: regex /v\\d+/.* -> weighted api:80 canary:20 timeout=250ms
            route old: path /old -> redirect 308 scheme=https path=/new
            route health: path /health -> direct_response 200 (7 bytes, text/plain)
            route binary: path /bin -> direct_response 200 (2 bytes, text/plain)
          vhost empty domains=*.example.com
            (no routes)
    listener bare [::1]:9000 stat_prefix=bare_stats
      (no filter chains)
  clusters
    cluster api lb=least_request connect_timeout=5s
      endpoint 127.0.0.1:8081 weight=1
      endpoint api.internal:80 weight=3
    cluster canary lb=round_robin connect_timeout=500ms
      (no endpoints)
  admin 127.0.0.1:8001
  demo_services
    demo_service hello 127.0.0.1:8081
"""


def test_tree() -> None:
    tree = to_tree(MESH)
    # frozenset order is arbitrary; normalise it before comparing
    start = tree.index("content_types=frozenset(")
    end = tree.index(")", start) + 1
    tree = tree[:start] + "content_types=frozenset({...})" + tree[end:]
    assert tree == EXPECTED_TREE


def test_tree_of_empty_mesh() -> None:
    assert to_tree(Mesh()) == "mesh\n  listeners: none\n  clusters: none\n  admin: none\n"


def test_tree_has_no_locations() -> None:
    assert "mesh.py:7" not in to_tree(MESH)


def test_hedge_policy_in_both_dumps() -> None:
    action = RouteAction(
        cluster="api",
        hedge_policy=HedgePolicy(
            initial_requests=2, additional_request_delay=0.05, hedge_on_per_try_timeout=True
        ),
    )
    route = Route(name="r", match=RouteMatch(path_kind="prefix", value="/"), action=action)
    mesh = attrs.evolve(
        MESH,
        listeners=(
            Listener(
                name="h",
                address=SocketAddress(host="127.0.0.1", port=0),
                filter_chains=(
                    FilterChain(
                        filters=(
                            HttpConnectionManager(
                                stat_prefix="h",
                                route_config=RouteConfig(
                                    virtual_hosts=(
                                        VirtualHost(name="v", domains=("*",), routes=(route,)),
                                    )
                                ),
                            ),
                        )
                    ),
                ),
            ),
        ),
    )
    assert "route r: prefix / -> cluster api timeout=15s hedge=initial=2,delay=50ms," in to_tree(
        mesh
    )
    dumped = to_jsonable(mesh)["listeners"][0]["filter_chains"][0]["filters"][0]
    assert dumped["route_config"]["virtual_hosts"][0]["routes"][0]["action"]["hedge_policy"] == {
        "initial_requests": 2,
        "additional_request_delay": 0.05,
        "hedge_on_per_try_timeout": True,
    }
