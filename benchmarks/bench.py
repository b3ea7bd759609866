"""End-to-end throughput and latency of trioproxy, as a ratio to its backend.

    python benchmarks/bench.py                  # 10 s per case
    python benchmarks/bench.py --duration 30 --connections 100 --json
    python benchmarks/bench.py --quick          # CI smoke run: 1 s per case, no warm-up

What it does. It starts a fast backend (nginx in the foreground from
templates/nginx.conf.in when `nginx` is installed, else the asyncio server in
backend.py), starts `python -m trioproxy serve benchmarks/mesh.py` (the issue-8 mesh:
every path through a route and a round-robin cluster to the backend, access
log to a file in the run's temporary directory, stats on; its ports, free
ones chosen here, passed in BENCH_* environment variables; admin's `/ready`
is polled before any load), then runs `wrk -t1 -cN -dS --latency`
against

    direct   small   the backend itself, a 6-byte body ("hello\\n")
    proxied  small   the same path through trioproxy
    direct   16k     the backend, a 16 KiB static body
    proxied  16k     the same path through trioproxy

and prints requests/s, the 50th and 99th percentile latencies, the errors wrk
saw, the CPU each process used (percent of one core, from /proc and
getrusage), trioproxy's CPU time per request, and the ratio proxied/direct
requests/s per body size. Each case is preceded by an unrecorded warm-up so
connection pools are full. Before the load every URL is fetched once and its
status and body checked, and a warning is printed if the machine is already
busy. `--json` also writes the figures to benchmarks/results/ (gitignored).

Exit status: 0 when every request succeeded; 1 when any case saw socket
errors, non-2xx/3xx answers or no requests at all (the table shows which),
or when a process failed to start or died; 2 when wrk (or Linux) is missing;
130 on Ctrl-C. Every process started here is stopped on the way out,
SIGTERM first, SIGKILL after 5 s.

CPU pinning, and why. The figure we want is what one trioproxy worker (one
process, one trio thread) delivers on one core. On a machine with at least
two CPUs in our affinity mask and `taskset` installed, trioproxy is pinned
to the second CPU (CPU 1 here) and the backend and wrk share the first
(CPU 0). Pinning stops the scheduler from moving the proxy around or
stacking it onto the load generator's core between runs, which is the main
source of run-to-run noise on small machines; `--no-pin` turns it off.

Limits of measuring on two cores. The load generator and the backend share
one core, so the *direct* figure is a ceiling set by wrk + nginx competing
for CPU 0, not by nginx alone; in the proxied case CPU 0 idles while it waits
for the proxy. The ratio is therefore "trioproxy's share of what this
machine's client and backend can push", it flatters the proxy when CPU 0 is
the bottleneck of the direct run, and it says nothing about scaling across
cores (one worker, `--workers` is 1). Loopback hides network costs (no NIC,
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
from typing import IO, Literal

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
RESULTS = HERE / "results"

Target = Literal["direct", "pump", "proxied"]

# Which watched process does the work in front of the backend, per target.
FRONT: dict[str, str] = {"pump": "pump", "proxied": "trioproxy"}

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


class BenchError(Exception):
    """The benchmark cannot produce a valid figure; the message says why."""


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    """The figures parsed from one `wrk --latency` report."""

    requests: int
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
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
        return f"backend + wrk on CPU {self.load_cpu}, trioproxy on CPU {self.proxy_cpu}"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    target: Target
    body: str
    url: str
    wrk: WrkResult
    # Percent of one core over the measured run; None when unknown.
    cpu: dict[str, float | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.target} {self.body}"

    @property
    def proxy_cpu_us_per_request(self) -> float | None:
        """trioproxy's CPU time per request in microseconds: its cost,
        whether or not it saturated its core."""
        front = FRONT.get(self.target)
        pct = self.cpu.get(front) if front else None
        if pct is None or not self.wrk.requests_per_sec:
            return None
        return round(pct * 1e4 / self.wrk.requests_per_sec, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What is running: the processes and the URLs to load."""

    backend_name: str
    backend_log: str  # its name in Processes: "nginx" or "backend"
    backend: subprocess.Popen[bytes]
    proxy: subprocess.Popen[bytes]
    pump: subprocess.Popen[bytes]
    direct_base: str
    pump_base: str
    proxied_base: str
    admin_base: str


def start_backend(
    tmp: Path, procs: Processes, opts: Options, cpu: int | None
) -> tuple[str, str, subprocess.Popen[bytes], str]:
    """Start nginx or the built-in backend; return its description, its log
    name, its process and its base URL."""
    port = free_port()
    # Debian puts nginx in /usr/sbin, which a non-root PATH often lacks.
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if opts.backend == "nginx" and nginx is None:
        raise BenchError("--backend nginx: nginx is not installed")
    if nginx is not None and opts.backend != "builtin":
        www = tmp / "www"
        www.mkdir()
        (www / "16k").write_bytes(BODY_16K)
        conf = render("nginx.conf.in", tmp / "nginx.conf", DIR=str(tmp), PORT=str(port))
        argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
        proc = procs.start("nginx", argv, cpu=cpu)
        name = _nginx_version(nginx)
        log_name = "nginx"
    else:
        argv = [sys.executable, str(HERE / "backend.py"), "--port", str(port)]
        proc = procs.start("backend", argv, cpu=cpu)
        name = "built-in asyncio backend (benchmarks/backend.py)"
        log_name = "backend"
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(base + "/small", proc, log_name, procs)
    except BenchError as exc:
        if log_name == "nginx":
            error_log = _tail(tmp / "nginx-error.log")
            raise BenchError(f"{exc}\n  nginx error log:\n{error_log}") from None
        raise
    return name, log_name, proc, base


def _nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ").replace("/", " ")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join("    " + s for s in path.read_text().splitlines()[-lines:])
    except OSError:
        return "    (none)"


def start_proxy(
    tmp: Path, procs: Processes, backend_base: str, cpu: int | None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start trioproxy in front of the backend; return it, its base URL and admin URL."""
    listen, h2_listen, admin = free_port(), free_port(), free_port()
    env = {
        "BENCH_LISTEN_PORT": str(listen),
        "BENCH_H2_LISTEN_PORT": str(h2_listen),
        "BENCH_ADMIN_PORT": str(admin),
        "BENCH_BACKEND_PORT": backend_base.rsplit(":", 1)[1],
        "BENCH_ACCESS_LOG": str(tmp / "access.log"),
    }
    # One process pinned to `cpu` (`--workers` defaults to the CPU count).
    argv = [sys.executable, "-m", "trioproxy", "serve", str(HERE / "mesh.py"), "--workers", "1"]
    proc = procs.start("trioproxy", argv, cpu=cpu, env=env)
    admin_base = f"http://127.0.0.1:{admin}"
    wait_until_ok(admin_base + "/ready", proc, "trioproxy", procs)
    return proc, f"http://127.0.0.1:{listen}", admin_base


def start_pump(
    procs: Processes, backend_base: str, cpu: int | None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the bare trio byte pump (pump.py) in front of the backend, on
    trioproxy's CPU (they never carry load at the same time)."""
    listen = free_port()
    backend_port = backend_base.rsplit(":", 1)[1]
    argv = [sys.executable, str(HERE / "pump.py"), "--listen", str(listen)]
    proc = procs.start("pump", [*argv, "--backend", backend_port], cpu=cpu)
    base = f"http://127.0.0.1:{listen}"
    wait_until_ok(base + "/small", proc, "pump", procs)
    return proc, base


def check_urls(setup: Setup, procs: Processes) -> None:
    """Fetch every URL once: each must answer 200 with the expected body."""
    for body_name, expected in BODIES.items():
        for base, log in (
            (setup.direct_base, setup.backend_log),
            (setup.pump_base, "pump"),
            (setup.proxied_base, "trioproxy"),
        ):
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
    try:
        proc.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish in {seconds + 30}s") from None
    report = procs.log_path("wrk").read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with status {proc.returncode}:\n{report}")
    return report


def run_case(
    setup: Setup, target: Target, body: str, opts: Options, pinning: Pinning, procs: Processes
) -> CaseResult:
    base = {
        "direct": setup.direct_base,
        "pump": setup.pump_base,
        "proxied": setup.proxied_base,
    }[target]
    url = f"{base}/{body}"
    if opts.warmup:
        run_wrk(url, opts.warmup, opts, pinning.load_cpu, procs)
    watched = {
        "backend": setup.backend.pid,
        "trioproxy": setup.proxy.pid,
        "pump": setup.pump.pid,
    }
    before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    wrk_before = children_cpu_seconds()
    started = time.monotonic()
    report = run_wrk(url, opts.duration, opts, pinning.load_cpu, procs)
    elapsed = time.monotonic() - started
    cpu: dict[str, float | None] = {}
    for name, pid in watched.items():
        after, was = cpu_seconds(pid), before[name]
        if after is not None and was is not None:
            cpu[name] = round(100 * (after - was) / elapsed, 1)
    cpu["wrk"] = round(100 * (children_cpu_seconds() - wrk_before) / elapsed, 1)
    for log, proc in (
        (setup.backend_log, setup.backend),
        ("trioproxy", setup.proxy),
        ("pump", setup.pump),
    ):
        if proc.poll() is not None:
            raise BenchError(
                f"{log} died during {target} {body} (status {proc.returncode}):\n"
                f"{procs.log_tail(log)}"
            )
    return CaseResult(target=target, body=body, url=url, wrk=parse_wrk(report), cpu=cpu)


def proxy_stats(admin_base: str) -> dict[str, int]:
    """The cluster counters that show whether upstream connections were reused."""
    status, text = http_get(admin_base + "/stats")
    wanted = ("cluster.origin.upstream_cx_total", "cluster.origin.upstream_rq_total")
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
                _ms(r.wrk.p50_ms),
                _ms(r.wrk.p99_ms),
                r.wrk.describe_errors(),
                _pct(r.cpu.get("backend")),
                _pct(r.cpu.get("wrk")),
                _pct(r.cpu.get(FRONT[r.target])) if r.target in FRONT else "-",
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
    for versus in ("direct", "pump"):
        ratios = ratio_by_body(results, versus)
        lines.append(
            f"proxied/{versus} req/s: "
            + ", ".join(f"{body} {ratio:.3f}" for body, ratio in ratios.items())
        )
    return "\n".join(lines)


def ratio_by_body(results: Sequence[CaseResult], versus: Target = "direct") -> dict[str, float]:
    """proxied req/s over `versus` req/s, per body size."""
    rps = {(r.target, r.body): r.wrk.requests_per_sec for r in results}
    return {
        body: round(rps[("proxied", body)] / rps[(versus, body)], 4)
        for body in BODIES
        if rps.get((versus, body)) and ("proxied", body) in rps
    }


def _ms(value: float) -> str:
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
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": git_revision(),
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
                "proxy_cpu_us_per_request": r.proxy_cpu_us_per_request,
            }
            for r in results
        ],
        "ratio_proxied_direct_rps": ratio_by_body(results),
        "ratio_proxied_pump_rps": ratio_by_body(results, "pump"),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


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
        "--json",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write JSON (default path: benchmarks/results/bench-<time>.json)",
    )
    return p


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
    opts = Options(
        duration=args.duration or (1 if args.quick else 10),
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else 2),
        connections=args.connections,
        threads=args.threads,
        backend=args.backend,
        pin=not args.no_pin,
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
        return _run(opts, pinning, args.json)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(opts: Options, pinning: Pinning, json_path: str | None) -> int:
    results: list[CaseResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="trioproxy-bench-") as tmpdir,
        processes(Path(tmpdir)) as procs,
    ):
        tmp = Path(tmpdir)
        try:
            backend_name, backend_log, backend, direct = start_backend(
                tmp, procs, opts, pinning.load_cpu
            )
            proxy, proxied, admin_base = start_proxy(tmp, procs, direct, pinning.proxy_cpu)
            pump, pump_base = start_pump(procs, direct, pinning.proxy_cpu)
            setup = Setup(
                backend_name=backend_name,
                backend_log=backend_log,
                backend=backend,
                proxy=proxy,
                pump=pump,
                direct_base=direct,
                pump_base=pump_base,
                proxied_base=proxied,
                admin_base=admin_base,
            )
            check_urls(setup, procs)
            wrk_cmd = f"wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s --latency"
            print(f"backend:   {backend_name} at {direct}")
            print(f"trioproxy: {proxied} (admin {admin_base}), mesh benchmarks/mesh.py")
            print("           (route + round-robin cluster, access log to a file, stats on)")
            print(f"load:      {wrk_cmd}, warm-up {opts.warmup}s per case")
            print(f"pinning:   {pinning.describe()}")
            print(flush=True)
            for body in BODIES:
                for target in ("direct", "pump", "proxied"):
                    print(f"  running {target} {body} ...", file=sys.stderr, flush=True)
                    results.append(run_case(setup, target, body, opts, pinning, procs))
            stats = proxy_stats(admin_base)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(format_table(results))
    if stats:
        cx = stats.get("cluster.origin.upstream_cx_total", 0)
        rq = stats.get("cluster.origin.upstream_rq_total", 0)
        print(f"trioproxy upstream: {rq:,} requests over {cx:,} connections")
    if json_path is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = Path(json_path) if json_path else RESULTS / f"bench-{stamp}.json"
        info: dict[str, object] = {"backend": backend_name, "pinning": asdict(pinning)}
        info["trioproxy_stats"] = stats
        write_json(path, opts, info, results)
        print(f"wrote {path}")
    failed = [r for r in results if r.wrk.errors or r.wrk.requests == 0]
    if failed:
        names = ", ".join(f"{r.name} ({r.wrk.describe_errors()})" for r in failed)
        proxied_failed = any(r.target == "proxied" for r in failed)
        what = "proxied requests failed" if proxied_failed else "direct requests failed"
        print(f"bench: FAILED: {what}: {names}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
