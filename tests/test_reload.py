"""Hot reload in one process: `diff_meshes`, `Server.reload`, admin
`POST /reload`, `trioproxy diff`, and zero dropped requests under load."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests.conftest import (
    cluster,
    counter,
    poll_until,
    proxy_url,
    route_to,
    simple_mesh,
    start_upstream,
)
from tests.test_cli import REPO, free_ports, front_proxy, serving
from trioproxy.config import Mesh, SocketAddress
from trioproxy.config.diff import diff_meshes
from trioproxy.runtime.server import Server


def _with_listener(mesh: Mesh, name: str) -> Mesh:
    extra = attrs.evolve(
        mesh.listeners[0], name=name, address=SocketAddress(host="127.0.0.1", port=0)
    )
    return attrs.evolve(mesh, listeners=(*mesh.listeners, extra))


def test_diff_meshes_names_what_changes() -> None:
    a = simple_mesh([route_to("a")], [cluster("a", "127.0.0.1:1"), cluster("b", "127.0.0.1:2")])
    assert diff_meshes(a, a).empty
    b = simple_mesh([route_to("b")], [cluster("a", "127.0.0.1:1"), cluster("b", "127.0.0.1:3")])
    d = diff_meshes(a, b)
    assert d.route_listeners == ("ingress",)
    assert d.changed_listeners == () and d.added_listeners == ()
    assert d.changed_clusters == ("b",)
    assert "~ route ingress/default/0: cluster a -> b, name to_a -> to_b" in d.lines
    assert "~ cluster b: endpoints [127.0.0.1:2] -> [127.0.0.1:3]" in d.lines
    c = _with_listener(a, "admin2")
    d = diff_meshes(a, c)
    assert d.added_listeners == ("admin2",) and d.lines[0].startswith("+ listener admin2")
    d = diff_meshes(c, attrs.evolve(a, clusters=a.clusters[:1]))
    assert d.removed_listeners == ("admin2",) and d.removed_clusters == ("b",)
    # A change outside the routes makes the listener "changed" (rebound).
    e = attrs.evolve(a, listeners=(attrs.evolve(a.listeners[0], max_connections=5),))
    assert diff_meshes(a, e).changed_listeners == ("ingress",)


async def _get(client: httpx.AsyncClient, url: str) -> str:
    r = await client.get(url)
    assert r.status_code == 200
    return r.headers["x-upstream"]


async def test_reload_swaps_routes_clusters_and_listeners() -> None:
    async with trio.open_nursery() as n:
        up_a = await start_upstream(n, "a")
        up_b = await start_upstream(n, "b")
        clusters = [cluster("a", up_a), cluster("b", up_b)]
        mesh_a = simple_mesh([route_to("a")], clusters)
        server: Server = await n.start(Server(mesh_a).run)
        url = proxy_url(server)
        async with httpx.AsyncClient() as client:
            assert await _get(client, url) == "a"
            # Route change: the same keep-alive connection sees it at once.
            diff = await server.reload(simple_mesh([route_to("b")], clusters))
            assert diff is not None and diff.route_listeners == ("ingress",)
            assert await _get(client, url) == "b"
            assert up_a.connections == 1  # the connection to a's pool lived on
            # Cluster change: "a" now points at b's server; a slow request in
            # flight on the old pool finishes there.
            up_a.delay_all = 0.5
            done: list[str] = []
            await server.reload(mesh_a)

            async def slow() -> None:
                async with httpx.AsyncClient() as c2:
                    done.append(await _get(c2, url))

            n.start_soon(slow)
            await trio.sleep(0.2)
            await server.reload(simple_mesh([route_to("a")], [cluster("a", up_b), clusters[1]]))
            assert await _get(client, url) == "b"
            with trio.fail_after(5):
                while not done:
                    await trio.sleep(0.01)
            assert done == ["a"]
            assert counter(server, "cluster_manager.cluster_modified") == 1
            # New listener binds; removing it stops it accepting.
            mesh2 = _with_listener(mesh_a, "extra")
            assert (await server.reload(mesh2)) is not None
            extra = server.listener_address("extra").port
            assert await _get(client, f"http://127.0.0.1:{extra}/") == "a"
            await server.reload(mesh_a)
            assert "extra" not in server.listeners
            await trio.sleep(0.05)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient() as c3:
                    await c3.get(f"http://127.0.0.1:{extra}/")
            assert counter(server, "server.reload_success") == 5
        n.cancel_scope.cancel()


async def test_invalid_mesh_keeps_old_config(tmp_path: Path) -> None:
    async with trio.open_nursery() as n:
        up = await start_upstream(n, "a")
        server: Server = await n.start(Server(simple_mesh([route_to("a")], [cluster("a", up)])).run)

        def broken() -> Mesh:
            from trioproxy.dsl import load_mesh

            bad = tmp_path / "bad.py"
            bad.write_text("import trioproxy.dsl as d\nMESH = d.mesh(\n")
            return load_mesh(bad)

        server.mesh_loader = broken
        assert await server.reload_from_source() is None
        assert counter(server, "server.reload_failed") == 1
        async with httpx.AsyncClient() as client:
            assert await _get(client, proxy_url(server)) == "a"
        n.cancel_scope.cancel()


def test_cli_diff(tmp_path: Path) -> None:
    body = """\
        from trioproxy.dsl import cluster, listener, mesh, prefix
        a = cluster("a", "127.0.0.1:8001")
        b = cluster("b", "127.0.0.1:{port}")
        MESH = mesh(
            listener("ingress", "127.0.0.1:0")
            .route(prefix("/a"), a)
            .route(prefix("/b"), b)
            .route(prefix("/"), {target})
        )
    """
    old, new = tmp_path / "old.py", tmp_path / "new.py"
    old.write_text(textwrap.dedent(body.format(target="a", port=8002)))
    new.write_text(textwrap.dedent(body.format(target="b", port=8003)))
    out = subprocess.run(
        [sys.executable, "-m", "trioproxy", "diff", str(old), str(new)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "/2: cluster a -> b" in out.stdout, out.stdout
    assert "~ cluster b: endpoints [127.0.0.1:8002] -> [127.0.0.1:8003]" in out.stdout


def _stat(admin: int, name: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{admin}/stats?filter=^{name}$", timeout=5).text
    return int(text.split(": ", 1)[1]) if ": " in text else 0


def _wait_stat(admin: int, name: str, value: int) -> None:
    poll_until(lambda: _stat(admin, name) == value, f"{name} to reach {value}", timeout=15)


def test_serve_reloads_on_file_change_sighup_and_post(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    url = f"http://127.0.0.1:{port}/service/1"
    with serving(tmp_path, str(mesh)) as proxy:
        proxy.wait_ready(admin)
        assert "(service 1)" in httpx.get(url, timeout=5).text
        # An edit of the file: the watcher reloads within about a second.
        text = mesh.read_text()
        mesh.write_text(
            text.replace('prefix("/service/1"), service1', 'prefix("/service/1"), service2')
        )
        _wait_stat(admin, "server.reload_success", 1)
        assert "(service 2)" in httpx.get(url, timeout=5).text
        # SIGHUP and POST /reload (no change: still a successful reload).
        proxy.proc.send_signal(signal.SIGHUP)
        _wait_stat(admin, "server.reload_success", 2)
        r = httpx.post(f"http://127.0.0.1:{admin}/reload", timeout=10)
        assert r.status_code == 200 and r.text == "OK\n"
        assert _stat(admin, "server.reload_success") == 3
        # A broken mesh: every error logged with file:line; the old config serves.
        mesh.write_text(text.replace('cluster("service2"', 'cluster("service2", lb="nope"'))
        _wait_stat(admin, "server.reload_failed", 1)
        r = httpx.post(f"http://127.0.0.1:{admin}/reload", timeout=10)
        assert r.status_code == 400
        assert "(service 2)" in httpx.get(url, timeout=5).text
        assert proxy.stop(signal.SIGTERM) == 0
        assert f"{mesh}:" in proxy.stderr and "reload failed" in proxy.stderr
        assert "Traceback" not in proxy.stderr
