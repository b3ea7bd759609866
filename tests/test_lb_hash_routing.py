"""Hash-based balancing end to end: a proxy and three real upstreams on
127.0.0.1, a ring_hash (and a maglev) cluster, routes with hash policies.

A header hash keeps each user on one host; a cookie policy with a ttl sets
the cookie on the first response, and the cookie sent back keeps the client
on the host that answered. Which host is expected is read from the running
cluster's own balancer, so the checks do not depend on the upstreams' ports.
"""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from tests.conftest import cluster, counter, simple_mesh, start_proxy, start_upstream
from trioproxy.config import (
    CookieHashPolicy,
    HashPolicy,
    HeaderHashPolicy,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
)
from trioproxy.runtime.server import Server
from trioproxy.upstream.lb import hash64

SET_COOKIE = re.compile(r'session="([0-9a-f]{16})"; Max-Age=3600; Path=/; HttpOnly')


def route(prefix: str, cluster_name: str, *policies: HashPolicy) -> Route:
    return Route(
        name=prefix.strip("/"),
        match=RouteMatch(path_kind="prefix", value=prefix),
        action=RouteAction(cluster=cluster_name, hash_policy=policies),
    )


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.listener_address('ingress').port}{path}"


async def start(nursery: trio.Nursery, policy: str) -> tuple[Server, dict[str, str]]:
    ups = [await start_upstream(nursery, name) for name in ("a", "b", "c")]
    cookie = CookieHashPolicy(name="session", ttl=3600, path="/")
    mesh = simple_mesh(
        [
            route("/h", "svc", HeaderHashPolicy(name="x-user")),
            route("/c", "svc", cookie),
            route("/rr", "rr", cookie),  # hash policies are ignored by round robin
        ],
        [cluster("svc", *ups, lb_policy=policy), cluster("rr", *ups)],
    )
    server = await start_proxy(nursery, mesh)
    return server, {u.address: u.name for u in ups}


def expected(server: Server, names: dict[str, str], key: bytes) -> str:
    """The upstream the running balancer maps `key`'s hash to."""
    svc = server.clusters.get("svc")
    assert svc is not None
    host = svc.choose_host(hash64(key))
    assert host is not None
    return names[host.address]


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_header_hash_is_sticky(nursery: trio.Nursery, policy: str) -> None:
    server, names = await start(nursery, policy)
    seen: dict[str, set[str]] = {}
    async with httpx.AsyncClient() as c:
        for rnd in range(3):
            for i in range(24):
                user = f"user-{i}"
                r = await c.get(url(server, "/h"), headers={"x-user": user})
                assert r.status_code == 200
                seen.setdefault(user, set()).add(r.headers["x-upstream"])
                if rnd == 0:
                    assert r.headers["x-upstream"] == expected(server, names, user.encode())
                assert "set-cookie" not in r.headers
    assert all(len(hosts) == 1 for hosts in seen.values()), seen
    # Different users spread over the hosts (24 users on one host of three
    # would mean the hash is not used).
    assert len({h for hosts in seen.values() for h in hosts}) >= 2
    # Without the header the hash is random: the hosts are all reached.
    async with httpx.AsyncClient() as c:
        spread = {(await c.get(url(server, "/h"))).headers["x-upstream"] for _ in range(60)}
    assert spread == {"a", "b", "c"}


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_generated_cookie_is_set_then_honoured(nursery: trio.Nursery, policy: str) -> None:
    server, names = await start(nursery, policy)
    async with httpx.AsyncClient() as c:
        first = await c.get(url(server, "/c"))
    assert first.status_code == 200
    m = SET_COOKIE.fullmatch(first.headers["set-cookie"])
    assert m is not None, first.headers["set-cookie"]
    value = m.group(1)
    host = first.headers["x-upstream"]
    assert host == expected(server, names, value.encode())
    # Sent back (from new connections, so another client port): the same
    # host every time, and no new cookie.
    for _ in range(10):
        async with httpx.AsyncClient() as c:
            r = await c.get(url(server, "/c"), headers={"cookie": f'session="{value}"'})
        assert r.headers["x-upstream"] == host
        assert "set-cookie" not in r.headers
    # Another session value may land elsewhere, and is honoured as well.
    others = {}
    for i in range(12):
        async with httpx.AsyncClient() as c:
            r = await c.get(url(server, "/c"), headers={"cookie": f"session=s{i}"})
        others[f"s{i}"] = r.headers["x-upstream"]
    assert others == {k: expected(server, names, k.encode()) for k in others}
    assert counter(server, "cluster.svc.upstream_rq_200") == 23


async def test_round_robin_ignores_hash_policies(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery, "ring_hash")
    async with httpx.AsyncClient() as c:
        rs = [await c.get(url(server, "/rr")) for _ in range(6)]
    assert all("set-cookie" not in r.headers for r in rs)
    assert {r.headers["x-upstream"] for r in rs} == {"a", "b", "c"}


async def test_retry_moves_off_the_hashed_host(nursery: trio.Nursery) -> None:
    # The hashed host answers 503; the retry asks the ring for another host
    # (Envoy's attempt offset), so the user still gets an answer.
    ups = [await start_upstream(nursery, name) for name in ("a", "b", "c")]
    ups[0].always_status = 503
    retry = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=1)
    mesh = simple_mesh(
        [
            Route(
                name="h",
                match=RouteMatch(path_kind="prefix", value="/"),
                action=RouteAction(
                    cluster="svc",
                    hash_policy=(HeaderHashPolicy(name="x-user"),),
                    retry_policy=retry,
                ),
            )
        ],
        [cluster("svc", *ups, lb_policy="ring_hash")],
    )
    server = await start_proxy(nursery, mesh)
    names = {u.address: u.name for u in ups}
    on_a = 0
    failed = 0
    async with httpx.AsyncClient() as c:
        for i in range(60):
            user = f"user-{i}"
            r = await c.get(url(server, "/"), headers={"x-user": user})
            if expected(server, names, user.encode()) == "a":
                on_a += 1
                failed += r.status_code != 200
            else:
                assert r.status_code == 200
                assert r.headers["x-upstream"] == expected(server, names, user.encode())
    assert on_a >= 4
    # Up to three attempts to find another host; the ring's next points can
    # all belong to the same host, rarely.
    assert failed <= max(1, on_a // 4)
    assert counter(server, "cluster.svc.upstream_rq_retry") == on_a
