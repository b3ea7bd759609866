"""The benchmark mesh every harness drives (issue 8).

    BENCH_LISTEN_PORT=28090 BENCH_BACKEND_PORT=28080 trioproxy serve benchmarks/mesh.py

- an HTTP/1.1 listener on 127.0.0.1:$BENCH_LISTEN_PORT (default 28090)
  proxying every path through a route and a round-robin cluster to the origin
  127.0.0.1:$BENCH_BACKEND_PORT (default 28080), access log to a file, stats on;
- an h2c-capable listener (codec "auto") on 127.0.0.1:$BENCH_H2_LISTEN_PORT
  (default 28190) to the same origin;
- when $BENCH_H2_UPSTREAM_PORT is set (an h2c origin there), a third
  listener on 127.0.0.1:$BENCH_H2H2_LISTEN_PORT (default 28191) to a
  cluster of that origin over HTTP/2 (h2 -> h2);
- admin on 127.0.0.1:$BENCH_ADMIN_PORT (default 28901), whose /ready and
  /stats the harness reads.

The access log goes to $BENCH_ACCESS_LOG (default: bench-access.log in the
system's temporary directory). The ports and the path are read here, from
the environment, so any harness can drive the same mesh.

Observability switches, so a harness can measure what each costs (bench.py
runs each as a variant of the proxied case, see its VARIANTS):

- BENCH_ACCESS_LOG=off: no access log on either listener (stats stay on;
  the stats store has no off switch);
- BENCH_STATSD=on: also flush stats every 5 s to a StatsD sink at
  127.0.0.1:$BENCH_STATSD_PORT (default 8125);
- BENCH_TRACING=on: trace every request (100 % sampling, B3 and W3C
  propagation) and export Zipkin v2 JSON to 127.0.0.1:$BENCH_ZIPKIN_PORT
  (default 9411). With no collector there, every span is still built,
  sampled and encoded, and the reports fail (counted) off the request path.

And a codec switch: BENCH_HTTP1_PARSER=h11 or httptools picks who reads
HTTP/1.1 heads, requests and responses alike (unset: the default).

A new switch is one more `if` in `_http()` below and one line in
bench.py's VARIANTS.

BENCH_ROUTE_TIMEOUT=S sets the HTTP/1.1 listener's route timeout (default
Envoy's 15 s; 0: none): the slow-reader run reads for longer than 15 s.

Reloads (issue 6's benchmark variant): when $BENCH_FLIP_FILE names a file
containing "b", the HTTP/1.1 listener routes to the cluster `origin_b` (the
same origin under another name) instead of `origin`; bench.py flips the file
and POSTs /reload while wrk loads the listener, so each reload changes a
route and adds or removes a cluster.
"""

import os
import tempfile
from typing import Literal

from trioproxy.dsl import HttpBuilder, admin, cluster, http, listener, mesh, prefix, statsd


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


LISTEN_PORT = _port("BENCH_LISTEN_PORT", 28090)
BACKEND_PORT = _port("BENCH_BACKEND_PORT", 28080)
H2_LISTEN_PORT = _port("BENCH_H2_LISTEN_PORT", 28190)
ADMIN_PORT = _port("BENCH_ADMIN_PORT", 28901)
ACCESS_LOG = os.environ.get(
    "BENCH_ACCESS_LOG", os.path.join(tempfile.gettempdir(), "bench-access.log")
)

STATSD = os.environ.get("BENCH_STATSD") == "on"
STATSD_PORT = _port("BENCH_STATSD_PORT", 8125)

TRACING = os.environ.get("BENCH_TRACING") == "on"
HTTP1_PARSER = os.environ.get("BENCH_HTTP1_PARSER")
ZIPKIN_PORT = _port("BENCH_ZIPKIN_PORT", 9411)


def _http(stat_prefix: str, codec: Literal["http1", "auto"]) -> HttpBuilder:
    """The HTTP chain of a listener, with the observability switched on."""
    chain = http(stat_prefix=stat_prefix, codec=codec)
    if HTTP1_PARSER:
        chain = http(stat_prefix=stat_prefix, codec=codec, http1_parser=HTTP1_PARSER)  # type: ignore[arg-type]
    if ACCESS_LOG != "off":
        chain = chain.access_log(ACCESS_LOG)
    if TRACING:
        chain = chain.tracing(
            "zipkin", f"127.0.0.1:{ZIPKIN_PORT}", propagation=["b3", "w3c"], random_sampling=100
        )
    return chain


origin = cluster("origin", f"127.0.0.1:{BACKEND_PORT}", lb="round_robin")
if HTTP1_PARSER:
    origin = origin.http1(parser=HTTP1_PARSER)  # type: ignore[arg-type]
ROUTE_TIMEOUT = float(os.environ.get("BENCH_ROUTE_TIMEOUT", "15"))
FLIP_FILE = os.environ.get("BENCH_FLIP_FILE")
FLIPPED = False
if FLIP_FILE and os.path.exists(FLIP_FILE):
    with open(FLIP_FILE) as f:
        FLIPPED = f.read().strip() == "b"
bench_target = (
    cluster("origin_b", f"127.0.0.1:{BACKEND_PORT}", lb="round_robin") if FLIPPED else origin
)

MESH = mesh(
    listener("bench", f"127.0.0.1:{LISTEN_PORT}")
    .chain(_http("bench", "http1"))
    .route(prefix("/"), bench_target, timeout=ROUTE_TIMEOUT),
    listener("bench_h2", f"127.0.0.1:{H2_LISTEN_PORT}")
    .chain(_http("bench_h2", "auto"))
    .route(prefix("/"), origin),
    admin(f"127.0.0.1:{ADMIN_PORT}"),
)
H2_UPSTREAM_PORT = os.environ.get("BENCH_H2_UPSTREAM_PORT")
if H2_UPSTREAM_PORT:
    origin_h2 = cluster("origin_h2", f"127.0.0.1:{H2_UPSTREAM_PORT}", lb="round_robin").http2()
    MESH = MESH.add(
        listener("bench_h2h2", f"127.0.0.1:{_port('BENCH_H2H2_LISTEN_PORT', 28191)}")
        .chain(_http("bench_h2h2", "auto"))
        .route(prefix("/"), origin_h2)
    )
if STATSD:
    MESH = MESH.add(statsd(f"127.0.0.1:{STATSD_PORT}"))
