"""Endpoints from a ClusterLoadAssignment file (Envoy's filesystem EDS): the
parser alone, the DSL, then the proxy with real upstreams while the file is
replaced (os.replace), rewritten in place, or broken."""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trioproxy.dsl import MeshError, admin, cluster, listener, mesh, prefix

from tests.conftest import counter, start_proxy, start_upstream, wait_until
from tests.upstream import Upstream
from tests.upstream_h2 import UpstreamH2
from trioproxy.config import Cluster, EdsFile, Endpoint, OutlierDetection, SocketAddress
from trioproxy.net.network import TrioNetwork
from trioproxy.observe.stats import StatsStore
from trioproxy.runtime.server import Server
from trioproxy.upstream.cluster_manager import ClusterRuntime
from trioproxy.upstream.eds import EdsError, parse_load_assignment

# ------------------------------------------------------------------ parsing


def cla(*groups: dict[str, Any], name: str = "svc") -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": list(groups)}


def lb(address: str, **extra: Any) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    sa = {"address": host, "port_value": int(port)}
    return {"endpoint": {"address": {"socket_address": sa}}, **extra}


def test_parse_json_with_priorities_weights_and_health() -> None:
    doc = cla(
        {"locality": {"zone": "a"}, "lb_endpoints": [lb("10.0.0.1:80", load_balancing_weight=3)]},
        {"priority": 1, "lb_endpoints": [lb("10.0.0.2:81", health_status="DRAINING")]},
    )
    eps = parse_load_assignment(json.dumps(doc).encode(), "/x/eds.json", "svc")
    assert eps == (
        Endpoint(address=SocketAddress(host="10.0.0.1", port=80), weight=3),
        Endpoint(
            address=SocketAddress(host="10.0.0.2", port=81), priority=1, health_status="DRAINING"
        ),
    )


def test_parse_yaml_and_discovery_response() -> None:
    text = b"""
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: svc
  endpoints:
  - lb_endpoints:
    - endpoint:
        address:
          socket_address: {address: "::1", port_value: 8080}
"""
    (e,) = parse_load_assignment(text, "eds.yaml", "svc")
    assert e.address == SocketAddress(host="::1", port=8080)
    # No endpoints at all is a valid (empty) assignment.
    assert parse_load_assignment(b'{"cluster_name": "svc"}', "e.json", "svc") == ()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "the ClusterLoadAssignment must be an object, got list"),
        (json.dumps(cla(name="other")).encode(), "cluster_name 'other' is not this cluster's"),
        (json.dumps({"cluster_name": "svc", "endpoint": []}).encode(), "unknown field(s) endpoint"),
        (
            json.dumps(cla({"lb_endpoints": [lb("web.internal:80")]})).encode(),
            "bad address 'web.internal' in endpoints[0].lb_endpoints[0].endpoint",
        ),
        (
            json.dumps(cla({"lb_endpoints": [lb("10.0.0.1:0")]})).encode(),
            "bad port_value in endpoints[0].lb_endpoints[0].endpoint 0",
        ),
        (
            json.dumps(cla({"lb_endpoints": [lb("10.0.0.1:1", load_balancing_weight=0)]})).encode(),
            "bad load_balancing_weight of endpoints[0].lb_endpoints[0] 0",
        ),
        (
            json.dumps(cla({"priority": -1, "lb_endpoints": []})).encode(),
            "bad priority of endpoints[0] -1",
        ),
        (
            json.dumps(cla({"lb_endpoints": [lb("10.0.0.1:1"), lb("10.0.0.1:1")]})).encode(),
            "10.0.0.1:1 is listed twice",
        ),
        (
            json.dumps(cla({"lb_endpoints": [lb("10.0.0.1:1", health_status="SICK")]})).encode(),
            "bad health_status 'SICK'",
        ),
    ],
)
def test_malformed_files_are_rejected_with_the_file_and_problem(data: bytes, problem: str) -> None:
    with pytest.raises(EdsError) as info:
        parse_load_assignment(data, "/etc/eds/svc.json", "svc")
    message = str(info.value)
    assert message.startswith("/etc/eds/svc.json: ")
    assert problem in message


def test_bad_yaml() -> None:
    with pytest.raises(EdsError, match=r"^e\.yml: not valid YAML"):
        parse_load_assignment(b"endpoints: [", "e.yml", "svc")


# ------------------------------------------------------------------ DSL


def test_dsl_eds_file() -> None:
    c = cluster("svc").eds_file("eds.json", watch_interval="100ms")
    (built,) = mesh(listener("l", ":0").route(prefix("/"), c)).compile().clusters
    assert built.type == "eds" and built.endpoints == ()
    # A relative path is relative to the file of the builder call.
    here = os.path.dirname(os.path.abspath(__file__))
    assert built.eds_file == EdsFile(path=os.path.join(here, "eds.json"), watch_interval=0.1)


def test_dsl_eds_errors() -> None:
    here = test_dsl_eds_errors.__code__.co_firstlineno
    m = mesh(
        listener("l", ":0")
        .route(prefix("/a"), cluster("a", "10.0.0.1:80").eds_file("a.json"))
        .route(prefix("/b"), cluster("b", "10.0.0.1:80", type="static").eds_file("b.json"))
        .route(prefix("/c"), cluster("c", type="eds"))
        .route(prefix("/d"), cluster("d").eds_file("d.json", watch_interval=0))
    )
    with pytest.raises(MeshError) as info:
        m.compile()
    issues = info.value.issues
    assert [i.message for i in issues] == [
        "cluster 'a': an eds cluster takes its endpoints from .eds_file(...)",
        "cluster 'b': .eds_file() needs type='eds' (this one is static)",
        "cluster 'c': an eds cluster needs .eds_file(path)",
        "eds_file watch_interval of cluster 'd' must be greater than 0",
    ]
    assert [i.location.line for i in issues if i.location] == [here + n for n in (4, 5, 6, 7)]


# ------------------------------------------------------------------ running


def _write(path: Path, groups: list[dict[str, Any]], *, atomic: bool) -> None:
    data = json.dumps(cla(*groups), indent=1)
    if atomic:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(data)
        os.replace(tmp, path)
    else:
        with open(path, "w") as f:  # in place: same inode, truncated then written
            f.write(data)


def _eds_mesh(path: Path) -> Any:
    svc = cluster("svc").eds_file(str(path), watch_interval="50ms")
    return mesh(
        listener("ingress", "127.0.0.1:0").route(prefix("/"), svc), admin("127.0.0.1:0")
    ).compile()


async def _hits(client: httpx.AsyncClient, server: Server, n: int) -> Counter[str]:
    port = server.listener_address("ingress").port
    got: Counter[str] = Counter()
    for _ in range(n):
        r = await client.get(f"http://127.0.0.1:{port}/")
        assert r.status_code == 200, r.text
        got[r.headers["x-upstream"]] += 1
    return got


async def _admin_hosts(client: httpx.AsyncClient, server: Server) -> set[str]:
    assert server.admin_bound is not None
    r = await client.get(f"http://127.0.0.1:{server.admin_bound.port}/clusters")
    lines = r.text.splitlines()
    return {ln.split("::")[1] for ln in lines if ln.startswith("svc::") and "::rq_total::" in ln}


@pytest.mark.parametrize("atomic", [True, False], ids=["os.replace", "in-place"])
async def test_file_changes_move_traffic(tmp_path: Path, atomic: bool) -> None:
    path = tmp_path / "svc.json"
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        a, b, c = [await start_upstream(n, name) for name in "abc"]
        _write(path, [{"lb_endpoints": [lb(a.address), lb(b.address)]}], atomic=atomic)
        server = await start_proxy(n, _eds_mesh(path))
        # The file was read before the listener opened.
        assert await _admin_hosts(client, server) == {a.address, b.address}
        assert set(await _hits(client, server, 6)) == {"a", "b"}

        _write(path, [{"lb_endpoints": [lb(c.address)]}], atomic=atomic)

        async def moved() -> bool:
            return await _admin_hosts(client, server) == {c.address}

        await wait_until(moved, "the new endpoints")
        before = len(a.requests) + len(b.requests)
        assert await _hits(client, server, 6) == {"c": 6}
        assert len(a.requests) + len(b.requests) == before
        assert counter(server, "cluster.svc.membership_change") == 2
        assert server.stats.gauges["cluster.svc.membership_total"].value == 1
        n.cancel_scope.cancel()


async def test_malformed_file_keeps_the_last_good_endpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "svc.json"
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        a = await start_upstream(n, "a")
        _write(path, [{"lb_endpoints": [lb(a.address)]}], atomic=True)
        server = await start_proxy(n, _eds_mesh(path))
        assert await _hits(client, server, 2) == {"a": 2}
        for bad in (b"{", json.dumps(cla({"lb_endpoints": [lb("127.0.0.1:99999")]})).encode()):
            rejected = counter(server, "cluster.svc.update_rejected")
            with caplog.at_level(logging.ERROR, logger="trioproxy.discovery"):
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(bad)
                os.replace(tmp, path)

                async def counted(before: int = rejected) -> bool:
                    return counter(server, "cluster.svc.update_rejected") == before + 1

                await wait_until(counted, "the rejection")
            assert await _hits(client, server, 2) == {"a": 2}
            assert await _admin_hosts(client, server) == {a.address}
        messages = [r.getMessage() for r in caplog.records if r.name == "trioproxy.discovery"]
        assert any(str(path) in m and "not valid JSON" in m for m in messages), messages
        assert any("bad port_value" in m and "99999" in m for m in messages), messages
        # A good file again is applied.
        b = await start_upstream(n, "b")
        _write(path, [{"lb_endpoints": [lb(b.address)]}], atomic=True)

        async def fixed() -> bool:
            return await _admin_hosts(client, server) == {b.address}

        await wait_until(fixed, "the good file")
        assert await _hits(client, server, 2) == {"b": 2}
        n.cancel_scope.cancel()


async def test_weights_and_priorities_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        ups: list[Upstream] = [await start_upstream(n, name) for name in "abc"]
        a, b, c = ups

        def write(b_health: str) -> None:
            text = f"""
cluster_name: svc
endpoints:
- priority: 0
  lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a.port}}}}}}}
    load_balancing_weight: 3
  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {b.port}}}}}}}
    load_balancing_weight: 1
    health_status: {b_health}
- priority: 1
  lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {c.port}}}}}}}
"""
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

        write("HEALTHY")
        svc = cluster("svc").eds_file(str(path), watch_interval="50ms")
        m = mesh(listener("ingress", "127.0.0.1:0").route(prefix("/"), svc)).compile()
        server = await start_proxy(n, m)
        # Smooth weighted round robin: exactly 3:1 over 8 picks; priority 1 idle.
        assert await _hits(client, server, 8) == {"a": 6, "b": 2}
        # b drains: priority 0 is half healthy (1.4 x 1/2 = 70 %), so 30 %
        # of the traffic spills to priority 1 (Envoy's priority loads).
        write("DRAINING")
        runtime = server.clusters.get("svc")
        assert runtime is not None

        async def drained() -> bool:
            return any(h.eds_unhealthy for h in runtime.hosts)

        await wait_until(drained, "b to drain")
        assert runtime.lb.loads == [70, 30]
        hits = await _hits(client, server, 60)
        assert "b" not in hits and hits["a"] > hits["c"] > 0
        n.cancel_scope.cancel()


# ------------------------------------------------------------------ membership


async def test_set_endpoints_keeps_state_of_staying_hosts_and_forgets_leaving_ones() -> None:
    def e(port: int, **kw: Any) -> Endpoint:
        return Endpoint(address=SocketAddress(host="127.0.0.1", port=port), **kw)

    stats = StatsStore()
    config = Cluster(
        name="svc",
        type="eds",
        outlier_detection=OutlierDetection(consecutive_5xx=2, max_ejection_percent=100),
    )
    c = ClusterRuntime(config, TrioNetwork(), stats, random.Random(1))
    assert c.hosts == [] and c.choose_host() is None
    c.set_endpoints([e(1), e(2)])
    one, two = c.hosts
    assert c.outlier is not None
    # Host 1 is ejected, then leaves: no longer counted as an active ejection.
    c.on_response(one, 503, 1.0)
    c.on_response(one, 503, 1.0)
    assert one.outlier_ejected
    assert stats.gauges["cluster.svc.outlier_detection.ejections_active"].value == 1
    d = c.set_endpoints([e(2, weight=5), e(3)])
    assert d.added == (e(3),) and d.removed == (SocketAddress(host="127.0.0.1", port=1),)
    assert stats.gauges["cluster.svc.outlier_detection.ejections_active"].value == 0
    # Host 2 is the same object (its pool and counters stay), with its new weight.
    assert c.hosts[0] is two and two.weight == 5
    three = c.hosts[1]
    assert {c.choose_host() for _ in range(12)} == {two, three}
    # The newcomer is tracked by outlier detection; the sweep sees every host.
    c.on_response(three, 503, 1.0)
    c.on_response(three, 503, 1.0)
    assert three.outlier_ejected
    c.outlier.sweep(trio.current_time() + 10_000.0)
    assert not three.outlier_ejected
    # An empty assignment empties the cluster.
    c.set_endpoints([])
    assert c.hosts == [] and c.choose_host() is None
    assert stats.gauges["cluster.svc.membership_total"].value == 0
    assert stats.counters["cluster.svc.membership_change"].value == 3


async def test_http2_hosts_that_join_later(tmp_path: Path) -> None:
    """An HTTP/2 host that joins gets its connection tasks in the cluster
    manager's nursery like a static one."""
    path = tmp_path / "svc.json"
    _write(path, [], atomic=True)
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        up = await n.start(UpstreamH2("h2").run)
        svc = cluster("svc").eds_file(str(path), watch_interval="50ms").http2()
        m = mesh(listener("ingress", "127.0.0.1:0").route(prefix("/"), svc)).compile()
        server = await start_proxy(n, m)
        port = server.listener_address("ingress").port
        assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 503  # no hosts
        _write(path, [{"lb_endpoints": [lb(up.address)]}], atomic=True)
        runtime = server.clusters.get("svc")
        assert runtime is not None

        async def joined() -> bool:
            return len(runtime.hosts) == 1

        await wait_until(joined, "the HTTP/2 host")
        for _ in range(3):
            r = await client.get(f"http://127.0.0.1:{port}/")
            assert r.status_code == 200 and r.headers["x-upstream"] == "h2"
        assert up.connections == 1  # multiplexed on one connection
        n.cancel_scope.cancel()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "cluster_name",
                    "endpoints",
                    "lb_endpoints",
                    "endpoint",
                    "address",
                    "socket_address",
                    "port_value",
                    "priority",
                    "load_balancing_weight",
                    "health_status",
                    "hostname",
                    "locality",
                    "resources",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=_json_values)
def test_any_document_gives_endpoints_or_an_eds_error(doc: object) -> None:
    """A file can never make the watcher fail with anything but EdsError."""
    for data, name in ((json.dumps(doc).encode(), "f.json"), (json.dumps(doc).encode(), "f.yaml")):
        try:
            eps = parse_load_assignment(data, name, "svc")
        except EdsError as exc:
            assert str(exc).startswith(name + ": ")
        else:
            assert all(isinstance(e, Endpoint) and 1 <= e.address.port <= 65535 for e in eps)
