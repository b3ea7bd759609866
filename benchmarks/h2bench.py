"""HTTP/2 downstream throughput of trioproxy with h2load, to h1 and h2 upstreams.

    python benchmarks/h2bench.py                 # h2load -c 10 -m 10 -n 20000 per case
    python benchmarks/h2bench.py -n 50000 -c 20 -m 20
    python benchmarks/h2bench.py --quick         # CI smoke run: -n 2000

What it does. It starts nginx (from Debian's nginx-light; `--backend
builtin` or no nginx: the asyncio backend of backend.py, HTTP/1.1 only, and
the h2 upstream case is skipped) with two servers: HTTP/1.1 on one port and
h2c (HTTP/2 over cleartext with prior knowledge, `listen ... http2` without
TLS, which nginx has supported since 1.9.5) on another. Then one
`python -m trioproxy serve` with two h2c-capable listeners (codec auto):

    h2 -> h1   every path to the HTTP/1.1 server (cluster over HTTP/1.1)
    h2 -> h2   every path to the h2c server (cluster `.http2()`)

and runs `h2load -c C -m M -n N` (C connections, M streams in flight per
connection, N requests) against

    direct h2c      nginx's h2c port itself: the ceiling of client + backend
    proxied h2->h1  trioproxy's first listener
    proxied h2->h2  trioproxy's second listener

for the 6-byte body (and `--body 16k`). It prints requests/s, mean time per
request, how many requests succeeded / failed / errored / timed out, the
status classes, the CPU of each process (percent of one core) and
trioproxy's CPU time per request, and exits 1 if any request did not
succeed with a 2xx. Pinning, warm-up and the limits of two cores are as in
bench.py (read its docstring): trioproxy on CPU 1, nginx and h2load on
CPU 0.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import (
    BODIES,
    BenchError,
    H2loadResult,
    Pinning,
    Processes,
    _nginx_version,
    busy_percent,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    http_get,
    parse_h2load,
    processes,
    wait_until_ok,
)

__all__ = ["main", "parse_h2load"]

HERE = Path(__file__).resolve().parent
EXIT_FAILED = 1
EXIT_MISSING_TOOL = 2
EXIT_INTERRUPTED = 130

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    http2_max_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    server {{
        listen 127.0.0.1:{h1};
        {locations}
    }}
    server {{
        listen 127.0.0.1:{h2} http2;
        {locations}
    }}
}}
"""

LOCATIONS = """
        location = /small {{ default_type text/plain; return 200 "hello\\n"; }}
        location = /16k {{ default_type application/octet-stream; root {dir}/www; }}
        location / {{ return 404; }}
"""

MESH = '''\
"""h2bench's mesh: two listeners (codec auto, so h2c prior knowledge works),
one to an HTTP/1.1 backend and one to an h2c backend. No access log."""

from trioproxy.dsl import admin, cluster, http, listener, mesh, prefix

h1 = cluster("backend_h1", "{h1}")
h2 = cluster("backend_h2", "{h2}").http2()

MESH = mesh(
    listener("to_h1", "{listen_h1}").chain(http(stat_prefix="to_h1")).route(prefix("/"), h1),
    listener("to_h2", "{listen_h2}").chain(http(stat_prefix="to_h2")).route(prefix("/"), h2),
    admin("{admin}"),
)
'''


# --------------------------------------------------------------------------- h2load


# H2loadResult and parse_h2load live in bench.py, which also runs h2load
# (its h2 cases against benchmarks/mesh.py); imported above.


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    requests: int
    clients: int
    streams: int
    warmup: int
    bodies: tuple[str, ...]
    backend: str
    pin: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    name: str
    url: str
    result: H2loadResult
    cpu: dict[str, float | None] = field(default_factory=dict)

    @property
    def proxy_cpu_us_per_request(self) -> float | None:
        pct = self.cpu.get("trioproxy")
        if pct is None or not self.result.requests_per_sec:
            return None
        return round(pct * 1e4 / self.result.requests_per_sec, 1)


def start_backends(
    tmp: Path, procs: Processes, opts: Options, cpu: int | None
) -> tuple[str, subprocess.Popen[bytes], str, str | None]:
    """nginx with an HTTP/1.1 and an h2c server (or the built-in h1 backend):
    its description, its process, the h1 base URL and the h2c base URL."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if opts.backend == "nginx" and nginx is None:
        raise BenchError("--backend nginx: nginx is not installed")
    h1 = free_port()
    if nginx is not None and opts.backend != "builtin":
        h2 = free_port()
        www = tmp / "www"
        www.mkdir()
        (www / "16k").write_bytes(BODIES["16k"])
        conf = tmp / "nginx.conf"
        locations = LOCATIONS.format(dir=tmp)
        conf.write_text(NGINX_CONF.format(dir=tmp, h1=h1, h2=h2, locations=locations))
        argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
        proc = procs.start("nginx", argv, cpu=cpu)
        wait_until_ok(f"http://127.0.0.1:{h1}/small", proc, "nginx", procs)
        return _nginx_version(nginx), proc, f"127.0.0.1:{h1}", f"127.0.0.1:{h2}"
    argv = [sys.executable, str(HERE / "backend.py"), "--port", str(h1)]
    proc = procs.start("backend", argv, cpu=cpu)
    wait_until_ok(f"http://127.0.0.1:{h1}/small", proc, "backend", procs)
    return "built-in asyncio backend (HTTP/1.1 only)", proc, f"127.0.0.1:{h1}", None


def start_proxy(
    tmp: Path, procs: Processes, h1: str, h2: str | None, cpu: int | None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """trioproxy with its two listeners: the process and their base URLs."""
    listen_h1, listen_h2, admin = free_port(), free_port(), free_port()
    mesh = tmp / "h2bench_mesh.py"
    mesh.write_text(
        MESH.format(
            h1=h1,
            h2=h2 or h1,  # no h2c backend: the h2 listener is not loaded
            listen_h1=f"127.0.0.1:{listen_h1}",
            listen_h2=f"127.0.0.1:{listen_h2}",
            admin=f"127.0.0.1:{admin}",
        )
    )
    proc = procs.start(
        "trioproxy",
        [sys.executable, "-m", "trioproxy", "serve", str(mesh), "--workers", "1"],
        cpu=cpu,
    )
    wait_until_ok(f"http://127.0.0.1:{admin}/ready", proc, "trioproxy", procs)
    return proc, f"http://127.0.0.1:{listen_h1}", f"http://127.0.0.1:{listen_h2}"


def run_h2load(url: str, n: int, opts: Options, cpu: int | None, procs: Processes) -> H2loadResult:
    argv = ["h2load", "-c", str(opts.clients), "-m", str(opts.streams), "-n", str(n), url]
    proc = procs.start("h2load", argv, cpu=cpu)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load against {url} did not finish in 600 s") from None
    report = procs.log_path("h2load").read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"h2load exited with status {proc.returncode}:\n{report}")
    return parse_h2load(report)


def run_case(
    name: str,
    url: str,
    opts: Options,
    pinning: Pinning,
    procs: Processes,
    watched: dict[str, subprocess.Popen[bytes]],
) -> Case:
    if opts.warmup:
        run_h2load(url, opts.warmup, opts, pinning.load_cpu, procs)
    before = {k: cpu_seconds(p.pid) for k, p in watched.items()}
    load_before = children_cpu_seconds()
    started = time.monotonic()
    result = run_h2load(url, opts.requests, opts, pinning.load_cpu, procs)
    elapsed = time.monotonic() - started
    cpu: dict[str, float | None] = {}
    for k, p in watched.items():
        after, was = cpu_seconds(p.pid), before[k]
        if after is not None and was is not None:
            cpu[k] = round(100 * (after - was) / elapsed, 1)
    cpu["h2load"] = round(100 * (children_cpu_seconds() - load_before) / elapsed, 1)
    for k, p in watched.items():
        if p.poll() is not None:
            raise BenchError(f"{k} died during {name}:\n{procs.log_tail(k)}")
    return Case(name=name, url=url, result=result, cpu=cpu)


# --------------------------------------------------------------------------- report


def format_table(cases: list[Case]) -> str:
    header = ("case", "req/s", "mean", "ok", "failed", "errored", "timeout", "non-2xx")
    header += ("backend cpu", "h2load cpu", "proxy cpu", "proxy cpu/req")
    rows = [header]
    for c in cases:
        r = c.result
        rows.append(
            (
                c.name,
                f"{r.requests_per_sec:,.0f}",
                f"{r.mean_ms:.2f}ms",
                str(r.succeeded),
                str(r.failed),
                str(r.errored),
                str(r.timeout),
                str(r.total - r.status.get("2xx", 0)),
                _pct(c.cpu.get("backend")),
                _pct(c.cpu.get("h2load")),
                _pct(c.cpu.get("trioproxy")) if "proxied" in c.name else "-",
                "-"
                if c.proxy_cpu_us_per_request is None or "direct" in c.name
                else f"{c.proxy_cpu_us_per_request:.0f}us",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/h2bench.py",
        description="HTTP/2 downstream benchmark with h2load (see the module docstring).",
    )
    p.add_argument("-n", "--requests", type=int, default=20000, help="requests per case")
    p.add_argument("-c", "--clients", type=int, default=10, help="h2load connections (10)")
    p.add_argument("-m", "--streams", type=int, default=10, help="streams per connection (10)")
    p.add_argument("--warmup", type=int, default=None, help="unrecorded requests first")
    p.add_argument("--body", choices=("small", "16k", "both"), default="small")
    p.add_argument("--quick", action="store_true", help="smoke run: -n 2000, no warm-up")
    p.add_argument("--backend", choices=("auto", "nginx", "builtin"), default="auto")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    n = 2000 if args.quick and args.requests == 20000 else args.requests
    opts = Options(
        requests=n,
        clients=args.clients,
        streams=args.streams,
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else n // 10),
        bodies=("small", "16k") if args.body == "both" else (args.body,),
        backend=args.backend,
        pin=not args.no_pin,
    )
    if shutil.which("h2load") is None:
        print(
            "h2bench: h2load is not installed (Debian: apt-get install nghttp2-client)",
            file=sys.stderr,
        )
        return EXIT_MISSING_TOOL
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    pinning = Pinning.choose(opts.pin)
    busy = busy_percent()
    if busy > 10:
        print(f"h2bench: warning: the machine is already {busy:.0f}% busy", file=sys.stderr)
    try:
        return _run(opts, pinning)
    except KeyboardInterrupt:
        print("\nh2bench: interrupted; every process stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(opts: Options, pinning: Pinning) -> int:
    cases: list[Case] = []
    with (
        tempfile.TemporaryDirectory(prefix="trioproxy-h2bench-") as tmpdir,
        processes(Path(tmpdir)) as procs,
    ):
        tmp = Path(tmpdir)
        try:
            name, backend, h1, h2 = start_backends(tmp, procs, opts, pinning.load_cpu)
            proxy, to_h1, to_h2 = start_proxy(tmp, procs, h1, h2, pinning.proxy_cpu)
            for base in (to_h1, *((to_h2,) if h2 else ())):
                status, body = http_get(base + "/small")
                if status != 200 or body != BODIES["small"]:
                    raise BenchError(f"GET {base}/small answered {status}: {body[:100]!r}")
            load = f"h2load -c {opts.clients} -m {opts.streams} -n {opts.requests}"
            print(f"backend:   {name}: HTTP/1.1 {h1}" + (f", h2c {h2}" if h2 else ""))
            print(f"trioproxy: h2c -> h1 {to_h1}, h2c -> h2 {to_h2}, no access log")
            print(f"load:      {load}, warm-up {opts.warmup} requests per case")
            print(f"pinning:   {pinning.describe()}", flush=True)
            watched = {"backend": backend, "trioproxy": proxy}
            for body in opts.bodies:
                plan = []
                if h2:
                    plan.append((f"direct h2c {body}", f"http://{h2}/{body}"))
                plan.append((f"proxied h2->h1 {body}", f"{to_h1}/{body}"))
                if h2:
                    plan.append((f"proxied h2->h2 {body}", f"{to_h2}/{body}"))
                for case_name, url in plan:
                    print(f"  running {case_name} ...", file=sys.stderr, flush=True)
                    cases.append(run_case(case_name, url, opts, pinning, procs, watched))
        except BenchError as exc:
            print(f"h2bench: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(format_table(cases))
    failed = [c for c in cases if c.result.errors or c.result.succeeded != c.result.total]
    if failed:
        print("h2bench: FAILED: " + ", ".join(c.name for c in failed), file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
