"""The runtime layer: the sans-IO `Runtime`, and `/runtime` +
`POST /runtime_modify` on a running proxy."""

from __future__ import annotations

import random

import attrs
import httpx
import pytest
import trio

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
from trioproxy.codec.stream import RequestHead
from trioproxy.config import (
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    RuntimeFraction,
    VirtualHost,
)
from trioproxy.http.route_table import RouteTable
from trioproxy.runtime.layers import Runtime, parse_runtime_value
from trioproxy.runtime.server import Server


def test_parse_runtime_value() -> None:
    assert parse_runtime_value("true") is True
    assert parse_runtime_value("False") is False
    assert parse_runtime_value("42") == 42
    assert parse_runtime_value("2.5") == 2.5
    assert parse_runtime_value("on") == "on"


def test_layers_and_reads() -> None:
    rt = Runtime([("upstream.use_retry", 100), ("feature.x", True), ("name", "a")])
    assert rt.get_integer("upstream.use_retry", 7) == 100
    assert rt.get_integer("missing", 7) == 7
    assert rt.get_integer("name", 7) == 7  # not a number
    assert rt.get_integer("feature.x", 7) == 7  # a bool is not a number
    assert rt.get_bool("feature.x", False) is True

    # The admin layer overrides the static one; an empty value removes it.
    rt.modify({"upstream.use_retry": "5", "new.key": "1.5"})
    assert rt.get_integer("upstream.use_retry", 7) == 5
    assert rt.get("new.key") == 1.5
    rt.modify({"upstream.use_retry": ""})
    assert rt.get_integer("upstream.use_retry", 7) == 100
    assert rt.dump() == {
        "layers": ["static_layer", "admin"],
        "entries": {
            "feature.x": {"final_value": "true", "layer_values": ["true", ""]},
            "name": {"final_value": "a", "layer_values": ["a", ""]},
            "new.key": {"final_value": "1.5", "layer_values": ["", "1.5"]},
            "upstream.use_retry": {"final_value": "100", "layer_values": ["100", ""]},
        },
    }


def test_feature_enabled_percentages() -> None:
    rt = Runtime([("half", 50), ("never", 0), ("always", 100)], rng=random.Random(1))
    n = 10_000
    assert sum(rt.feature_enabled("half", 0) for _ in range(n)) in range(4700, 5300)
    assert not any(rt.feature_enabled("never", 100) for _ in range(100))
    assert all(rt.feature_enabled("always", 0) for _ in range(100))
    # Unset (or not a number): the default percentage.
    assert sum(rt.feature_enabled("unset", 10) for _ in range(n)) in range(800, 1200)
    rt.modify({"half": "0"})
    assert not any(rt.feature_enabled("half", 100) for _ in range(100))


def test_fraction_enabled() -> None:
    rt = Runtime(rng=random.Random(2))
    n = 10_000
    # 25/100 by default, then the runtime key's integer replaces the numerator.
    assert sum(rt.fraction_enabled("k", 25) for _ in range(n)) in range(2300, 2700)
    rt.modify({"k": "0"})
    assert not any(rt.fraction_enabled("k", 25) for _ in range(100))
    rt.modify({"k": "10000"})
    assert all(rt.fraction_enabled("k", 25, 10_000) for _ in range(100))
    assert sum(rt.fraction_enabled("", 1, 1_000_000) for _ in range(n)) < 10


# --------------------------------------------------------------------------- admin


async def start(nursery: trio.Nursery) -> tuple[Server, str]:
    up = await start_upstream(nursery)
    mesh = simple_mesh([route_to("svc")], [cluster("svc", up)], admin=True)
    mesh = attrs.evolve(mesh, runtime=(("feature.x", True), ("upstream.use_retry", 100)))
    server = await start_proxy(nursery, mesh)
    bound = server.admin_bound
    assert bound is not None
    return server, f"http://127.0.0.1:{bound.port}"


async def test_runtime_endpoints(nursery: trio.Nursery) -> None:
    server, admin = await start(nursery)
    async with httpx.AsyncClient() as c:
        r = await c.get(admin + "/runtime")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json()["entries"]["upstream.use_retry"] == {
            "final_value": "100",
            "layer_values": ["100", ""],
        }

        # GET does not change anything: 405 and a hint.
        r = await c.get(admin + "/runtime_modify?upstream.use_retry=5")
        assert r.status_code == 405 and "POST" in r.text
        assert server.runtime.get_integer("upstream.use_retry", 0) == 100

        r = await c.post(admin + "/runtime_modify?upstream.use_retry=5&flag.new=true")
        assert (r.status_code, r.text) == (200, "OK\n")
        assert server.runtime.get_integer("upstream.use_retry", 0) == 5
        assert server.runtime.get_bool("flag.new", False) is True
        entries = (await c.get(admin + "/runtime")).json()["entries"]
        assert entries["upstream.use_retry"] == {"final_value": "5", "layer_values": ["100", "5"]}
        assert entries["flag.new"] == {"final_value": "true", "layer_values": ["", "true"]}

        # An empty value removes the admin override.
        r = await c.post(admin + "/runtime_modify?upstream.use_retry=")
        assert r.status_code == 200
        assert server.runtime.get_integer("upstream.use_retry", 0) == 100

        r = await c.post(admin + "/runtime_modify")
        assert r.status_code == 400 and "usage" in r.text


# --------------------------------------------------------------------------- route runtime_fraction


async def test_route_runtime_fraction_follows_the_runtime(nursery: trio.Nursery) -> None:
    stable = await start_upstream(nursery, "stable")
    canary = await start_upstream(nursery, "canary")
    canary_route = Route(
        name="canary",
        match=RouteMatch(
            value="/",
            runtime_fraction=RuntimeFraction(numerator=0, runtime_key="routing.canary"),
        ),
        action=RouteAction(cluster="canary"),
    )
    mesh = simple_mesh(
        [canary_route, route_to("stable")],
        [cluster("stable", stable), cluster("canary", canary)],
        admin=True,
    )
    server = await start_proxy(nursery, mesh)
    bound = server.admin_bound
    assert bound is not None
    admin = f"http://127.0.0.1:{bound.port}"

    async def served_by(n: int) -> dict[str, int]:
        seen = {"stable": 0, "canary": 0}
        async with httpx.AsyncClient() as c:
            for _ in range(n):
                r = await c.get(proxy_url(server))
                seen[r.headers["x-upstream"]] += 1
        return seen

    assert await served_by(20) == {"stable": 20, "canary": 0}  # default 0/100
    async with httpx.AsyncClient() as c:
        assert (await c.post(admin + "/runtime_modify?routing.canary=100")).status_code == 200
    assert await served_by(20) == {"stable": 0, "canary": 20}
    async with httpx.AsyncClient() as c:
        await c.post(admin + "/runtime_modify?routing.canary=50")
    seen = await served_by(200)
    assert 60 <= seen["canary"] <= 140, seen
    async with httpx.AsyncClient() as c:
        await c.post(admin + "/runtime_modify?routing.canary=")  # back to the default
    assert await served_by(20) == {"stable": 20, "canary": 0}


def test_route_table_without_runtime_refuses_a_fraction() -> None:
    route = Route(
        name="r",
        match=RouteMatch(runtime_fraction=RuntimeFraction(numerator=5)),
        action=RouteAction(cluster="c"),
    )
    with pytest.raises(ValueError, match="runtime_fraction"):
        RouteTable(RouteConfig(virtual_hosts=(VirtualHost(name="v", routes=(route,)),)))
    table = RouteTable(
        RouteConfig(virtual_hosts=(VirtualHost(name="v", routes=(route,)),)),
        Runtime(rng=random.Random(3)),
    )
    vh = table.virtual_host(b"x")
    assert vh is not None
    head = RequestHead(method=b"GET", path=b"/", authority=b"x", headers=[])
    hits = sum(vh.match(head) is not None for _ in range(2000))
    assert 50 <= hits <= 150  # 5 %
    assert vh.routes[0].why_not(head, "/") == "matches only a runtime fraction, 5/100"


# --------------------------------------------------------------------------- retries


async def test_upstream_use_retry_switches_retries_off(nursery: trio.Nursery) -> None:
    up = await start_upstream(nursery)
    retry = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2, base_interval=0.001)
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc", retry_policy=retry)], [cluster("svc", up)], admin=True),
    )
    bound = server.admin_bound
    assert bound is not None
    fail = {"x-test-status": "503"}
    async with httpx.AsyncClient() as c:
        assert (await c.get(proxy_url(server), headers=fail)).status_code == 503
        await settle(server)
        assert counter(server, "cluster.svc.upstream_rq_retry") == 2  # Envoy default: 100 %

        r = await c.post(f"http://127.0.0.1:{bound.port}/runtime_modify?upstream.use_retry=0")
        assert r.status_code == 200
        assert (await c.get(proxy_url(server), headers=fail)).status_code == 503
        await settle(server)
        assert counter(server, "cluster.svc.upstream_rq_retry") == 2  # no new retries
        assert counter(server, "cluster.svc.upstream_rq_total") == 4
