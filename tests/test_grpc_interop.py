"""gRPC's official interop cases through the proxy, over an h2c front and a
TLS front (ALPN h2, the interop suite's own test certificate).

Debian's `ruby-grpc` ships grpc's own interop client and server
(`src/ruby/pb/test/client.rb`, `server.rb`). The server binds 0.0.0.0; a
small preload (`_LOOPBACK`) makes it bind 127.0.0.1. Each case runs the
client against the proxy, which routes `grpc()` to the server over HTTP/2.
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import IN_CI, grpc_mesh, poll_until, start_proxy
from trioproxy.config import (
    Mesh,
)

CASES = [
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
]

_LOOPBACK = """\
require 'grpc'
module BindLoopback
  def add_http2_port(host, creds)
    super(host.sub('0.0.0.0', '127.0.0.1'), creds)
  end
end
GRPC::RpcServer.prepend(BindLoopback)
"""


def _exited_stderr(proc: subprocess.Popen[bytes]) -> str:
    """The end of a piped stderr: readable to its end only once it exited."""
    if proc.poll() is None or proc.stderr is None:
        return ""
    return proc.stderr.read().decode(errors="replace")[-2000:]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _interop_dir() -> Path:
    patterns = [
        "/usr/lib/*/rubygems-integration/*/gems/grpc-*/src/ruby/pb/test",
        "/usr/share/rubygems-integration/*/gems/grpc-*/src/ruby/pb/test",
        "/var/lib/gems/*/gems/grpc-*/src/ruby/pb/test",
    ]
    for pattern in patterns:
        for d in sorted(glob.glob(pattern)):
            if os.path.exists(os.path.join(d, "client.rb")):
                return Path(d)
    msg = "gRPC's ruby interop client/server not found (apt-get install ruby-grpc)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def interop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    d = _interop_dir()
    preload = tmp_path_factory.mktemp("interop") / "loopback.rb"
    preload.write_text(_LOOPBACK)
    port = _free_port()
    proc = subprocess.Popen(
        ["ruby", f"-r{preload}", str(d / "server.rb"), f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        poll_until(
            lambda: _accepts(port),
            "the interop server to listen",
            20,
            proc=proc,
            output=lambda: (
                proc.stderr.read().decode()[-2000:]
                if proc.poll() is not None and proc.stderr
                else ""
            ),
        )
        yield d, port
    finally:
        proc.kill()
        proc.wait()


def _tls_mesh(d: Path, backend_port: int) -> Mesh:
    """The TLS front: grpc's test server certificate (server1.pem, for
    *.test.google.fr, signed by the suite's test CA), ALPN h2."""
    from trioproxy.dsl import cluster as dsl_cluster
    from trioproxy.dsl import grpc, http, listener, mesh, tls

    testdata = d.parent.parent / "spec" / "testdata"
    backend = dsl_cluster("grpc_backend", f"127.0.0.1:{backend_port}").http2()
    return mesh(
        listener("ingress", "127.0.0.1:0")
        .chain(
            http(stat_prefix="ingress_http"),
            tls=tls(str(testdata / "server1.pem"), str(testdata / "server1.key")),
        )
        .route(grpc(), backend, timeout=0)
    ).compile()


@pytest.mark.parametrize("front", ["h2c", "tls"])
@pytest.mark.parametrize("case", CASES)
async def test_interop_case(
    nursery: trio.Nursery, interop_server: tuple[Path, int], case: str, front: str
) -> None:
    d, backend_port = interop_server
    mesh = (
        grpc_mesh(f"127.0.0.1:{backend_port}", timeout=0.0)
        if front == "h2c"
        else _tls_mesh(d, backend_port)
    )
    server = await start_proxy(nursery, mesh)
    port = server.listener_address("ingress").port
    tls_args = (
        ["--use_tls=true", "--use_test_ca=true", "--server_host_override=foo.test.google.fr"]
        if front == "tls"
        else []
    )
    with trio.fail_after(60):
        result = await trio.run_process(
            [
                "ruby",
                str(d / "client.rb"),
                "--server_host=127.0.0.1",
                f"--server_port={port}",
                f"--test_case={case}",
                *tls_args,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, out[-3000:]
    assert f'"OK: {case}"' in out
