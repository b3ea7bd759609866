"""`trioproxy serve | validate | show`: the command line.

This module loads mesh files through the DSL and hands the compiled graph to
the runtime; it is the only place (with tests) where the two meet.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import queue
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from trioproxy import __version__
from trioproxy.config import Mesh, SocketAddress

if TYPE_CHECKING:
    from trioproxy.runtime.server import Server

__all__ = ["main"]

log = logging.getLogger("trioproxy")

_EPILOG_SERVE = """\
examples:
  trioproxy serve examples/front_proxy.py
  trioproxy serve mesh.py --admin 127.0.0.1:9901 --log-level debug

Ctrl-C or SIGTERM stops the server. The mesh file is a Python module that
defines MESH (or a build() function) with the trioproxy.dsl builders.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trioproxy",
        description="An Envoy-class L4/L7 proxy on Trio, configured in typed Python.",
    )
    p.add_argument("--version", action="version", version=f"trioproxy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "serve",
        help="run the proxy for a mesh file",
        description="Compile MESH.py, then serve its listeners until stopped.",
        epilog=_EPILOG_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("mesh", metavar="MESH.py", help="the mesh file")
    s.add_argument(
        "--admin", metavar="ADDR", help="admin address, e.g. 127.0.0.1:9901 (overrides the mesh)"
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["trace", "debug", "info", "warning", "warn", "error", "critical", "off"],
        help="application log level (default: info)",
    )
    s.add_argument(
        "--log-path", metavar="PATH", help="write the application log here instead of stderr"
    )
    s.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes, each binding every listener with SO_REUSEPORT, under a "
        "supervisor that owns admin (default: the number of CPUs); 1 runs a single "
        "process with no supervisor",
    )
    s.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload when the mesh file (or a module it imports from its "
        "directory) changes; SIGHUP and admin POST /reload still reload",
    )
    s.add_argument(
        "--drain-time-s",
        type=float,
        default=600.0,
        metavar="S",
        help="on SIGTERM/SIGINT, wait up to S seconds for open connections to finish "
        "(default: 600, as Envoy); a second signal stops at once",
    )
    s.add_argument(
        "--takeover",
        nargs="?",
        const="",
        metavar="ADDR",
        help="hot restart: bind every listener beside the running trioproxy whose admin is "
        "at ADDR (default: this mesh's admin address) with SO_REUSEPORT, then tell it to "
        "hand over (admin POST /takeover: it drains and exits) and take its admin address; "
        "with nothing running there, serve normally",
    )
    s.add_argument(
        "--takeover-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="with --takeover, how long to wait for the old process to free the admin "
        "address (default: 30)",
    )

    v = sub.add_parser(
        "validate",
        help="check a mesh file and report every error",
        description="Compile MESH.py without binding anything. Exit 0 with a summary, "
        "or 1 with every error as file:line: message.",
    )
    v.add_argument("mesh", metavar="MESH.py")

    w = sub.add_parser(
        "worker",
        help="(internal) one worker process of `serve --workers N`",
        description="Started by the supervisor of `trioproxy serve --workers N`; not for "
        "direct use.",
    )
    w.add_argument("mesh", metavar="MESH.py")
    w.add_argument("--index", type=int, required=True)
    w.add_argument("--control-fd", type=int, required=True)
    w.add_argument("--drain-time-s", type=float, default=600.0)
    w.add_argument("--log-level", default="info")
    w.add_argument("--log-path")

    d = sub.add_parser(
        "diff",
        help="print what reloading OLD.py to NEW.py would change",
        description="Compile both mesh files and print, one line each, the listeners, "
        "clusters and routes a hot reload from OLD to NEW would add (+), remove (-) "
        "or change (~).",
    )
    d.add_argument("old", metavar="OLD.py")
    d.add_argument("new", metavar="NEW.py")

    sh = sub.add_parser(
        "show",
        help="print the compiled config graph",
        description="Print the compiled graph of MESH.py as a tree, or as JSON with --json.",
    )
    sh.add_argument("mesh", metavar="MESH.py")
    sh.add_argument("--json", action="store_true", help="print JSON for tools")

    ex = sub.add_parser(
        "explain",
        help="say which listener, route and cluster a request would take",
        description="Explain how MESH.py would route URL: listener, filter chain, HTTP "
        "filters, virtual host, route and cluster (or redirect / direct response), and "
        "why each route before the match did not match. Exit 0 on a match, 1 if none.",
    )
    ex.add_argument("mesh", metavar="MESH.py")
    ex.add_argument("url", metavar="URL", help="e.g. http://api.example.com/v1/users?id=1")
    ex.add_argument("-X", dest="method", default="GET", help="request method (default GET)")
    ex.add_argument(
        "-H", dest="headers", action="append", default=[], metavar="'K: V'", help="a header"
    )
    ex.add_argument("--listener", help="the listener's name (default: the first HTTP one)")
    ex.add_argument("--json", action="store_true", help="print JSON for tools")
    return p


def _explain(args: argparse.Namespace) -> int:
    import urllib.parse

    from trioproxy.http.explain import explain, to_text

    mesh = _load(args.mesh)
    if mesh is None:
        return 1
    url = urllib.parse.urlsplit(args.url if "//" in args.url else f"http://{args.url}")
    headers = []
    for h in args.headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"trioproxy: bad -H {h!r} (want 'name: value')", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    result = explain(
        mesh,
        host=url.netloc,
        path=path,
        method=args.method,
        headers=headers,
        listener=args.listener,
    )
    print(json.dumps(result, indent=2) if args.json else to_text(result), end="")
    if args.json:
        print()
    return 0 if "route" in result else 1


def _load(path: str) -> Mesh | None:
    from trioproxy.dsl import MeshError, load_mesh

    try:
        return load_mesh(path)
    except MeshError as exc:
        n = len(exc.issues)
        print(f"{path}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return None


def _summary(mesh: Mesh) -> str:
    routes = sum(
        len(vh.routes)
        for lc in mesh.listeners
        for chain in lc.filter_chains
        for f in chain.filters
        for vh in getattr(getattr(f, "route_config", None), "virtual_hosts", ())
    )
    return (
        f"{len(mesh.listeners)} listener{'s' if len(mesh.listeners) != 1 else ''}, "
        f"{routes} route{'s' if routes != 1 else ''}, "
        f"{len(mesh.clusters)} cluster{'s' if len(mesh.clusters) != 1 else ''}"
    )


def _parse_addr(text: str) -> SocketAddress | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]") or "0.0.0.0"
    return SocketAddress(host=host, port=int(port))


def _setup_logging(level: str, path: str | None) -> logging.handlers.QueueListener:
    """Route the `trioproxy` logger to stderr or `path` through a writer thread.

    The event loop only puts records on a queue; a thread does the (blocking)
    writes, as Envoy's file flusher thread does. Stop the returned listener
    to flush before exiting.

    Raises:
        OSError: `path` cannot be opened for appending.
    """
    lvl: int | str = {"trace": "DEBUG", "warn": "WARNING"}.get(level, level.upper())
    if level == "off":
        lvl = logging.CRITICAL + 1  # above every level: nothing is logged
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s][%(name)s] %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.handlers.QueueListener(records, handler)
    root = logging.getLogger("trioproxy")
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(lvl)
    root.propagate = False
    writer.start()
    return writer


def _loader(path: str) -> Callable[[], Mesh]:
    """Compile `path` again (a reload); MeshError lists every file:line."""
    from trioproxy.dsl import load_mesh

    return lambda: load_mesh(path)


def _watched_files(path: str) -> list[str]:
    """The mesh file and the modules its last load imported from its directory."""
    from trioproxy.dsl import _load as dsl_load

    files = [os.path.abspath(path)]
    for name in dsl_load._loaded.get(os.path.abspath(path), ()):
        f = getattr(sys.modules.get(name), "__file__", None)
        if f and os.path.abspath(f) not in files:
            files.append(os.path.abspath(f))
    return files


def _mtimes(files: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for f in files:
        try:
            out[f] = os.stat(f).st_mtime_ns
        except OSError:
            out[f] = None
    return out


async def _watch_and_reload(server: Server, path: str, interval: float = 1.0) -> None:
    """Poll the mtimes of the mesh file and its sibling modules every
    `interval`; reload when one changes (os.stat is a cheap syscall)."""
    seen = _mtimes(_watched_files(path))
    while True:
        await trio.sleep(interval)
        now = _mtimes(list(seen))
        if now != seen:
            log.info("%s changed; reloading", path)
            await server.reload_from_source()
            seen = _mtimes(_watched_files(path))  # the new load's imports


class _Takeover:
    """`--takeover`: where the old process's admin is, and how it went."""

    def __init__(self, old: SocketAddress, timeout: float) -> None:
        self.old = old
        self.timeout = timeout
        self.failed: str | None = None

    async def run(self, server: Server) -> None:
        from trioproxy.runtime.takeover import TakeoverError, take_over

        try:
            await take_over(server, self.old, server.admin_token, self.timeout)
        except TakeoverError as exc:
            # The old process keeps serving; finish what we accepted, exit 1.
            self.failed = str(exc)
            log.error("takeover failed: %s; the old process keeps serving", exc)
            server.shutdown(graceful=True)


def _find_old(
    args: argparse.Namespace, mesh: Mesh, admin: SocketAddress | None
) -> _Takeover | int | None:
    """`--takeover`: a `_Takeover` if a trioproxy answers at the old admin
    address, None if nothing does (serve normally), or an exit code."""
    from trioproxy.runtime.takeover import TakeoverError, find_old

    if args.takeover:
        old = _parse_addr(args.takeover)
        if old is None:
            print(
                f"trioproxy: bad --takeover address {args.takeover!r} (want HOST:PORT)",
                file=sys.stderr,
            )
            return 2
    else:
        old = admin or (mesh.admin.address if mesh.admin else None)
        if old is None:
            print(
                "trioproxy: --takeover finds the running process through its admin; "
                "the mesh has no admin (pass --takeover ADDR or --admin ADDR)",
                file=sys.stderr,
            )
            return 2
    token = mesh.admin.token if mesh.admin else None
    try:
        info = trio.run(find_old, old, token)
    except TakeoverError as exc:
        print(f"trioproxy: cannot take over: {exc}", file=sys.stderr)
        return 1
    if info is None:
        log.warning("--takeover: no trioproxy answers at %s; serving normally", old)
        return None
    log.info(
        "--takeover: found trioproxy pid %s (%s) at %s",
        info.get("pid", "?"),
        info.get("state", "?"),
        old,
    )
    return _Takeover(old, args.takeover_timeout)


async def _serve(
    mesh: Mesh,
    admin: SocketAddress | None,
    options: dict[str, object],
    drain_time: float,
    watch: bool = True,
    takeover: _Takeover | None = None,
) -> None:
    from trioproxy.runtime.server import Server

    server = Server(mesh, admin_address=admin, options=options, drain_time=drain_time)
    path = str(options["mesh"])
    server.mesh_loader = _loader(path)
    async with trio.open_nursery() as nursery:
        if takeover is not None:
            server.admin_deferred = True
            nursery.start_soon(takeover.run, server)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def stop_on_signal() -> None:
                # The first signal drains (exit 0 once the last connection
                # closes, or after --drain-time-s); a second stops at once.
                draining = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if draining:
                        log.info("%s received again; stopping now", name)
                        server.shutdown()
                        return
                    log.info("%s received; draining (up to %gs)", name, drain_time)
                    draining = True
                    server.shutdown(graceful=True)

            nursery.start_soon(stop_on_signal)

            async def reopen_on_sigusr1() -> None:
                # Envoy reopens access-log files on SIGUSR1 (log rotation).
                with trio.open_signal_receiver(signal.SIGUSR1) as usr1:
                    async for _ in usr1:
                        log.info("SIGUSR1 received; reopening access logs")
                        server.reopen_access_logs()

            nursery.start_soon(reopen_on_sigusr1)
            nursery.start_soon(_reload_on_sighup, server)
            if watch:
                nursery.start_soon(_watch_and_reload, server, path)
            await server.run()
            nursery.cancel_scope.cancel()


async def _reload_on_sighup(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as hups:
        async for _ in hups:
            log.info("SIGHUP received; reloading")
            await server.reload_from_source()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        mesh = _load(args.mesh)
        if mesh is None:
            return 1
        print(f"{args.mesh}: OK: {_summary(mesh)}")
        return 0
    if args.command == "explain":
        return _explain(args)
    if args.command == "diff":
        old, new = _load(args.old), _load(args.new)
        if old is None or new is None:
            return 1
        from trioproxy.config.diff import diff_meshes

        lines = diff_meshes(old, new).lines
        print("\n".join(lines) if lines else "no change")
        return 0
    if args.command == "show":
        mesh = _load(args.mesh)
        if mesh is None:
            return 1
        from trioproxy.config.dump import to_jsonable, to_tree

        if args.json:
            print(json.dumps(to_jsonable(mesh), indent=2))
        else:
            tree = to_tree(mesh)
            print(tree, end="" if tree.endswith("\n") else "\n")
        return 0
    if args.command == "worker":
        return _run_worker(args)
    # serve
    if args.workers < 1:
        print("trioproxy: --workers must be at least 1", file=sys.stderr)
        return 2
    admin = None
    if args.admin:
        admin = _parse_addr(args.admin)
        if admin is None:
            print(
                f"trioproxy: bad --admin address {args.admin!r} (want HOST:PORT)", file=sys.stderr
            )
            return 2
    try:
        writer = _setup_logging(args.log_level, args.log_path)
    except OSError as exc:
        print(f"trioproxy: cannot open --log-path: {exc}", file=sys.stderr)
        return 2
    try:
        return _run_serve(args, admin)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler is in place
        return 130
    finally:
        writer.stop()  # flushes the records still queued


def _run_worker(args: argparse.Namespace) -> int:
    from trioproxy.runtime.workers import run_worker

    writer = _setup_logging(args.log_level, args.log_path)
    try:
        mesh = _load(args.mesh)
        if mesh is None:
            return 1
        options = {"mesh": args.mesh, "worker": args.index}
        try:
            run_worker(mesh, _loader(args.mesh), args.control_fd, options, args.drain_time_s)
        except BaseException as exc:
            leaves = _leaves(exc)
            if not all(isinstance(e, OSError) for e in leaves):
                raise
            for e in leaves:
                assert isinstance(e, OSError)
                print(
                    f"trioproxy: cannot start: {e.strerror or e} (worker {args.index})",
                    file=sys.stderr,
                )
            return 1
        return 0
    finally:
        writer.stop()


def _run_supervisor(
    args: argparse.Namespace,
    admin: SocketAddress | None,
    mesh: Mesh,
    options: dict[str, object],
    takeover: _Takeover | None = None,
) -> int:
    from trioproxy.runtime.workers import Supervisor, supervise

    worker_args = ["--drain-time-s", str(args.drain_time_s), "--log-level", args.log_level]
    if args.log_path:
        worker_args += ["--log-path", args.log_path]
    sup = Supervisor(
        mesh,
        mesh_path=args.mesh,
        workers=args.workers,
        worker_args=worker_args,
        admin_address=admin,
        options=options,
        drain_time=args.drain_time_s,
    )
    sup.mesh_loader = _loader(args.mesh)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            if takeover is not None:
                sup.admin_deferred = True
                nursery.start_soon(takeover.run, sup)
            if not args.no_watch:
                nursery.start_soon(_watch_and_reload, sup, args.mesh)
            code = await supervise(sup)
            nursery.cancel_scope.cancel()
        return code

    try:
        code: int = trio.run(main)
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130
        if not all(isinstance(e, OSError) for e in leaves):
            raise
        for e in leaves:
            assert isinstance(e, OSError)
            print(f"trioproxy: cannot start: {e.strerror or e}", file=sys.stderr)
        return 1
    if sup.failed:
        print(f"trioproxy: {sup.failed}", file=sys.stderr)
    if takeover is not None and takeover.failed:
        print(f"trioproxy: takeover failed: {takeover.failed}", file=sys.stderr)
        return 1
    return code


def _run_serve(args: argparse.Namespace, admin: SocketAddress | None) -> int:
    mesh = _load(args.mesh)
    if mesh is None:
        return 1
    log.debug("loaded %s: %s", args.mesh, _summary(mesh))
    options = {
        "mesh": args.mesh,
        "concurrency": args.workers,
        "log_level": args.log_level,
        "log_path": args.log_path or "",
        "admin": args.admin or "",
        "drain_time_s": args.drain_time_s,
    }
    takeover: _Takeover | None = None
    if args.takeover is not None:
        found = _find_old(args, mesh, admin)
        if isinstance(found, int):
            return found
        takeover = found
    if args.workers > 1:
        return _run_supervisor(args, admin, mesh, options, takeover)
    try:
        trio.run(_serve, mesh, admin, options, args.drain_time_s, not args.no_watch, takeover)
    except BaseException as exc:  # sorted out below; re-raised if not ours
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130  # a second Ctrl-C during shutdown
        if not all(isinstance(e, OSError) for e in leaves):
            raise
        # Startup failures (a port in use, an address not on this host): one
        # line each, never the nursery's exception-group traceback.
        for e in leaves:
            assert isinstance(e, OSError)
            print(f"trioproxy: cannot start: {e.strerror or e}", file=sys.stderr)
        return 1
    if takeover is not None and takeover.failed:
        print(f"trioproxy: takeover failed: {takeover.failed}", file=sys.stderr)
        return 1
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or `[exc]`."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
