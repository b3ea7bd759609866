"""The recipes in trioproxy.recipes, run through their examples with real peers."""

from __future__ import annotations

import httpx
import trio
from trioproxy.dsl import load_mesh
from trioproxy.recipes import canary, sidecar

from tests.conftest import start_proxy
from tests.test_examples import EXAMPLES, rebind


async def test_sidecar_example(nursery: trio.Nursery) -> None:
    mesh, ports = rebind(load_mesh(str(EXAMPLES / "sidecar.py")))
    server = await start_proxy(nursery, mesh)
    inbound = f"http://127.0.0.1:{ports[15006]}/"
    outbound = f"http://127.0.0.1:{ports[15001]}/"
    async with httpx.AsyncClient() as c:
        r = await c.get(inbound)
        assert r.status_code == 200 and "(local app)" in r.text
        r = await c.get(outbound, headers={"host": "users"})
        assert r.status_code == 200 and "(users)" in r.text
        r = await c.get(outbound, headers={"host": f"users:{ports[15001]}"})
        assert "(users)" in r.text
        billing = {(await c.get(outbound, headers={"host": "billing"})).text for _ in range(4)}
        assert {"billing 1", "billing 2"} == {t.split("(")[1].split(")")[0] for t in billing}
        assert (await c.get(outbound, headers={"host": "unknown"})).status_code == 404
    stats = server.stats.counters
    assert stats["cluster.local_app.upstream_rq_2xx"].value == 1
    assert stats["cluster.users.upstream_rq_2xx"].value == 2
    # Each dependency has outlier detection and a connect-failure retry.
    route = mesh.listeners[1].filter_chains[0].filters[0].route_config  # type: ignore[attr-defined]
    action = route.virtual_hosts[0].routes[0].action
    assert action.retry_policy.retry_on == frozenset({"connect-failure", "reset"})
    assert mesh.cluster("users").outlier_detection is not None


async def test_canary_example_splits_and_pins(nursery: trio.Nursery) -> None:
    mesh, ports = rebind(load_mesh(str(EXAMPLES / "canary.py")))
    server = await start_proxy(nursery, mesh)
    base = f"http://127.0.0.1:{ports[8000]}/"
    async with httpx.AsyncClient() as c:
        texts = [(await c.get(base)).text for _ in range(200)]
        v2 = sum("(v2)" in t for t in texts)
        # 10 % of 200: a binomial draw, well inside [2, 50] (p < 1e-6 outside).
        assert 2 <= v2 <= 50, v2
        assert v2 + sum("(v1)" in t for t in texts) == 200
        for _ in range(5):
            assert "(v2)" in (await c.get(base, headers={"x-canary": "always"})).text
            assert "(v1)" in (await c.get(base, headers={"x-canary": "never"})).text
    assert server.stats.counters["cluster.canary.upstream_rq_2xx"].value == v2 + 5


def test_canary_edges_and_validation() -> None:
    all_stable = canary("127.0.0.1:1", "127.0.0.1:2", percent=0).compile()
    assert (
        all_stable.listeners[0]
        .filter_chains[0]
        .filters[0]
        .route_config.virtual_hosts[  # type: ignore[attr-defined]
            0
        ]
        .routes[2]
        .action.cluster
        == "stable"
    )
    all_canary = canary("127.0.0.1:1", "127.0.0.1:2", percent=100).compile()
    assert (
        all_canary.listeners[0]
        .filter_chains[0]
        .filters[0]
        .route_config.virtual_hosts[  # type: ignore[attr-defined]
            0
        ]
        .routes[2]
        .action.cluster
        == "canary"
    )


def test_sidecar_compiles_with_defaults() -> None:
    m = sidecar("127.0.0.1:8080", {"a": "127.0.0.1:9000"}).compile()
    assert [lc.name for lc in m.listeners] == ["inbound", "outbound"]
    assert str(m.listeners[0].address) == "0.0.0.0:15006"
    assert str(m.listeners[1].address) == "127.0.0.1:15001"
