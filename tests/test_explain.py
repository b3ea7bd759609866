"""Explain a request: the pure function, admin `GET /explain` (JSON) and
`trioproxy explain MESH.py URL` (text)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import trio

from tests.conftest import start_proxy
from trioproxy.config import Mesh
from trioproxy.http.explain import explain, to_text

REPO = Path(__file__).resolve().parent.parent

MESH_SRC = """
from trioproxy.dsl import (
    admin, cluster, direct_response, http, listener, mesh, path, prefix, redirect, vhost,
)

api = cluster("api", "127.0.0.1:9001")
web = cluster("web", "127.0.0.1:9003")
MESH = mesh(
    listener("ingress", "127.0.0.1:0").chain(
        http(stat_prefix="edge")
        .health_check("/healthz")
        .vhost(
            vhost("api", "api.example.com")
            .route(path("/health"), direct_response(200, "ok"))
            .route(prefix("/v2").header("x-version", exact="2"), api)
            .route(prefix("/v2").query("debug", exact="1"), web)
            .route(prefix("/old"), redirect(path="/new"))
            .route(prefix("/w").header(":method", exact="POST"), api)
        )
        .vhost(vhost("web", "*").route(prefix("/"), web))
    ),
    admin("127.0.0.1:0"),
)
"""


def load() -> Mesh:
    ns: dict[str, object] = {}
    exec(compile(MESH_SRC, "mesh.py", "exec"), ns)
    return ns["MESH"].compile()  # type: ignore[attr-defined, no-any-return]


def test_explains_routes_tried_and_the_match() -> None:
    r = explain(load(), host="api.example.com:8000", path="/v2/users?debug=1")
    assert r["listener"] == "ingress" and r["filter_chain"] == 0
    assert len(r["http_filters"]) == 2 and r["http_filters"][-1] == "router"
    assert r["virtual_host"] == "api"
    assert [t["reason"] for t in r["tried"]] == [
        "path '/v2/users?debug=1' does not match path '/health'",
        "header 'x-version' does not match (exact '2')",
    ]
    assert r["action"] == {"kind": "cluster", "cluster": "web"}
    r = explain(load(), host="api.example.com", path="/v2/x", headers=[("X-Version", "2")])
    assert r["action"] == {"kind": "cluster", "cluster": "api"} and len(r["tried"]) == 1


def test_explains_redirects_direct_responses_and_misses() -> None:
    m = load()
    assert explain(m, host="api.example.com", path="/old/a")["action"] == {
        "kind": "redirect",
        "code": 301,
    }
    assert explain(m, host="api.example.com", path="/health")["action"] == {
        "kind": "direct_response",
        "status": 200,
    }
    miss = explain(m, host="api.example.com", path="/v2/q")
    assert miss["error"] == "no route matches (404, flag NR)" and "route" not in miss
    assert [t["route"] for t in miss["tried"]] == ["api/0", "api/1", "api/2", "api/3", "api/4"]
    assert "query parameter 'debug' does not match" in to_text(miss)
    other = explain(m, host="anything.test", path="/z")
    assert (other["virtual_host"], other["action"]["cluster"]) == ("web", "web")
    assert explain(m, host="h", listener="nope")["error"] == "no listener named 'nope'"


async def test_admin_explain(nursery: trio.Nursery) -> None:
    server = await start_proxy(nursery, load())
    bound = server.admin_bound
    assert bound is not None
    base = f"http://{bound.host}:{bound.port}/explain"
    async with httpx.AsyncClient() as c:
        r = await c.get(
            base, params={"host": "api.example.com", "path": "/v2/a", "header": "x-version:2"}
        )
        assert r.status_code == 200
        body = r.json()
        assert (body["virtual_host"], body["route"], body["action"]["cluster"]) == (
            "api",
            "api/1",
            "api",
        )
        assert body["tried"][0]["route"] == "api/0"
        q = {"host": "api.example.com", "path": "/w", "method": "GET"}
        r = await c.get(base, params=q)
        assert r.json()["tried"][-1] == {
            "route": "api/4",
            "reason": "header ':method' does not match (exact 'POST')",
        }
        assert r.json()["error"] == "no route matches (404, flag NR)"
        q["method"] = "POST"
        assert (await c.get(base, params=q)).json()["route"] == "api/4"
        assert (await c.get(base)).status_code == 400
        assert (await c.get(base, params={"host": "h", "header": "novalue"})).status_code == 400


def test_cli_explain(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.py"
    mesh_file.write_text(textwrap.dedent(MESH_SRC))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trioproxy", "explain", str(mesh_file), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    done = run("http://api.example.com/v2/users", "-X", "GET", "-H", "x-version: 2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "request: GET api.example.com/v2/users",
        "  header x-version: 2",
        "listener: ingress (filter chain #0)",
        f"http filters: {', '.join(explain(load(), host='h')['http_filters'])}",
        "virtual host: api",
        "  route api/0: no: path '/v2/users' does not match path '/health'",
        "route: api/1 -> cluster api",
    ]
    miss = run("http://api.example.com/nothing")
    assert miss.returncode == 1
    assert "no match: no route matches (404, flag NR)" in miss.stdout
    assert run("http://h/", "-H", "bad").returncode == 2
