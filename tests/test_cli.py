"""The command line, run as a real subprocess: `python -m trioproxy ...`.

These tests check the CLI surface (arguments, exit codes, what is printed
where, signals); the DSL's own error kinds are covered in
tests/test_dsl_compile.py. Mesh files are written to tmp_path; servers run
on free ports, and every subprocess is bounded by a timeout and killed in a
`finally`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import admin_live, poll_until, require_tool

REPO = Path(__file__).resolve().parent.parent
GREETING = "Hello from behind trioproxy (service 1)! hostname: "
# Generous bounds: a loaded CI machine may be slow to start Python.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------- helpers


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def free_ports(n: int) -> list[int]:
    """`n` distinct ports nothing listens on right now (bind to 0, read, close).

    All `n` sockets are held until every port is chosen, so no port repeats.
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def write_mesh(tmp_path: Path, text: str, name: str = "mesh.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def marker_line(path: Path, tag: str) -> int:
    """The line of `path` that ends with `# E:<tag>`."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# E:{tag}"):
            return number
    raise AssertionError(f"no # E:{tag} in {path}")


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert "ExceptionGroup" not in text, text


def front_proxy(tmp_path: Path, *, listener: int, admin: int, s1: int, s2: int) -> Path:
    """examples/front_proxy.py on the given ports."""
    return write_mesh(
        tmp_path,
        f"""
        from trioproxy.dsl import admin, cluster, demo_service, http, listener, mesh, prefix

        service1 = cluster("service1", "127.0.0.1:{s1}")
        service2 = cluster("service2", "127.0.0.1:{s2}")

        MESH = mesh(
            listener("ingress", "127.0.0.1:{listener}")
            .chain(http(stat_prefix="ingress_http").access_log("-"))
            .route(prefix("/service/1"), service1)
            .route(prefix("/service/2"), service2),
            admin("127.0.0.1:{admin}"),
            demo_service("service 1", "127.0.0.1:{s1}"),
            demo_service("service 2", "127.0.0.1:{s2}"),
        )
        """,
        name="front.py",
    )


class Proxy:
    """A running `trioproxy serve`, its output going to files in tmp_path."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_ready(self, admin_port: int) -> None:
        """Poll admin /ready until it says LIVE; fail if the process exits."""
        poll_until(
            lambda: admin_live(admin_port),
            f"admin on port {admin_port} to be ready",
            START_TIMEOUT,
            proc=self.proc,
            output=lambda: self.stderr,
        )

    def stop(self, signum: int) -> int:
        """Send `signum`, wait for the exit (bounded) and return the exit code."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {STOP_TIMEOUT}s of {signum}:\n{self.stderr}")


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[Proxy]:
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioproxy", "serve", *args],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    try:
        yield Proxy(proc, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


def curl(url: str) -> str:
    exe = require_tool("curl")
    done = subprocess.run(
        [exe, "--silent", "--show-error", "--fail", "--max-time", "10", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


GOOD = """
    from trioproxy.dsl import admin, cluster, direct_response, listener, mesh, path, prefix

    api = cluster("api", "127.0.0.1:9001", "127.0.0.1:9002")
    web = cluster("web", "127.0.0.1:9003")

    MESH = mesh(
        listener("ingress", "127.0.0.1:8000")
        .route(path("/health"), direct_response(200, "ok"))
        .route(prefix("/api"), api)
        .route(prefix("/"), web),
        listener("internal", "127.0.0.1:8002").route(prefix("/"), api),
        admin("127.0.0.1:9901"),
    )
"""


# --------------------------------------------------------------------------- --help


def test_top_level_help_lists_the_subcommands() -> None:
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: trioproxy")
    for command in ("serve", "validate", "show"):
        assert re.search(rf"^\s+{command}\s+\S", r.stdout, re.M), command


def test_version() -> None:
    from trioproxy import __version__

    r = run_cli("--version")
    assert (r.returncode, r.stdout) == (0, f"trioproxy {__version__}\n")


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("serve", ["MESH.py", "--admin", "--log-level", "--log-path", "--workers", "SIGTERM"]),
        ("validate", ["MESH.py", "file:line"]),
        ("show", ["MESH.py", "--json"]),
    ],
)
def test_subcommand_help(command: str, mentions: list[str]) -> None:
    r = run_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: trioproxy {command}")
    for text in mentions:
        assert text in r.stdout, text


def test_no_command_is_a_usage_error() -> None:
    r = run_cli()
    assert r.returncode == 2
    assert "usage: trioproxy" in r.stderr
    assert_no_traceback(r.stderr)


# --------------------------------------------------------------------------- validate


def test_validate_good_mesh_prints_a_summary(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, GOOD)
    r = run_cli("validate", str(mesh))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{mesh}: OK: 2 listeners, 4 routes, 2 clusters\n"
    assert r.stderr == ""


def test_validate_the_front_proxy_example() -> None:
    r = run_cli("validate", "examples/front_proxy.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "examples/front_proxy.py: OK: 1 listener, 2 routes, 2 clusters\n"


def test_validate_reports_every_error_with_its_line(tmp_path: Path) -> None:
    mesh = write_mesh(
        tmp_path,
        """
        \"\"\"Every kind of mistake, in one file: validate must report them all.\"\"\"

        from trioproxy.dsl import admin, cluster, listener, mesh, prefix, regex

        users = cluster("users", "127.0.0.1:9001")
        orders = cluster("orders", "127.0.0.1:9002", connect_timeout="5 secs")  # E:duration
        users_again = cluster("users", "127.0.0.1:9003")  # E:dup

        MESH = mesh(
            listener("ingress", "127.0.0.1:8000")  # E:first
            .route(prefix("/users"), "userz")  # E:unknown
            .route(regex("/orders/(["), orders),  # E:regex
            listener("other", ":8000").route(prefix("/"), users),  # E:port
            listener("bad", "not-an-address").route(prefix("/"), users),  # E:address
            users_again,
            admin("127.0.0.1:9901"),
        )
        """,
    )
    r = run_cli("validate", str(mesh))
    assert r.returncode == 1
    assert r.stdout == ""
    assert_no_traceback(r.stderr)

    def at(tag: str) -> str:
        return f"{mesh}:{marker_line(mesh, tag)}"

    expected = [
        f"{at('duration')}: bad duration '5 secs' for connect_timeout of cluster 'orders'",
        f"{at('dup')}: duplicate cluster 'users' with a different definition "
        f"(first defined at {mesh}:5)",
        f"{at('unknown')}: unknown cluster 'userz' (did you mean 'users'?)",
        f"{at('regex')}: bad regex '/orders/(['",
        f"{at('port')}: listener 'other' address 0.0.0.0:8000 clashes with listener 'ingress' "
        f"(127.0.0.1:8000 at {at('first')})",
        f"{at('address')}: bad address 'not-an-address' for listener 'bad'",
    ]
    lines = r.stderr.splitlines()
    assert lines[0] == f"{mesh}: 6 errors"
    issues = [line.strip() for line in lines[1:]]
    assert len(issues) == len(expected), r.stderr
    for got, want in zip(issues, expected, strict=True):
        assert got.startswith(want), f"{got!r} does not start with {want!r}"


def test_validate_syntax_error(tmp_path: Path) -> None:
    mesh = write_mesh(
        tmp_path,
        """
        from trioproxy.dsl import listener, mesh

        MESH = mesh(
            listener("ingress", ":8000") listener("x", ":8001")  # E:syntax
        )
        """,
    )
    r = run_cli("validate", str(mesh))
    assert r.returncode == 1
    assert_no_traceback(r.stderr)
    assert r.stderr.splitlines() == [
        f"{mesh}: 1 error",
        f"  {mesh}:{marker_line(mesh, 'syntax')}: SyntaxError: "
        "invalid syntax. Perhaps you forgot a comma?",
    ]


def test_validate_exception_while_importing(tmp_path: Path) -> None:
    mesh = write_mesh(
        tmp_path,
        """
        from trioproxy.dsl import cluster, listener, mesh, prefix

        PORTS = {"api": 9001}


        def backend(name: str) -> str:
            return f"127.0.0.1:{PORTS[name]}"  # E:raise


        MESH = mesh(listener("ingress", ":8000").route(prefix("/"), cluster("a", backend("web"))))
        """,
    )
    r = run_cli("validate", str(mesh))
    assert r.returncode == 1
    assert_no_traceback(r.stderr)
    assert r.stderr.splitlines() == [
        f"{mesh}: 1 error",
        f"  {mesh}:{marker_line(mesh, 'raise')}: KeyError: 'web'",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\n", "mesh file defines neither MESH nor build()"),
        ("MESH = 42\n", "MESH must be a mesh(...), got int"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ],
)
def test_validate_other_bad_files(tmp_path: Path, text: str, message: str) -> None:
    mesh = tmp_path / "mesh.py"
    mesh.write_text(text)
    r = run_cli("validate", str(mesh))
    assert r.returncode == 1
    assert_no_traceback(r.stderr)
    assert message in r.stderr
    assert f"{mesh}:" in r.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    r = run_cli("validate", str(missing))
    assert r.returncode == 1
    assert_no_traceback(r.stderr)
    assert f"mesh file not found: {missing}" in r.stderr


# --------------------------------------------------------------------------- show


def test_show_prints_a_tree(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, GOOD)
    r = run_cli("show", str(mesh))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"mesh {mesh}"
    out = r.stdout
    assert "\n    listener ingress 127.0.0.1:8000\n" in out
    assert "\n    listener internal 127.0.0.1:8002\n" in out
    assert re.search(r"^ +route .*prefix /api -> cluster api\b", out, re.M)
    assert re.search(r"^ +route .*path /health -> direct_response 200", out, re.M)
    assert "\n    cluster api lb=round_robin" in out
    assert "\n      endpoint 127.0.0.1:9002 weight=1\n" in out
    assert "\n  admin 127.0.0.1:9901\n" in out
    # Nested by indentation: every line deeper than the first.
    assert all(line.startswith("  ") for line in lines[1:])
    assert out.endswith("\n") and not out.endswith("\n\n")


def test_show_json(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, GOOD)
    r = run_cli("show", "--json", str(mesh))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [lc["name"] for lc in data["listeners"]] == ["ingress", "internal"]
    assert data["listeners"][0]["address"] == {"host": "127.0.0.1", "port": 8000}
    assert [c["name"] for c in data["clusters"]] == ["api", "web"]
    assert [e["address"]["port"] for e in data["clusters"][0]["endpoints"]] == [9001, 9002]
    assert data["admin"]["address"] == {"host": "127.0.0.1", "port": 9901}
    assert data["source"] == str(mesh)


def test_show_broken_mesh_fails_like_validate(tmp_path: Path) -> None:
    mesh = write_mesh(
        tmp_path,
        """
        from trioproxy.dsl import listener, mesh, prefix

        MESH = mesh(listener("ingress", ":8000").route(prefix("/"), "nowhere"))  # E:x
        """,
    )
    for args in (["show"], ["show", "--json"]):
        r = run_cli(*args, str(mesh))
        assert r.returncode == 1
        assert r.stdout == ""
        assert f"{mesh}:{marker_line(mesh, 'x')}: unknown cluster 'nowhere'" in r.stderr
        assert_no_traceback(r.stderr)


# --------------------------------------------------------------------------- serve


def test_serve_front_proxy_then_sigint(tmp_path: Path) -> None:
    require_tool("curl")
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    with serving(tmp_path, str(mesh)) as proxy:
        proxy.wait_ready(admin)
        body = curl(f"http://127.0.0.1:{port}/service/1")
        assert body.startswith(GREETING)
        assert body == f"{GREETING}{socket.gethostname()}\n"
        assert curl(f"http://127.0.0.1:{port}/service/2").startswith(
            "Hello from behind trioproxy (service 2)! hostname: "
        )

        # The admin counts what curl did, under Envoy's names.
        stats = dict(
            line.split(": ", 1)
            for line in curl(f"http://127.0.0.1:{admin}/stats?usedonly").splitlines()
        )
        assert stats["cluster.service1.upstream_rq_200"] == "1"
        assert stats["cluster.service2.upstream_rq_2xx"] == "1"
        assert stats["http.ingress_http.downstream_rq_total"] == "2"
        assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == "2"

        assert proxy.stop(signal.SIGINT) == 0
        # The access log went to stdout ("-"), the application log to stderr.
        assert '"GET /service/1 HTTP/1.1" 200' in proxy.stdout
        assert_no_traceback(proxy.stderr)
        assert "SIGINT received; draining" in proxy.stderr
    # Nothing listens any more. (SO_REUSEADDR: the proxy closed connections
    # first, so their TIME_WAIT entries still hold the ports, as for any server.)
    for p in (port, admin, s1, s2):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
            s.listen(1)


def test_serve_sigterm_stops_cleanly(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    with serving(tmp_path, str(mesh)) as proxy:
        proxy.wait_ready(admin)
        # A client holding an idle keep-alive connection does not delay the exit.
        with httpx.Client() as client:
            assert client.get(f"http://127.0.0.1:{port}/service/1").text.startswith(GREETING)
            assert proxy.stop(signal.SIGTERM) == 0
        assert_no_traceback(proxy.stderr)
        assert "SIGTERM received; draining" in proxy.stderr


def test_serve_quitquitquit(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    with serving(tmp_path, str(mesh)) as proxy:
        proxy.wait_ready(admin)
        r = httpx.post(f"http://127.0.0.1:{admin}/quitquitquit", timeout=5)
        assert (r.status_code, r.text) == (200, "OK\n")
        assert proxy.proc.wait(timeout=STOP_TIMEOUT) == 0
        assert_no_traceback(proxy.stderr)


def test_serve_admin_flag_overrides_the_mesh(tmp_path: Path) -> None:
    port, mesh_admin, s1, s2, flag_admin = free_ports(5)
    mesh = front_proxy(tmp_path, listener=port, admin=mesh_admin, s1=s1, s2=s2)
    with serving(tmp_path, str(mesh), "--admin", f"127.0.0.1:{flag_admin}") as proxy:
        proxy.wait_ready(flag_admin)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{mesh_admin}/ready", timeout=2)
        info = httpx.get(f"http://127.0.0.1:{flag_admin}/server_info", timeout=5).json()
        assert info["state"] == "LIVE"
        assert info["command_line_options"]["admin"] == f"127.0.0.1:{flag_admin}"
        assert info["command_line_options"]["mesh"] == str(mesh)
        assert proxy.stop(signal.SIGINT) == 0


def test_serve_log_path_and_level(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    log = tmp_path / "trioproxy.log"
    args = (str(mesh), "--log-path", str(log), "--log-level", "debug")
    with serving(tmp_path, *args) as proxy:
        proxy.wait_ready(admin)
        assert proxy.stop(signal.SIGINT) == 0
        assert proxy.stderr == ""  # the application log went to the file
        text = log.read_text()
    assert f"admin listening on 127.0.0.1:{admin}" in text
    assert f"live: ingress on 127.0.0.1:{port}" in text
    assert "[DEBUG]" in text  # e.g. the admin requests
    assert "admin GET /ready -> 200" in text
    assert "SIGINT received; draining" in text
    assert_no_traceback(text)
    for line in text.splitlines():
        assert re.match(r"\[[\d\- :,]+\]\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\]\[trioproxy", line)


def test_serve_default_level_is_info(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    with serving(tmp_path, str(mesh)) as proxy:
        proxy.wait_ready(admin)
        assert proxy.stop(signal.SIGINT) == 0
        assert "[INFO]" in proxy.stderr
        assert "[DEBUG]" not in proxy.stderr
    with serving(tmp_path, str(mesh), "--log-level", "error") as proxy:
        proxy.wait_ready(admin)
        assert proxy.stop(signal.SIGINT) == 0
        assert proxy.stderr == ""


def test_serve_workers_must_be_positive(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, GOOD)
    r = run_cli("serve", str(mesh), "--workers", "0", timeout=30)
    assert r.returncode == 2
    assert "--workers must be at least 1" in r.stderr
    assert_no_traceback(r.stderr)


def test_serve_bad_admin_address(tmp_path: Path) -> None:
    mesh = write_mesh(tmp_path, GOOD)
    r = run_cli("serve", str(mesh), "--admin", "nonsense", timeout=30)
    assert r.returncode == 2
    assert "bad --admin address 'nonsense'" in r.stderr


def test_serve_broken_mesh_binds_nothing(tmp_path: Path) -> None:
    [port] = free_ports(1)
    mesh = write_mesh(
        tmp_path,
        f"""
        from trioproxy.dsl import listener, mesh, prefix

        MESH = mesh(listener("ingress", "127.0.0.1:{port}").route(prefix("/"), "nowhere"))
        """,
    )
    r = run_cli("serve", str(mesh), timeout=30)
    assert r.returncode == 1
    assert f"{mesh}:3: unknown cluster 'nowhere'" in r.stderr
    assert_no_traceback(r.stderr)


def test_serve_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    port, admin, s1, s2 = free_ports(4)
    mesh = front_proxy(tmp_path, listener=port, admin=admin, s1=s1, s2=s2)
    with socket.socket() as busy:  # no SO_REUSEPORT: the proxy cannot share it
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        r = run_cli("serve", str(mesh), timeout=30)
    assert r.returncode == 1
    assert_no_traceback(r.stderr)
    assert (
        f"trioproxy: cannot start: listener 'ingress' cannot listen on 127.0.0.1:{port}: "
        f"{os.strerror(errno.EADDRINUSE)}"
    ) in r.stderr


def _wait_for_text(path: Path, text: str) -> str:
    """Poll `path` (written by the subprocess's flusher) until it has `text`."""
    poll_until(
        lambda: path.exists() and text in path.read_text(),
        f"{text!r} in {path}",
        timeout=START_TIMEOUT,
    )
    return path.read_text()


def test_serve_sigusr1_reopens_access_log_files(tmp_path: Path) -> None:
    port, admin, s1 = free_ports(3)
    log = tmp_path / "access.log"
    mesh = write_mesh(
        tmp_path,
        f"""
        from trioproxy.dsl import admin, cluster, demo_service, http, listener, mesh, prefix

        svc = cluster("svc", "127.0.0.1:{s1}")
        MESH = mesh(
            listener("ingress", "127.0.0.1:{port}")
            .chain(http(stat_prefix="ingress_http").access_log({str(log)!r}, "%REQ(:PATH)%\\n"))
            .route(prefix("/"), svc),
            admin("127.0.0.1:{admin}"),
            demo_service("svc", "127.0.0.1:{s1}"),
        )
        """,
    )
    with serving(tmp_path, str(mesh)) as proxy:
        proxy.wait_ready(admin)
        with httpx.Client() as client:
            assert client.get(f"http://127.0.0.1:{port}/before").status_code == 200
            _wait_for_text(log, "/before\n")
            rotated = tmp_path / "access.log.1"
            os.rename(log, rotated)
            proxy.proc.send_signal(signal.SIGUSR1)
            # The signal is handled asynchronously: retry until a line lands
            # in the new file (each request is logged somewhere, never lost).
            n = 0

            def one_more_request_then_reopened() -> bool:
                nonlocal n
                n += 1
                assert client.get(f"http://127.0.0.1:{port}/after{n}").status_code == 200
                return log.exists()

            poll_until(one_more_request_then_reopened, "the reopened access log", START_TIMEOUT)
            text = _wait_for_text(log, f"/after{n}\n")
        assert "/before" not in text
        old = rotated.read_text().splitlines()
        new = text.splitlines()
        assert old[0] == "/before"
        assert sorted(old[1:] + new) == sorted(f"/after{i}" for i in range(1, n + 1))
        assert proxy.stop(signal.SIGTERM) == 0
        assert "SIGUSR1 received; reopening access logs" in proxy.stderr
        assert_no_traceback(proxy.stderr)
