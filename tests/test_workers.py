"""`trioproxy serve --workers N`: a supervisor and N worker processes.

Subprocess tests, each bounded: requests spread over 2 workers, a killed
worker is restarted and counted, SIGTERM drains all and exits 0, POST
/reload reaches every worker, workers dying at start make serve fail.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import poll_until
from tests.test_cli import free_ports, front_proxy, serving, write_mesh


def _stats(admin: int, query: str = "") -> dict[str, str]:
    text = httpx.get(f"http://127.0.0.1:{admin}/stats?{query}", timeout=10).text
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _worker_pids(supervisor: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if ppid == supervisor and b"worker" in cmd:
                pids.append(int(entry))
    return pids


def test_workers_spread_restart_reload_and_drain(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    with serving(tmp_path, str(mesh), "--workers", "2") as proxy:
        proxy.wait_ready(admin)
        poll_until(lambda: len(_worker_pids(proxy.proc.pid)) == 2, "2 workers")
        info = httpx.get(f"http://127.0.0.1:{admin}/server_info", timeout=10).json()
        assert info["command_line_options"]["concurrency"] == 2
        # New connections spread over both workers (SO_REUSEPORT).
        name = f"listener.127.0.0.1_{port}.downstream_cx_total"

        def both_served() -> bool:
            for _ in range(10):
                r = httpx.get(f"http://127.0.0.1:{port}/service/1", timeout=10)
                assert r.status_code == 200
            per = _stats(admin, "per_worker")
            return all(int(per.get(f"worker_{i}.{name}", "0")) > 0 for i in (0, 1))

        poll_until(both_served, "both workers to serve", timeout=30)
        per = _stats(admin, "per_worker")
        merged = _stats(admin)
        assert int(merged[name]) == int(per[f"worker_0.{name}"]) + int(per[f"worker_1.{name}"])
        # POST /reload reaches every worker.
        text = mesh.read_text()
        mesh.write_text(
            text.replace('prefix("/service/1"), service1', 'prefix("/service/1"), service2')
        )
        r = httpx.post(f"http://127.0.0.1:{admin}/reload", timeout=30)
        assert r.status_code == 200, r.text
        assert "/0: cluster service1 -> service2" in r.text
        for _ in range(10):
            body = httpx.get(f"http://127.0.0.1:{port}/service/1", timeout=10).text
            assert "(service 2)" in body
        # A killed worker is restarted and counted.
        victim = _worker_pids(proxy.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        poll_until(lambda: _stats(admin).get("server.worker_restarts") == "1", "a restart")
        poll_until(lambda: len(_worker_pids(proxy.proc.pid)) == 2, "2 workers again")
        assert victim not in _worker_pids(proxy.proc.pid)
        assert httpx.get(f"http://127.0.0.1:{port}/service/2", timeout=10).status_code == 200
        # SIGTERM drains every worker; the supervisor exits 0.
        pids = _worker_pids(proxy.proc.pid)
        assert proxy.stop(signal.SIGTERM) == 0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}")  # exited and reaped
        assert "Traceback" not in proxy.stderr


def test_workers_dying_at_start_fail_serve(tmp_path: Path) -> None:
    [port, admin] = free_ports(2)
    mesh = write_mesh(
        tmp_path,
        f"""
        from trioproxy.dsl import admin, cluster, listener, mesh, prefix

        MESH = mesh(
            listener("ingress", "203.0.113.7:{port}")
            .route(prefix("/"), cluster("c", "127.0.0.1:1")),
            admin("127.0.0.1:{admin}"),
        )
        """,
    )
    with serving(tmp_path, str(mesh), "--workers", "2") as proxy:
        try:
            code = proxy.proc.wait(timeout=30)
        except Exception:
            pytest.fail(f"serve kept running:\n{proxy.stderr}")
        assert code == 1
        assert "keep dying at start" in proxy.stderr


async def test_reload_through_workers_drops_nothing(tmp_path: Path) -> None:
    """Keep-alive load (HTTP/1.1 and HTTP/2) on `--workers 2` while the mesh
    file flips a route 10 times via POST /reload: 0 failures. (Each worker
    swaps on its own, so which target a straddling request gets is only
    checked in one process, by tests/test_reload_zero_drop.py.)"""
    import trio

    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    text = mesh.read_text()
    flipped = text.replace('prefix("/service/1"), service1', 'prefix("/service/1"), service2')
    url = f"http://127.0.0.1:{port}/service/1"
    with serving(tmp_path, str(mesh), "--workers", "2", "--no-watch") as proxy:
        proxy.wait_ready(admin)
        ok = 0
        failures: list[str] = []
        seen: set[str] = set()
        stop = trio.Event()

        async def load(client: httpx.AsyncClient) -> None:
            nonlocal ok
            while not stop.is_set():
                try:
                    r = await client.get(url)
                except httpx.TransportError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"status {r.status_code}")
                else:
                    ok += 1
                    seen.add("2" if "(service 2)" in r.text else "1")

        async with (
            httpx.AsyncClient() as h1,
            httpx.AsyncClient(http1=False, http2=True) as h2,
            httpx.AsyncClient(timeout=30) as adm,
            trio.open_nursery() as n,
        ):
            for c in (h1, h1, h2, h2):
                n.start_soon(load, c)
            for i in range(10):
                mesh.write_text(flipped if i % 2 == 0 else text)
                r = await adm.post(f"http://127.0.0.1:{admin}/reload")
                assert r.status_code == 200, r.text
                await trio.sleep(0.1)
            stop.set()
        print(f"\nworkers zero-drop: {ok} requests, 10 reloads, {len(failures)} failures")
        assert failures == []
        assert seen == {"1", "2"}
        assert proxy.stop(signal.SIGTERM) == 0
