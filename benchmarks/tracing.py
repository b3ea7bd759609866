"""Micro-benchmark of tracing's request-path and export costs (no I/O).

    python benchmarks/tracing.py [--requests 20000] [--rounds 3]

Per request, what the HTTP connection manager and the router call when an
HCM traces: the sampling decision, context extraction, a server span, one
client span, header injection and both finishes (with the bounded queue
append), sampled at 100 % and at 0 %; then the JSON encoding cost per span
for Zipkin v2 and OTLP. Prints the best of `--rounds` (the machine is
shared; the best run is the least disturbed), minus the loop's own cost.
"""

from __future__ import annotations

import argparse
import time

import trio

from trioproxy.codec.stream import RequestHead, StreamInfo
from trioproxy.config import SocketAddress, Tracing
from trioproxy.net.network import TrioNetwork
from trioproxy.observe.stats import StatsStore
from trioproxy.observe.tracing.encode import otlp_json, zipkin_json
from trioproxy.observe.tracing.exporter import SpanExporter
from trioproxy.observe.tracing.span import Span
from trioproxy.observe.tracing.tracer import Tracer


def _request(i: int) -> tuple[RequestHead, StreamInfo]:
    head = RequestHead(
        method=b"GET",
        path=b"/a",
        authority=b"h",
        headers=[
            (b"host", b"h"),
            (b"user-agent", b"bench"),
            (b"x-request-id", b"%d" % i),
            (b"accept", b"*/*"),
        ],
    )
    info = StreamInfo(
        start_time=time.time(),
        start_monotonic=trio.current_time(),
        downstream_remote_address="127.0.0.1:5555",
    )
    info.request = head
    info.response_code = 200
    info.upstream_cluster = "svc"
    info.upstream_host = "127.0.0.1:8080"
    return head, info


def _tracer(sampling: float) -> Tracer:
    cfg = Tracing(
        provider="zipkin",
        collector=SocketAddress(host="127.0.0.1", port=9),
        random_sampling=sampling,
        max_queue_spans=10**7,
    )
    stats = StatsStore()
    return Tracer(cfg, SpanExporter(cfg, TrioNetwork(), stats), stats, "bench", node_id="n")


def _run(tracer: Tracer | None, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        head, info = _request(i)
        if tracer is not None:
            span = tracer.start_server(head, info, trusted=True)
            client = span.start_client("svc", "127.0.0.1:8080")
            client.inject(head)
            client.finish_client(200, "HTTP/1.1")
            span.finish_server()
    return (time.perf_counter() - t0) / n * 1e6


async def main(n: int, rounds: int) -> None:
    base = min(_run(None, n) for _ in range(rounds))
    for sampling in (100.0, 0.0):
        best = min(_run(_tracer(sampling), n) for _ in range(rounds))
        print(f"request path, sampled {sampling:g} %: {best - base:6.1f} us per request")
    tracer = _tracer(100.0)
    _run(tracer, 1000)
    spans: list[Span] = list(tracer.exporter._queue)
    for name, encode in (("zipkin", zipkin_json), ("otlp", otlp_json)):
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            encode(spans, "svc")
            best = min(best, (time.perf_counter() - t0) / len(spans) * 1e6)
        print(f"encode {name:6s}: {best:6.1f} us per span")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.requests, args.rounds)
