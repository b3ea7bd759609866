"""Shared fixtures: real upstreams and a running proxy, all on 127.0.0.1.

`start_proxy(nursery, mesh)` runs a `Server` inside the test's own trio
loop (so `MockClock` tests drive the proxy's timeouts too) and returns it
once every listener is bound. Listeners are declared on port 0 and tests ask
the server for the real port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx
import pytest
import trio
from trio.testing import MockClock

from tests.upstream import Upstream
from trioproxy.config import (
    AccessLog,
    Admin,
    Cluster,
    Endpoint,
    FilterChain,
    HttpConnectionManager,
    Listener,
    Mesh,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    SocketAddress,
    VirtualHost,
)
from trioproxy.runtime.server import Server

IN_CI = os.environ.get("CI") == "true"


def poll_until(
    cond: Callable[[], object],
    what: str,
    timeout: float = 20,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    output: Callable[[], str] | None = None,
) -> None:
    """Wait for a condition on another process (a subprocess's file, port or
    admin stat), which gives nothing to await: poll it, fail after `timeout`,
    or at once if `proc` exits first. `output()` (e.g. its stderr) goes into
    the failure message."""
    deadline = time.monotonic() + timeout
    while not cond():
        more = f":\n{output()}" if output else ""
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before {what}{more}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}{more}")
        time.sleep(0.05)


async def wait_until(
    check: Callable[[], Awaitable[object]], what: str, timeout: float = 5.0
) -> None:
    """In a trio test: await `check()` every 50 ms until true; fail after
    `timeout` seconds (of the test's clock)."""
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def dead_address() -> str:
    """A 127.0.0.1 address nothing listens on (a port just bound and freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def admin_live(port: int, headers: dict[str, str] | None = None) -> bool:
    """Whether the admin on 127.0.0.1:`port` answers /ready with LIVE."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/ready", headers=headers, timeout=1)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and r.text == "LIVE\n"


def answers(url: str) -> bool:
    """Whether an HTTP GET of `url` gets any answer at all."""
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return False
    return True


def require_tool(name: str) -> str:
    """The path of an external tool; in CI a missing tool fails, elsewhere it skips."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} not installed (CI installs it; apt-get install {name})")
    return path


@pytest.fixture
def autojump_clock() -> MockClock:
    return MockClock(autojump_threshold=0)


def addr(text: str) -> SocketAddress:
    host, _, port = text.rpartition(":")
    return SocketAddress(host=host, port=int(port))


def cluster(name: str, *upstreams: Upstream | str, **kw: object) -> Cluster:
    eps = tuple(Endpoint(address=addr(u if isinstance(u, str) else u.address)) for u in upstreams)
    return Cluster(name=name, endpoints=eps, **kw)  # type: ignore[arg-type]


def simple_mesh(
    routes: Sequence[Route],
    clusters: Sequence[Cluster],
    *,
    vhosts: Sequence[VirtualHost] | None = None,
    access_logs: Sequence[AccessLog] = (),
    admin: bool = False,
    **hcm: object,
) -> Mesh:
    if vhosts is None:
        vhosts = [VirtualHost(name="default", domains=("*",), routes=tuple(routes))]
    manager = HttpConnectionManager(
        stat_prefix="ingress_http",
        route_config=RouteConfig(virtual_hosts=tuple(vhosts)),
        access_logs=tuple(access_logs),
        **hcm,  # type: ignore[arg-type]
    )
    return Mesh(
        listeners=(
            Listener(
                name="ingress",
                address=SocketAddress(host="127.0.0.1", port=0),
                filter_chains=(FilterChain(filters=(manager,)),),
            ),
        ),
        clusters=tuple(clusters),
        admin=Admin(address=SocketAddress(host="127.0.0.1", port=0)) if admin else None,
    )


def route_to(cluster_name: str, prefix: str = "/", **action: object) -> Route:
    return Route(
        name=f"to_{cluster_name}",
        match=RouteMatch(path_kind="prefix", value=prefix),
        action=RouteAction(cluster=cluster_name, **action),  # type: ignore[arg-type]
    )


async def start_upstream(
    nursery: trio.Nursery, name: str = "upstream", network: object = None
) -> Upstream:
    up: Upstream = await nursery.start(Upstream(name).run, network)
    return up


async def start_proxy(nursery: trio.Nursery, mesh: Mesh, network: object = None) -> Server:
    server: Server = await nursery.start(Server(mesh, network=network).run)  # type: ignore[arg-type]
    return server


def proxy_url(server: Server, path: str = "/") -> str:
    a = server.listener_address("ingress")
    return f"http://127.0.0.1:{a.port}{path}"


def counter(server: Server, name: str) -> int:
    return server.stats.counters[name].value


def gauge(server: Server, name: str) -> int:
    return server.stats.gauges[name].value


async def settle(server: Server, prefix: str = "ingress_http") -> None:
    """Wait until no request is active: a client sees its response before the
    proxy's `finally` blocks have counted it."""
    with trio.fail_after(5):
        while gauge(server, f"http.{prefix}.downstream_rq_active"):
            await trio.sleep(0.001)


def grpc_mesh(upstream: Upstream | str, *, timeout: float = 15.0) -> Mesh:
    """A listener routing gRPC requests (`grpc()` match) to `grpc_backend` over HTTP/2."""
    route = Route(
        name="grpc",
        match=RouteMatch(path_kind="prefix", value="/", grpc=True),
        action=RouteAction(cluster="grpc_backend", timeout=timeout),
    )
    return simple_mesh([route], [cluster("grpc_backend", upstream, protocol="http2")])
