"""examples/tls_edge.py: it validates with the CLI, and, run in-process on free
ports (its fixed ports may be busy on a test machine), it serves both sites
by SNI with their own certificates, h2 and http/1.1, and redirects HTTP.
The test CA in examples/certs/ is the one the example ships with."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import attrs
import trio
from trioproxy.dsl import load_mesh

from tests.conftest import require_tool, start_proxy
from trioproxy.config import Mesh, SocketAddress

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tls_edge.py"
CA = ROOT / "examples" / "certs" / "ca.pem"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_free_ports(mesh: Mesh) -> Mesh:
    """Listeners on port 0, no admin, demo services (and their clusters) moved."""
    moved: dict[int, int] = {}
    demos = []
    for d in mesh.demo_services:
        moved[d.address.port] = free_port()
        demos.append(
            attrs.evolve(d, address=SocketAddress(host="127.0.0.1", port=moved[d.address.port]))
        )
    clusters = tuple(
        attrs.evolve(
            c,
            endpoints=tuple(
                attrs.evolve(e, address=attrs.evolve(e.address, port=moved[e.address.port]))
                for e in c.endpoints
            ),
        )
        for c in mesh.clusters
    )
    listeners = tuple(
        attrs.evolve(lis, address=attrs.evolve(lis.address, port=0)) for lis in mesh.listeners
    )
    return attrs.evolve(
        mesh, listeners=listeners, clusters=clusters, demo_services=tuple(demos), admin=None
    )


def test_example_validates() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "trioproxy", "validate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{EXAMPLE}: OK: 2 listeners, 5 routes, 2 clusters\n"


async def test_example_serves_by_sni_and_redirects(nursery: trio.Nursery) -> None:
    curl = require_tool("curl")
    with trio.fail_after(20):
        mesh = load_mesh(str(EXAMPLE))
        assert [lis.address.port for lis in mesh.listeners] == [8443, 8080]
        assert mesh.admin is not None and mesh.admin.address.port == 8001
        server = await start_proxy(nursery, on_free_ports(mesh))
        https = server.listener_address("https").port
        plain = server.listener_address("http").port

        async def run(*args: str) -> str:
            r = await trio.run_process(
                [curl, "-sS", *args], capture_stdout=True, capture_stderr=True
            )
            return r.stdout.decode() + r.stderr.decode()

        for site, service, flag, version in (
            ("a.example.test", "1", "--http2", "HTTP/2"),
            ("b.example.test", "2", "--http1.1", "HTTP/1.1"),
        ):
            out = await run(
                "-v", flag, "--cacert", str(CA),
                "--resolve", f"{site}:{https}:127.0.0.1",
                f"https://{site}:{https}/service/{service}",
            )  # fmt: skip
            assert f"Hello from behind trioproxy (service {service})!" in out
            assert f"CN={site}" in out or f"CN = {site}" in out
            assert f"< {version} 200" in out
        out = await run("-i", f"http://127.0.0.1:{plain}/service/1?q=1")
        assert out.startswith("HTTP/1.1 301")
        assert "location: https://127.0.0.1:8443/service/1?q=1" in out
        stat_name = server.listeners["https"].config.stat_name
        assert server.stats.counters[f"listener.{stat_name}.ssl.handshake"].value == 2
