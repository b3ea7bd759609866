"""Route actions end to end: a real proxy, real upstreams, httpx as the client.

Covers what the router does with a matched route, as Envoy does it:
redirects (the exact `location` of `Http::Utility::newUri`), direct
responses, prefix and host rewrites (`x-envoy-original-path`), weighted
clusters, 404 `NR` when no route matches, 503 `NC` for an unknown cluster,
and a per-route timeout of 0 meaning none.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import (
    cluster,
    counter,
    proxy_url,
    route_to,
    settle,
    simple_mesh,
    start_proxy,
    start_upstream,
)
from tests.memnet import MemoryNetwork, RawClient
from tests.upstream import Upstream
from trioproxy.config import (
    AccessLog,
    DirectResponseAction,
    RedirectAction,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from trioproxy.http.router import Router
from trioproxy.runtime.server import Server

LOG_FORMAT = (
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME% %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS%\n"
)


async def fetch(
    server: Server,
    path: str = "/",
    *,
    host: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    hdrs = dict(headers or {})
    if host is not None:
        hdrs["host"] = host
    with trio.fail_after(10):
        async with httpx.AsyncClient(follow_redirects=False) as c:
            return await c.request(method, proxy_url(server, path), headers=hdrs)


def forward(name: str, match: RouteMatch | None = None, **action: Any) -> Route:
    return Route(name=name, match=match or RouteMatch(), action=RouteAction(**action))


def redirect_route(match: RouteMatch | None = None, **kw: Any) -> Route:
    return Route(name="redirect", match=match or RouteMatch(), action=RedirectAction(**kw))


async def logged(
    tmp_path: Path,
    mesh_routes: Sequence[Route],
    upstreams: Sequence[Upstream],
    requests: Sequence[tuple[str, str | None]],
    *,
    vhosts: Sequence[VirtualHost] | None = None,
) -> tuple[list[httpx.Response], list[str], dict[str, int]]:
    """Run a proxy with an access log, send `(path, host)` requests, stop it,
    and return the responses, the log lines and the router counters."""
    log = tmp_path / "access.log"
    mesh = simple_mesh(
        mesh_routes,
        [cluster(u.name, u) for u in upstreams],
        vhosts=vhosts,
        access_logs=[AccessLog(path=str(log), format=LOG_FORMAT)],
    )
    responses = []
    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            server = await start_proxy(inner, mesh)
            for path, host in requests:
                responses.append(await fetch(server, path, host=host))
            await settle(server)
            stats = {
                name: counter(server, f"http.ingress_http.{name}")
                for name in ("no_route", "no_cluster", "rq_redirect", "rq_direct_response")
            }
            inner.cancel_scope.cancel()
    return responses, log.read_text().splitlines(), stats


# --------------------------------------------------------------------------- redirects

# (id, route match, RedirectAction fields, request path, Host header, location)
REDIRECTS: list[tuple[str, RouteMatch | None, dict[str, Any], str, str, str]] = [
    # scheme: https_redirect; a default port of the old scheme is dropped
    ("https", None, {"scheme": "https"}, "/a?b=1", "example.com", "https://example.com/a?b=1"),
    ("https-drops-80", None, {"scheme": "https"}, "/a", "example.com:80", "https://example.com/a"),
    (
        "https-keeps-8080",
        None,
        {"scheme": "https"},
        "/a",
        "example.com:8080",
        "https://example.com:8080/a",
    ),
    (
        "https-keeps-443",
        None,
        {"scheme": "https"},
        "/a",
        "example.com:443",
        "https://example.com:443/a",
    ),
    # without a scheme change Envoy keeps whatever port the Host had
    (
        "same-scheme-keeps-80",
        None,
        {"scheme": "http", "path": "/b"},
        "/a",
        "example.com:80",
        "http://example.com:80/b",
    ),
    (
        "no-scheme-keeps-port",
        None,
        {"path": "/b"},
        "/a",
        "example.com:8080",
        "http://example.com:8080/b",
    ),
    ("ipv6-https-drops-80", None, {"scheme": "https"}, "/a", "[::1]:80", "https://[::1]/a"),
    ("ipv6-keeps-port", None, {"path": "/b"}, "/a", "[::1]:8080", "http://[::1]:8080/b"),
    ("host-case-kept", None, {"scheme": "https"}, "/a", "Example.COM", "https://Example.COM/a"),
    # host: replaces host and port
    (
        "host",
        None,
        {"host": "new.example.org"},
        "/a?x=1",
        "example.com",
        "http://new.example.org/a?x=1",
    ),
    (
        "host-drops-request-port",
        None,
        {"host": "new.example.org"},
        "/a",
        "example.com:8080",
        "http://new.example.org/a",
    ),
    # port: replaces the port, even with a default one
    ("port", None, {"port": 8443}, "/a", "example.com:8080", "http://example.com:8443/a"),
    ("port-added", None, {"port": 8443}, "/a", "example.com", "http://example.com:8443/a"),
    ("port-80-kept", None, {"port": 80}, "/a", "example.com:8080", "http://example.com:80/a"),
    (
        "https-and-port",
        None,
        {"scheme": "https", "port": 8443},
        "/a",
        "example.com:80",
        "https://example.com:8443/a",
    ),
    (
        "host-and-port",
        None,
        {"host": "h.example", "port": 9000},
        "/a",
        "example.com:1",
        "http://h.example:9000/a",
    ),
    (
        "everything",
        None,
        {"scheme": "https", "host": "h.example", "port": 444, "path": "/z"},
        "/a?q",
        "example.com",
        "https://h.example:444/z?q",
    ),
    # path: keeps the request's query unless it has its own
    ("path", None, {"path": "/new"}, "/old", "example.com", "http://example.com/new"),
    (
        "path-keeps-query",
        None,
        {"path": "/new"},
        "/old?x=1&y=2",
        "example.com",
        "http://example.com/new?x=1&y=2",
    ),
    (
        "path-own-query",
        None,
        {"path": "/new?y=2"},
        "/old?x=1",
        "example.com",
        "http://example.com/new?y=2",
    ),
    (
        "path-own-query-not-stripped",
        None,
        {"path": "/new?y=2", "strip_query": True},
        "/old?x=1",
        "example.com",
        "http://example.com/new?y=2",
    ),
    (
        "path-strip-query",
        None,
        {"path": "/new", "strip_query": True},
        "/old?x=1",
        "example.com",
        "http://example.com/new",
    ),
    (
        "strip-query",
        None,
        {"scheme": "https", "strip_query": True},
        "/old?x=1",
        "example.com",
        "https://example.com/old",
    ),
    (
        "strip-query-no-query",
        None,
        {"scheme": "https", "strip_query": True},
        "/old",
        "example.com",
        "https://example.com/old",
    ),
    # prefix_rewrite: the matched part is replaced, the rest and the query kept
    (
        "prefix-rewrite",
        RouteMatch(value="/v1"),
        {"prefix_rewrite": "/v2"},
        "/v1/users?id=3",
        "example.com",
        "http://example.com/v2/users?id=3",
    ),
    (
        "prefix-rewrite-to-root",
        RouteMatch(value="/v1/"),
        {"prefix_rewrite": "/"},
        "/v1/users",
        "example.com",
        "http://example.com/users",
    ),
    (
        "prefix-rewrite-case-insensitive",
        RouteMatch(value="/OLD", case_sensitive=False),
        {"prefix_rewrite": "/new"},
        "/old/x",
        "example.com",
        "http://example.com/new/x",
    ),
    (
        "prefix-rewrite-strip-query",
        RouteMatch(value="/v1"),
        {"prefix_rewrite": "/v2", "strip_query": True},
        "/v1/u?id=3",
        "example.com",
        "http://example.com/v2/u",
    ),
    (
        "prefix-rewrite-path-route",
        RouteMatch(path_kind="path", value="/old"),
        {"prefix_rewrite": "/new"},
        "/old?x=1",
        "example.com",
        "http://example.com/new?x=1",
    ),
    (
        "prefix-rewrite-regex-route",
        RouteMatch(path_kind="regex", value="/item/[0-9]+"),
        {"prefix_rewrite": "/items"},
        "/item/42?x=1",
        "example.com",
        "http://example.com/items?x=1",
    ),
    (
        "prefix-rewrite-https",
        RouteMatch(value="/"),
        {"prefix_rewrite": "/s/", "scheme": "https"},
        "/a",
        "example.com:80",
        "https://example.com/s/a",
    ),
]


@pytest.mark.parametrize(
    ("match", "fields", "path", "host", "location"),
    [pytest.param(*row[1:], id=row[0]) for row in REDIRECTS],
)
async def test_redirect_location(
    nursery: trio.Nursery,
    match: RouteMatch | None,
    fields: dict[str, Any],
    path: str,
    host: str,
    location: str,
) -> None:
    up = await start_upstream(nursery)
    routes = [redirect_route(match, **fields), route_to("svc")]
    server = await start_proxy(nursery, simple_mesh(routes, [cluster("svc", up)]))
    r = await fetch(server, path, host=host)
    assert r.status_code == 301
    assert r.headers["location"] == location
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert up.requests == []
    await settle(server)
    assert counter(server, "http.ingress_http.rq_redirect") == 1
    assert counter(server, "http.ingress_http.downstream_rq_3xx") == 1


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
async def test_redirect_codes(nursery: trio.Nursery, code: int, method: str) -> None:
    routes = [redirect_route(scheme="https", code=code)]
    server = await start_proxy(nursery, simple_mesh(routes, []))
    r = await fetch(server, "/p?q=1", host="example.com", method=method)
    assert r.status_code == code
    assert r.headers["location"] == "https://example.com/p?q=1"
    assert r.content == b""


async def test_redirect_uses_x_forwarded_proto_for_the_port_rule(nursery: trio.Nursery) -> None:
    # Envoy decides whether to drop the Host's port from x-forwarded-proto,
    # the protocol the client really used (here a TLS terminator in front;
    # use_remote_address is off so the header is kept): https -> http drops
    # ":443", but ":80" is not the default port of https and stays.
    routes = [redirect_route(scheme="http")]
    mesh = simple_mesh(routes, [], use_remote_address=False)
    server = await start_proxy(nursery, mesh)
    r = await fetch(server, "/a", host="example.com:443", headers={"x-forwarded-proto": "https"})
    assert r.headers["location"] == "http://example.com/a"
    r = await fetch(server, "/a", host="example.com:80", headers={"x-forwarded-proto": "https"})
    assert r.headers["location"] == "http://example.com:80/a"


async def test_redirect_only_for_its_route(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    routes = [
        redirect_route(RouteMatch(path_kind="path", value="/old"), path="/new"),
        route_to("svc"),
    ]
    server = await start_proxy(nursery, simple_mesh(routes, [cluster("svc", up)]))
    r = await fetch(server, "/old/deeper")
    assert r.status_code == 200
    assert r.json()["path"] == "/old/deeper"
    r = await fetch(server, "/old?k=v", host="example.com")
    assert r.status_code == 301
    assert r.headers["location"] == "http://example.com/new?k=v"


# --------------------------------------------------------------------------- direct responses


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b"hello", "text/plain"),
        (200, b'{"ok": true}', "application/json"),
        (403, b"forbidden\n", "text/plain; charset=utf-8"),
        (503, b"maintenance", "text/html"),
        (418, b"", "text/plain"),
    ],
)
async def test_direct_response(
    nursery: trio.Nursery, status: int, body: bytes, content_type: str
) -> None:
    up = await start_upstream(nursery)
    action = DirectResponseAction(status=status, body=body, content_type=content_type)
    routes = [Route(name="direct", match=RouteMatch(value="/d"), action=action), route_to("svc")]
    server = await start_proxy(nursery, simple_mesh(routes, [cluster("svc", up)]))
    r = await fetch(server, "/d/x")
    assert r.status_code == status
    assert r.content == body
    assert r.headers["content-length"] == str(len(body))
    if body:
        assert r.headers["content-type"] == content_type
    else:
        assert "content-type" not in r.headers
    # HEAD: the same head, no body.
    r = await fetch(server, "/d/x", method="HEAD")
    assert r.status_code == status
    assert r.content == b""
    assert r.headers["content-length"] == str(len(body))
    assert up.requests == []
    await settle(server)
    assert counter(server, "http.ingress_http.rq_direct_response") == 2
    assert counter(server, f"http.ingress_http.downstream_rq_{status // 100}xx") == 2


# --------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize(
    ("match", "prefix_rewrite", "path", "upstream_path"),
    [
        (RouteMatch(value="/api/"), "/", "/api/v1/x?q=1", "/v1/x?q=1"),
        (RouteMatch(value="/api"), "/internal", "/api/users", "/internal/users"),
        (RouteMatch(value="/api"), "/internal", "/api", "/internal"),
        (RouteMatch(value="/api"), "/internal/", "/api?x=1", "/internal/?x=1"),
        (RouteMatch(value="/API", case_sensitive=False), "/v2", "/api/x", "/v2/x"),
        (RouteMatch(path_kind="path", value="/old"), "/new", "/old?a=1", "/new?a=1"),
        (RouteMatch(path_kind="regex", value="/item/[0-9]+"), "/item", "/item/42?x=1", "/item?x=1"),
        (RouteMatch(path_kind="regex", value="/a/.*"), "/b", "/a/c/d", "/b"),
        # Envoy sets x-envoy-original-path whenever a rewrite is configured
        (RouteMatch(value="/same"), "/same", "/same/x", "/same/x"),
    ],
    ids=lambda v: v.path_kind + ":" + v.value if isinstance(v, RouteMatch) else None,
)
async def test_prefix_rewrite(
    nursery: trio.Nursery,
    match: RouteMatch,
    prefix_rewrite: str,
    path: str,
    upstream_path: str,
) -> None:
    up = await start_upstream(nursery)
    routes = [forward("rw", match, cluster="svc", prefix_rewrite=prefix_rewrite)]
    server = await start_proxy(nursery, simple_mesh(routes, [cluster("svc", up)]))
    r = await fetch(server, path)
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == upstream_path
    assert seen["headers"]["x-envoy-original-path"] == path
    assert [k for k, _ in seen["header_list"]].count("x-envoy-original-path") == 1


async def test_no_rewrite_no_original_path(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    server = await start_proxy(nursery, simple_mesh([route_to("svc")], [cluster("svc", up)]))
    r = await fetch(server, "/api/x?y=1")
    seen = r.json()
    assert seen["path"] == "/api/x?y=1"
    assert "x-envoy-original-path" not in seen["headers"]


async def test_host_rewrite(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    routes = [
        forward(
            "both",
            RouteMatch(value="/both/"),
            cluster="svc",
            host_rewrite="b.internal",
            prefix_rewrite="/",
        ),
        forward("host", cluster="svc", host_rewrite="svc.internal:8080"),
    ]
    # The vhost is chosen by the client's Host, before the rewrite.
    vhosts = [VirtualHost(name="public", domains=("public.example.com",), routes=tuple(routes))]
    mesh = simple_mesh([], [cluster("svc", up)], vhosts=vhosts)
    server = await start_proxy(nursery, mesh)
    r = await fetch(server, "/x?y=1", host="public.example.com")
    assert r.status_code == 200
    seen = r.json()
    assert seen["headers"]["host"] == "svc.internal:8080"
    assert seen["path"] == "/x?y=1"
    assert "x-envoy-original-path" not in seen["headers"]
    r = await fetch(server, "/both/z", host="public.example.com:8000")
    seen = r.json()
    assert seen["headers"]["host"] == "b.internal"
    assert seen["path"] == "/z"
    assert seen["headers"]["x-envoy-original-path"] == "/both/z"
    r = await fetch(server, "/x", host="svc.internal:8080")
    assert r.status_code == 404  # the rewritten name is not a vhost domain


# --------------------------------------------------------------------------- weighted clusters


async def test_weighted_clusters_split(nursery: trio.Nursery) -> None:
    v1 = await start_upstream(nursery, "v1")
    v2 = await start_upstream(nursery, "v2")
    routes = [
        forward(
            "split",
            weighted_clusters=(
                WeightedCluster(name="v1", weight=90),
                WeightedCluster(name="v2", weight=10),
            ),
        )
    ]
    server = await start_proxy(nursery, simple_mesh(routes, [cluster("v1", v1), cluster("v2", v2)]))
    seen: Counter[str] = Counter()
    with trio.fail_after(30):
        async with httpx.AsyncClient() as c:
            for i in range(200):
                r = await c.get(proxy_url(server, f"/{i}"))
                assert r.status_code == 200
                seen[r.headers["x-upstream"]] += 1
    await settle(server)
    assert seen["v1"] + seen["v2"] == 200
    # Expected 20 to v2 (binomial sd ~4.2); the bound is wide, a wrong split is not.
    assert 5 <= seen["v2"] <= 45, seen
    assert len(v1.requests) == seen["v1"] and len(v2.requests) == seen["v2"]
    assert counter(server, "cluster.v1.upstream_rq_total") == seen["v1"]
    assert counter(server, "cluster.v2.upstream_rq_total") == seen["v2"]


async def test_weighted_clusters_zero_weight_gets_nothing(nursery: trio.Nursery) -> None:
    v1 = await start_upstream(nursery, "v1")
    v2 = await start_upstream(nursery, "v2")
    routes = [
        forward(
            "split",
            weighted_clusters=(
                WeightedCluster(name="v1", weight=0),
                WeightedCluster(name="v2", weight=3),
            ),
        )
    ]
    server = await start_proxy(nursery, simple_mesh(routes, [cluster("v1", v1), cluster("v2", v2)]))
    with trio.fail_after(10):
        async with httpx.AsyncClient() as c:
            for _ in range(30):
                r = await c.get(proxy_url(server))
                assert r.headers["x-upstream"] == "v2"
    assert v1.requests == []


class ScriptedFloats(random.Random):
    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self._values = list(values)

    def random(self) -> float:
        return self._values.pop(0)


@pytest.mark.parametrize(
    ("weights", "draw", "expected"),
    [
        ((90, 10), 0.0, "a"),
        ((90, 10), 0.5, "a"),
        ((90, 10), 0.8999, "a"),
        ((90, 10), 0.9001, "b"),
        ((90, 10), 0.999999, "b"),
        ((1, 1, 1), 0.3, "a"),
        ((1, 1, 1), 0.34, "b"),
        ((1, 1, 1), 0.66, "b"),
        ((1, 1, 1), 0.67, "c"),
        ((0, 5, 0), 0.0, "b"),
        ((0, 5, 0), 0.99, "b"),
        ((5,), 0.7, "a"),
    ],
)
def test_pick_cluster_boundaries(weights: tuple[int, ...], draw: float, expected: str) -> None:
    action = RouteAction(
        weighted_clusters=tuple(
            WeightedCluster(name=n, weight=w) for n, w in zip("abc", weights, strict=False)
        )
    )
    router = Router(None, rng=ScriptedFloats([draw]))  # type: ignore[arg-type]
    assert router._pick_cluster(action) == expected


def test_pick_cluster_single_cluster_ignores_rng() -> None:
    router = Router(None, rng=ScriptedFloats([]))  # type: ignore[arg-type]
    assert router._pick_cluster(RouteAction(cluster="only")) == "only"


# --------------------------------------------------------------------------- NR and NC


async def test_no_route_is_404_nr(tmp_path: Path) -> None:
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "svc")
        responses, lines, stats = await logged(
            tmp_path,
            [route_to("svc", "/api")],
            [up],
            [("/other", None), ("/ap", None), ("/api/ok", None)],
        )
        n.cancel_scope.cancel()
    assert [r.status_code for r in responses] == [404, 404, 200]
    assert responses[0].content == b""
    assert stats["no_route"] == 2
    assert lines[:2] == ["404 NR - - route_not_found"] * 2
    assert lines[2].startswith("200 - to_svc svc ")
    assert [q["path"] for q in up.requests] == ["/api/ok"]


async def test_no_virtual_host_is_404_nr(tmp_path: Path) -> None:
    vhosts = [
        VirtualHost(name="api", domains=("api.example.com",), routes=(route_to("svc"),)),
    ]
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "svc")
        responses, lines, stats = await logged(
            tmp_path,
            [],
            [up],
            [("/", "www.example.com"), ("/", "api.example.com:1234")],
            vhosts=vhosts,
        )
        n.cancel_scope.cancel()
    assert [r.status_code for r in responses] == [404, 200]
    assert stats["no_route"] == 1
    assert lines[0] == "404 NR - - route_not_found"
    assert len(up.requests) == 1


async def test_unknown_cluster_is_503_nc(tmp_path: Path) -> None:
    # The DSL compiler rejects an unknown cluster; a hand-built graph can
    # still hold one (and a future CDS-style removal could produce one).
    routes = [
        route_to("ghost", "/ghost"),
        forward(
            "split",
            RouteMatch(value="/split"),
            weighted_clusters=(WeightedCluster(name="phantom", weight=1),),
        ),
        route_to("svc"),
    ]
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "svc")
        responses, lines, stats = await logged(
            tmp_path, routes, [up], [("/ghost/x", None), ("/split", None), ("/ok", None)]
        )
        n.cancel_scope.cancel()
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].content == b""
    assert stats["no_cluster"] == 2
    assert lines[0] == "503 NC to_ghost ghost cluster_not_found"
    assert lines[1] == "503 NC split phantom cluster_not_found"
    assert lines[2].startswith("200 - to_svc svc ")
    assert [q["path"] for q in up.requests] == ["/ok"]


# --------------------------------------------------------------------------- per-route timeout


async def test_per_route_timeout_zero_is_none(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as n:
        up = await start_upstream(n, network=net)
        routes = [
            route_to("svc", "/unbounded", timeout=0.0),
            forward(
                "split",
                RouteMatch(value="/split"),
                timeout=0.0,
                weighted_clusters=(WeightedCluster(name="svc", weight=1),),
            ),
            route_to("svc", "/", timeout=1.5),
        ]
        server = await start_proxy(n, simple_mesh(routes, [cluster("svc", up)]), net)
        client = await RawClient.connect(net, server.listener_address("ingress").port)
        t0 = trio.current_time()
        # Well past the 15 s default, inside the 300 s stream idle timeout.
        resp = await client.request(path="/unbounded", headers=[("x-test-delay", "200")])
        assert resp.status == 200
        assert trio.current_time() - t0 == 200
        t0 = trio.current_time()
        resp = await client.request(path="/split", headers=[("x-test-delay", "100")])
        assert resp.status == 200
        assert trio.current_time() - t0 == 100
        t0 = trio.current_time()
        resp = await client.request(path="/bounded", headers=[("x-test-delay", "200")])
        assert resp.status == 504
        assert trio.current_time() - t0 == 1.5
        n.cancel_scope.cancel()
