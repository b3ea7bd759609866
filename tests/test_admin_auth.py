"""The admin token: `Authorization: Bearer <token>` or 401; no bare admin
off loopback, even through the `--admin` override."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from trioproxy.config import Admin, Mesh, SocketAddress
from trioproxy.observe.admin import ENDPOINTS
from trioproxy.runtime.server import Server

TOKEN = "t0ken-for-tests"


async def mesh_with_admin(nursery: trio.Nursery, admin: Admin) -> Mesh:
    up = await start_upstream(nursery)
    return attrs.evolve(simple_mesh([route_to("svc")], [cluster("svc", up)]), admin=admin)


def url(server: Server, path: str) -> str:
    assert server.admin_bound is not None
    return f"http://127.0.0.1:{server.admin_bound.port}{path}"


async def test_token_required_on_every_endpoint(nursery: trio.Nursery) -> None:
    admin = Admin(address=SocketAddress(host="127.0.0.1", port=0), token=TOKEN)
    server = await start_proxy(nursery, await mesh_with_admin(nursery, admin))
    good = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient() as c:
        for path, ep in sorted(ENDPOINTS.items()):
            if path == "/quitquitquit":
                continue
            method = "POST" if ep.mutating else "GET"
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                r = await c.request(method, url(server, path), headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.headers["www-authenticate"].startswith("Bearer")
        # An unknown path gets 401 too: nothing is revealed without the token.
        r = await c.get(url(server, "/no/such"))
        assert r.status_code == 401

        r = await c.get(url(server, "/ready"), headers=good)
        assert (r.status_code, r.text) == (200, "LIVE\n")
        r = await c.get(url(server, "/reset_counters"), headers=good)
        assert r.status_code == 405  # authorised, still the wrong method
        r = await c.post(url(server, "/reset_counters"), headers=good)
        assert r.status_code == 200
        r = await c.get(url(server, "/config_dump"), headers=good)
        assert r.json()["admin"]["token"] == "[redacted]"
        assert TOKEN not in r.text
    assert server.state == "LIVE"


async def test_token_admin_on_all_interfaces(nursery: trio.Nursery) -> None:
    admin = Admin(address=SocketAddress(host="0.0.0.0", port=0), token=TOKEN)
    server = await start_proxy(nursery, await mesh_with_admin(nursery, admin))
    async with httpx.AsyncClient() as c:
        assert (await c.get(url(server, "/ready"))).status_code == 401
        r = await c.get(url(server, "/ready"), headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
    # Refused requests are counted.
    assert server.stats.counters["admin.downstream_rq_unauthorized"].value == 1


async def test_bare_admin_off_loopback_refuses_to_start(nursery: trio.Nursery) -> None:
    # A hand-built graph (the compiler refuses this) or an --admin override.
    admin = Admin(address=SocketAddress(host="0.0.0.0", port=0))
    mesh = await mesh_with_admin(nursery, admin)
    with pytest.raises(BaseException) as info:
        async with trio.open_nursery() as n:
            await n.start(Server(mesh).run)
    assert "without a token" in _messages(info.value)

    override = Server(
        await mesh_with_admin(nursery, Admin(address=SocketAddress(host="127.0.0.1", port=0))),
        admin_address=SocketAddress(host="0.0.0.0", port=0),
    )
    with pytest.raises(BaseException) as info:
        async with trio.open_nursery() as n:
            await n.start(override.run)
    assert "without a token" in _messages(info.value)


def _messages(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)
    if inner:
        return " ".join(_messages(e) for e in inner)
    return str(exc)
