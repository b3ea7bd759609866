"""`--workers N`: a supervisor process and N worker processes.

    supervisor (trioproxy serve MESH.py --workers N)
    ├─ admin, demo services, merged stats (a `Server` with no listeners)
    └─ worker i: `python -m trioproxy worker MESH.py --index i --control-fd FD`
       └─ its own trio `Server` (no admin), every listener bound with SO_REUSEPORT

Each worker talks to the supervisor over a socketpair, one JSON object a
line. Supervisor → worker: `{"cmd": "reload"}`, `{"cmd": "drain",
"idle_grace": S}` (S > 0 on a takeover), `{"cmd": "stop"}`. Worker →
supervisor: a stats snapshot every second and after each command
(`{"stats": ..., "reload": true|false|null}`).

The supervisor merges the latest snapshot of every worker into its own
stats store: counters summed, gauges summed, histograms merged (buckets,
count and sum added; min of the minima, max of the maxima). Names under
`server.` are the supervisor's own (reloads, restarts, concurrency, uptime)
except `server.connection_task_errors`, which is summed.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trioproxy.config import Mesh, SocketAddress
from trioproxy.observe.stats import StatsStore
from trioproxy.runtime.server import Server

__all__ = ["Supervisor", "run_worker"]

log = logging.getLogger("trioproxy")

# The supervisor gives up when this many workers die within START_WINDOW
# seconds of its start (a mesh that cannot serve: a port in use, ...).
START_DEATHS = 3
START_WINDOW = 10.0
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
_SNAPSHOT_INTERVAL = 1.0
_OWN = ("server.",)
_SUMMED_SERVER = {"server.connection_task_errors"}


def snapshot(stats: StatsStore) -> dict[str, Any]:
    return {
        "counters": {n: c.value for n, c in stats.counters.items() if c.used},
        "gauges": {n: g.value for n, g in stats.gauges.items()},
        "histograms": {
            n: [h.buckets, h.count, h.sum, h.min if h.count else None, h.max]
            for n, h in stats.histograms.items()
            if h.used
        },
    }


def _mine(name: str) -> bool:
    return name.startswith(_OWN) and name not in _SUMMED_SERVER


def merge_into(store: StatsStore, snaps: list[dict[str, Any]]) -> None:
    """Set `store`'s worker stats to the merge of `snaps` (see the module doc)."""
    counters: dict[str, int] = {}
    gauges: dict[str, int] = {}
    hists: dict[str, list[Any]] = {}
    for s in snaps:
        for n, v in s["counters"].items():
            counters[n] = counters.get(n, 0) + v
        for n, v in s["gauges"].items():
            gauges[n] = gauges.get(n, 0) + v
        for n, (buckets, count, total, lo, hi) in s["histograms"].items():
            h = hists.get(n)
            if h is None:
                hists[n] = [list(buckets), count, total, lo, hi]
            else:
                h[0] = [a + b for a, b in zip(h[0], buckets, strict=True)]
                h[1] += count
                h[2] += total
                if lo is not None:
                    h[3] = lo if h[3] is None else min(h[3], lo)
                h[4] = max(h[4], hi)
    for n, v in counters.items():
        if not _mine(n):
            c = store.counter(n)
            c.value = v
            c.used = True
    for n, v in gauges.items():
        if not _mine(n):
            store.gauge(n).value = v
    for n, (buckets, count, total, lo, hi) in hists.items():
        hist = store.histogram(n)
        hist.buckets = buckets
        hist.count = count
        hist.sum = total
        hist.min = lo if lo is not None else float("inf")
        hist.max = hi
        hist.used = True


# ---------------------------------------------------------------------- worker


async def _worker_main(server: Server, control: trio.SocketStream) -> None:
    lock = trio.Lock()

    async def send(extra: dict[str, Any]) -> None:
        line = json.dumps({"stats": snapshot(server.stats), **extra}) + "\n"
        async with lock:
            try:
                await control.send_all(line.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                server.shutdown()  # the supervisor is gone

    async def commands() -> None:
        buf = b""
        while True:
            try:
                data = await control.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                log.info("supervisor gone; stopping")
                server.shutdown()
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                cmd = msg["cmd"]
                if cmd == "reload":
                    diff = await server.reload_from_source()
                    await send({"reload": diff is not None})
                elif cmd == "drain":
                    grace = float(msg.get("idle_grace", 0.0))
                    server.shutdown(graceful=True, idle_grace=grace)
                elif cmd == "stop":
                    server.shutdown()
                elif cmd == "reopen_logs":
                    server.reopen_access_logs()
                elif cmd == "stats":
                    await send({})

    async def snapshots() -> None:
        # The first snapshot says "listeners bound" (the supervisor is ready
        # once every worker has sent one).
        while server.state != "LIVE":
            await trio.sleep(0.01)
        while True:
            await send({})
            await trio.sleep(_SNAPSHOT_INTERVAL)

    async def on_sigterm() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                server.shutdown(graceful=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commands)
        nursery.start_soon(snapshots)
        nursery.start_soon(on_sigterm)
        await server.run()
        nursery.cancel_scope.cancel()


def run_worker(
    mesh: Mesh,
    loader: Callable[[], Mesh],
    control_fd: int,
    options: dict[str, Any],
    drain_time: float,
) -> None:
    """A worker process: serve `mesh` (no admin, no demo services) until the
    supervisor says stop or drain, or goes away."""
    # Signals are the supervisor's business: a Ctrl-C at the terminal, or a
    # SIGHUP/SIGTERM sent to the process group (`timeout`, systemd), reaches
    # every worker too. SIGINT and SIGHUP are ignored (the supervisor drains
    # or reloads the workers); SIGTERM drains this worker (see _worker_main).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the supervisor fans it out
    mesh = _worker_mesh(mesh)
    server = Server(mesh, options=options, drain_time=drain_time)
    server.mesh_loader = lambda: _worker_mesh(loader())

    async def main() -> None:
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=control_fd))
        await _worker_main(server, trio.SocketStream(sock))

    trio.run(main)


def _worker_mesh(mesh: Mesh) -> Mesh:
    return attrs.evolve(mesh, admin=None, demo_services=())


# ------------------------------------------------------------------ supervisor


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: trio.Process | None = None
        self.control: trio.SocketStream | None = None
        self.snapshot: dict[str, Any] | None = None
        self.pid = 0
        self.deaths = 0
        self.reloaded = trio.Event()
        self.last_reload: bool | None = None
        # One message at a time on the control socket (two tasks sending at
        # once would otherwise lose one to BusyResourceError).
        self.send_lock = trio.Lock()


class Supervisor(Server):
    """The supervisor: admin, demo services and merged stats, as a `Server`
    with no listeners and no clusters; reloads and drains go to the workers."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        mesh_path: str,
        workers: int,
        worker_args: list[str],
        admin_address: SocketAddress | None,
        options: dict[str, Any],
        drain_time: float,
    ) -> None:
        super().__init__(
            attrs.evolve(mesh, listeners=(), clusters=()),
            admin_address=admin_address,
            options=options,
            drain_time=drain_time,
        )
        self.full_mesh = mesh
        self.mesh_path = mesh_path
        self.worker_args = worker_args
        self.workers = [Worker(i) for i in range(workers)]
        self.worker_restarts = self.stats.counter("server.worker_restarts")
        self.started_at = time.monotonic()
        self.failed: str | None = None
        self._stopping = False

    async def refresh_stats(self, timeout: float = 1.0) -> None:
        """Ask every worker for a snapshot now and merge (admin reads are fresh)."""
        before = {w.index: w.snapshot for w in self.workers}
        for w in self.workers:
            await self._send(w, {"cmd": "stats"})
        with trio.move_on_after(timeout):
            while any(
                w.control is not None and w.snapshot is before[w.index] for w in self.workers
            ):
                await trio.sleep(0.005)
        merge_into(self.stats, [w.snapshot for w in self.workers if w.snapshot])

    # LIVE (admin /ready 200) only once every worker has bound its listeners.
    @property
    def state(self) -> str:
        if self._state == "LIVE" and any(w.snapshot is None for w in self.workers):
            return "INITIALIZING"
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value

    # Admin `/stats?per_worker`.
    def per_worker_stats(self) -> dict[str, dict[str, Any]]:
        return {f"worker_{w.index}": w.snapshot or {} for w in self.workers}

    def downstream_connections(self) -> int:
        return sum(
            v
            for w in self.workers
            for n, v in (w.snapshot or {}).get("gauges", {}).items()
            if n.startswith("listener.") and n.endswith(".downstream_cx_active")
        )

    async def reload_from_source(self) -> Any:
        """Validate the mesh here, then have every worker reload it."""
        assert self.mesh_loader is not None
        try:
            mesh = self.mesh_loader()
        except Exception as exc:
            self.reload_failed.inc()
            log.error("reload failed; the old config keeps serving:\n%s", exc)
            return None
        from trioproxy.config.diff import diff_meshes

        diff = diff_meshes(self.full_mesh, mesh)
        ok = True
        for w in self.workers:
            w.reloaded = trio.Event()
            w.last_reload = None
            await self._send(w, {"cmd": "reload"})
        with trio.move_on_after(30):
            for w in self.workers:
                await w.reloaded.wait()
                ok = ok and bool(w.last_reload)
        if not ok or any(w.last_reload is None for w in self.workers):
            self.reload_failed.inc()
            log.error("reload failed in a worker")
            return None
        self.full_mesh = mesh
        self.reload_success.inc()
        log.info("reloaded in %d workers: %s", len(self.workers), "; ".join(diff.lines))
        return diff

    def reopen_access_logs(self) -> None:
        super().reopen_access_logs()
        for w in self.workers:
            self._send_nowait(w, {"cmd": "reopen_logs"})

    def drain_listeners(self, *, idle_grace: float = 0.0) -> None:
        super().drain_listeners(idle_grace=idle_grace)
        for w in self.workers:
            self._send_nowait(w, {"cmd": "drain", "idle_grace": idle_grace})

    def shutdown(self, *, graceful: bool = False, idle_grace: float = 0.0) -> None:
        self._stopping = True
        if not graceful:
            for w in self.workers:
                self._send_nowait(w, {"cmd": "stop"})
        super().shutdown(graceful=graceful, idle_grace=idle_grace)

    def _check_drained(self) -> None:
        if self.draining and all(w.proc is None for w in self.workers):
            self._drained.set()

    async def _send(self, w: Worker, msg: dict[str, Any]) -> None:
        if w.control is None:
            return
        try:
            async with w.send_lock:
                await w.control.send_all((json.dumps(msg) + "\n").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _send_nowait(self, w: Worker, msg: dict[str, Any]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._send, w, msg)

    async def run_workers(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            for w in self.workers:
                nursery.start_soon(self._keep_running, w)
            nursery.start_soon(self._merge_loop)
            task_status.started()

    async def _merge_loop(self) -> None:
        while True:
            merge_into(self.stats, [w.snapshot for w in self.workers if w.snapshot])
            await trio.sleep(_SNAPSHOT_INTERVAL / 2)

    async def _keep_running(self, w: Worker) -> None:
        backoff = _BACKOFF_MIN
        while True:
            started = time.monotonic()
            await self._run_one(w)
            if self._stopping or self.draining:
                self._check_drained()
                return
            if time.monotonic() - started > START_WINDOW:
                backoff = _BACKOFF_MIN
            deaths_at_start = sum(x.deaths for x in self.workers)  # deaths counted in _run_one
            if (
                time.monotonic() - self.started_at < START_WINDOW
                and deaths_at_start >= START_DEATHS
            ):
                self.failed = f"workers keep dying at start ({deaths_at_start} deaths)"
                log.error("%s; giving up", self.failed)
                self._stopping = True
                self._shutdown.set()
                return
            log.warning("worker %d died; restarting in %.1fs", w.index, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            self.worker_restarts.inc()

    async def _run_one(self, w: Worker) -> None:
        mine, theirs = socket.socketpair()
        try:
            cmd = [
                sys.executable,
                "-m",
                "trioproxy",
                "worker",
                self.mesh_path,
                "--index",
                str(w.index),
                "--control-fd",
                str(theirs.fileno()),
                *self.worker_args,
            ]
            # Their own process group: signals sent to the supervisor's group
            # (Ctrl-C, `timeout`, `kill -- -PGID`) reach the supervisor only,
            # which drains or reloads the workers; none can catch a worker
            # still starting, before it could handle them.
            proc = await trio.lowlevel.open_process(
                cmd, pass_fds=(theirs.fileno(),), process_group=0
            )
        finally:
            theirs.close()
        w.proc = proc
        w.pid = proc.pid
        w.control = trio.SocketStream(trio.socket.from_stdlib_socket(mine))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_worker, w)
                try:
                    await proc.wait()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await trio.aclose_forcefully(w.control)
            w.control = None
            w.proc = None
            if not (self._stopping or self.draining):
                w.deaths += 1
                log.warning("worker %d (pid %d) exited with %s", w.index, w.pid, proc.returncode)

    async def _read_worker(self, w: Worker) -> None:
        assert w.control is not None
        buf = b""
        while True:
            try:
                data = await w.control.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the worker died; _run_one sees it exit
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                w.snapshot = msg["stats"]
                if "reload" in msg:
                    w.last_reload = msg["reload"]
                    w.reloaded.set()


async def supervise(sup: Supervisor) -> int:
    """Run the supervisor until stopped; the exit code."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(
            signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1
        ) as signals:

            async def on_signal() -> None:
                draining = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        log.info("SIGHUP received; reloading the workers")
                        nursery.start_soon(sup.reload_from_source)
                        continue
                    if signum == signal.SIGUSR1:
                        # Log rotation, as Envoy: every worker reopens its files.
                        log.info("SIGUSR1 received; reopening access logs")
                        sup.reopen_access_logs()
                        continue
                    if draining:
                        log.info("%s received again; stopping now", name)
                        sup.shutdown()
                        continue
                    log.info("%s received; draining the workers", name)
                    draining = True
                    sup.shutdown(graceful=True)

            nursery.start_soon(on_signal)

            async def workers_when_live() -> None:
                while sup._nursery is None:
                    await trio.sleep(0.01)
                await sup._nursery.start(sup.run_workers)

            nursery.start_soon(workers_when_live)
            await sup.run()
            nursery.cancel_scope.cancel()
    return 1 if sup.failed else 0
