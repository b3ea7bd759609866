"""Memory while a slow client reads a large body through trioproxy (issue 8,
target 4: "flat while a slow client reads a 1 GiB body").

    python benchmarks/slow_reader.py --mib 1024 --rate 64    # standalone

An origin (a thread here, plain blocking sockets) answers any request with a
`Content-Length` body of the given size, written in 64 KiB `sendall`s, so it
can only run ahead of the client by what the sockets and trioproxy buffer.
trioproxy (`serve benchmarks/mesh.py --workers 1`) sits in front of it and a
client reads the body at a fixed rate well below what loopback carries,
sleeping between reads. trioproxy's RSS is sampled every half second. If
trioproxy buffered what the origin sends faster than the client reads, RSS
would grow with the body; flow control keeps it flat. bench.py runs the same
function against its own trioproxy (`--slow-reader-mib`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SlowReadResult", "origin", "rss_mib", "slow_read"]

CHUNK = 64 * 1024
MIB = 1024 * 1024


def rss_mib(pid: int) -> float | None:
    """Resident set size of a live process in MiB, from /proc; None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


def read_head(sock: socket.socket) -> bytes:
    """Receive until the end of a message head (or EOF); return all of it."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        if not more:
            break
        data += more
    return data


@contextlib.contextmanager
def origin(size: int) -> Iterator[int]:
    """A background origin on 127.0.0.1 answering every request with `size`
    bytes; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    payload = bytes(range(256)) * (CHUNK // 256)

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if b"\r\n\r\n" not in read_head(conn):
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                b"content-length: %d\r\n\r\n" % size
            )
            left = size
            while left:
                n = min(left, CHUNK)
                conn.sendall(payload[:n])
                left -= n

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield port
    finally:
        listener.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowReadResult:
    """trioproxy's RSS while one client read `body_mib` MiB at `rate_mib_s`."""

    body_mib: int
    rate_mib_s: int
    received: int
    complete: bool
    seconds: float
    before_mib: float | None
    samples_mib: list[float]
    after_mib: float | None

    def describe(self) -> str:
        if not self.samples_mib:
            return "no samples"
        low, high = min(self.samples_mib), max(self.samples_mib)
        done = "all of it" if self.complete else f"only {self.received:,} bytes"
        return (
            f"a client reading {self.body_mib} MiB at {self.rate_mib_s} MiB/s got {done} in "
            f"{self.seconds:.1f} s; RSS before {self.before_mib} MiB, while reading "
            f"{low}–{high} MiB ({len(self.samples_mib)} samples, spread "
            f"{100 * (high - low) / low:.1f}% of min), after {self.after_mib} MiB"
        )


def slow_read(
    base: str,
    pid: int,
    *,
    mib: int,
    rate: int,
    path: str = "/big",
    rss: Callable[[int], float | None] = rss_mib,
) -> SlowReadResult:
    """GET `base + path` and read its `mib` MiB body at `rate` MiB/s,
    sampling the RSS of process `pid` every half second."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    size = mib * MIB
    before = rss(pid)
    samples: list[float] = []
    received = 0
    started = time.monotonic()
    next_sample = started
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # A small receive buffer, so the client's kernel does not absorb a
        # large part of the body on its behalf.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head, _, body = read_head(sock).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"slow reader: unexpected answer {head[:200]!r}")
        received = len(body)
        while received < size:
            data = sock.recv(min(CHUNK, size - received))
            if not data:
                break
            received += len(data)
            now = time.monotonic()
            if now >= next_sample:
                value = rss(pid)
                if value is not None:
                    samples.append(value)
                next_sample = now + 0.5
            # Hold the pace: sleep until this many bytes are "due".
            due = started + received / (rate * MIB)
            if due > now:
                time.sleep(due - now)
    seconds = time.monotonic() - started
    return SlowReadResult(
        body_mib=mib,
        rate_mib_s=rate,
        received=received,
        complete=received == size,
        seconds=seconds,
        before_mib=before,
        samples_mib=samples,
        after_mib=rss(pid),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"trioproxy exited with status {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout}s")


def main() -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/slow_reader.py", description=__doc__)
    p.add_argument("--mib", type=int, default=1024, help="body size in MiB (1024)")
    p.add_argument("--rate", type=int, default=64, help="client read rate in MiB/s (64)")
    args = p.parse_args()
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp, origin(args.mib * MIB) as origin_port:
        listen, admin = _free_port(), _free_port()
        env = {
            **os.environ,
            "BENCH_LISTEN_PORT": str(listen),
            "BENCH_H2_LISTEN_PORT": str(_free_port()),
            "BENCH_ADMIN_PORT": str(admin),
            "BENCH_BACKEND_PORT": str(origin_port),
            "BENCH_ACCESS_LOG": str(Path(tmp) / "access.log"),
            "BENCH_ROUTE_TIMEOUT": "0",  # longer than Envoy's default 15 s
        }
        argv = [sys.executable, "-m", "trioproxy", "serve", str(here / "mesh.py"), "--workers", "1"]
        proc = subprocess.Popen(argv, env=env)
        try:
            _wait_ready(f"http://127.0.0.1:{admin}/ready", proc)
            result = slow_read(f"http://127.0.0.1:{listen}", proc.pid, mib=args.mib, rate=args.rate)
        finally:
            proc.terminate()
            proc.wait(10)
    print(result.describe())
    return 0 if result.complete else 1


if __name__ == "__main__":
    sys.exit(main())
