"""The benchmark mesh every harness drives (issue 8).

    BENCH_LISTEN_PORT=28090 BENCH_BACKEND_PORT=28080 trioproxy serve benchmarks/mesh.py

- an HTTP/1.1 listener on 127.0.0.1:$BENCH_LISTEN_PORT (default 28090)
  proxying every path through a route and a round-robin cluster to the origin
  127.0.0.1:$BENCH_BACKEND_PORT (default 28080), access log to a file, stats on;
- an h2c-capable listener (codec "auto") on 127.0.0.1:$BENCH_H2_LISTEN_PORT
  (default 28190) to the same origin;
- admin on 127.0.0.1:$BENCH_ADMIN_PORT (default 28901), whose /ready and
  /stats the harness reads.

The access log goes to $BENCH_ACCESS_LOG (default: bench-access.log in the
system's temporary directory). The ports and the path are read here, from
the environment, so any harness can drive the same mesh.
"""

import os
import tempfile

from trioproxy.dsl import admin, cluster, http, listener, mesh, prefix


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


LISTEN_PORT = _port("BENCH_LISTEN_PORT", 28090)
BACKEND_PORT = _port("BENCH_BACKEND_PORT", 28080)
H2_LISTEN_PORT = _port("BENCH_H2_LISTEN_PORT", 28190)
ADMIN_PORT = _port("BENCH_ADMIN_PORT", 28901)
ACCESS_LOG = os.environ.get(
    "BENCH_ACCESS_LOG", os.path.join(tempfile.gettempdir(), "bench-access.log")
)

origin = cluster("origin", f"127.0.0.1:{BACKEND_PORT}", lb="round_robin")

MESH = mesh(
    listener("bench", f"127.0.0.1:{LISTEN_PORT}")
    .chain(http(stat_prefix="bench", codec="http1").access_log(ACCESS_LOG))
    .route(prefix("/"), origin),
    listener("bench_h2", f"127.0.0.1:{H2_LISTEN_PORT}")
    .chain(http(stat_prefix="bench_h2", codec="auto").access_log(ACCESS_LOG))
    .route(prefix("/"), origin),
    admin(f"127.0.0.1:{ADMIN_PORT}"),
)
