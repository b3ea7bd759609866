"""Trace-context headers and span encodings, sans-IO (no trio, no sockets).

A Hypothesis property formats any valid context in each format and parses
it back; hand-written cases cover the specs' invalid inputs and the
precedence between formats.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.observe.tracing.context import (
    SpanContext,
    extract,
    format_b3_single,
    format_traceparent,
    inject,
    parse_b3_multi,
    parse_b3_single,
    parse_traceparent,
)
from trioproxy.observe.tracing.encode import otlp_json, zipkin_json
from trioproxy.observe.tracing.span import Span

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def hex_id(digits: int) -> st.SearchStrategy[str]:
    return st.integers(1, 16**digits - 1).map(lambda n: f"{n:0{digits}x}")


contexts = st.builds(
    SpanContext,
    trace_id=st.one_of(hex_id(32), hex_id(16)),
    span_id=hex_id(16),
    parent_id=st.none() | hex_id(16),
    sampled=st.none() | st.booleans(),
    debug=st.booleans(),
)


def _expected_sampled(ctx: SpanContext) -> bool | None:
    return True if ctx.debug else ctx.sampled


@given(contexts)
def test_b3_multi_round_trip(ctx: SpanContext) -> None:
    got = extract(inject([(b"x-b3-traceid", b"stale")], ctx, ["b3"]), ["b3"])
    assert got.parent is not None
    assert (got.parent.trace_id, got.parent.span_id, got.parent.parent_id) == (
        ctx.trace_id,
        ctx.span_id,
        ctx.parent_id,
    )
    assert got.parent.debug == ctx.debug
    assert got.sampled == _expected_sampled(ctx)


@given(contexts)
def test_b3_single_round_trip(ctx: SpanContext) -> None:
    got = parse_b3_single(format_b3_single(ctx))
    assert got.parent is not None
    assert (got.parent.trace_id, got.parent.span_id) == (ctx.trace_id, ctx.span_id)
    decided = ctx.sampled is not None or ctx.debug
    # The spec lets the parent follow a sampling decision only.
    assert got.parent.parent_id == (ctx.parent_id if decided else None)
    assert got.sampled == _expected_sampled(ctx)


@given(contexts, st.none() | st.sampled_from([b"a=1", b"k=v,x=y"]))
def test_traceparent_round_trip(ctx: SpanContext, state: bytes | None) -> None:
    ctx = SpanContext(
        trace_id=ctx.trace_id,
        span_id=ctx.span_id,
        sampled=ctx.sampled,
        debug=ctx.debug,
        tracestate=state,
    )
    headers = inject([(b"traceparent", b"junk"), (b"other", b"1")], ctx, ["w3c"])
    assert [k for k, _ in headers].count(b"traceparent") == 1
    got = extract(headers, ["w3c"])
    assert got.parent is not None
    assert got.parent.trace_id == ctx.trace_id.rjust(32, "0")
    assert got.parent.span_id == ctx.span_id
    assert got.parent.sampled == bool(ctx.sampled or ctx.debug)
    assert got.parent.tracestate == state
    assert (b"other", b"1") in headers


@given(st.binary(max_size=80))
def test_parsers_never_raise(data: bytes) -> None:
    parse_traceparent(data)
    parse_b3_single(data)
    parse_b3_multi([(b"x-b3-traceid", data), (b"x-b3-spanid", data), (b"x-b3-sampled", data)])


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-" + TRACE.encode() + b"-" + SPAN.encode(),  # no flags
        b"ff-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01",  # version ff
        b"00-" + b"0" * 32 + b"-" + SPAN.encode() + b"-01",  # zero trace id
        b"00-" + TRACE.encode() + b"-" + b"0" * 16 + b"-01",  # zero span id
        b"00-" + TRACE.encode()[:-1] + b"g-" + SPAN.encode() + b"-01",  # not hex
        b"00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01-extra",  # v00 is exact
    ],
)
def test_invalid_traceparent(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_traceparent_future_version_and_case() -> None:
    ctx = parse_traceparent(b"01-" + TRACE.upper().encode() + b"-" + SPAN.encode() + b"-03-x")
    assert ctx is not None and ctx.trace_id == TRACE and ctx.sampled is True
    assert format_traceparent(ctx) == f"00-{TRACE}-{SPAN}-01".encode()


@pytest.mark.parametrize(
    ("value", "sampled", "has_parent"),
    [
        (b"0", False, False),
        (b"1", True, False),
        (b"d", True, False),
        (f"{TRACE}-{SPAN}".encode(), None, True),
        (f"{TRACE}-{SPAN}-0-{SPAN}".encode(), False, True),
        (f"{TRACE}-{SPAN}-x".encode(), None, False),
        (f"{TRACE}-zz".encode(), None, False),
        (b"true", None, False),
    ],
)
def test_b3_single_cases(value: bytes, sampled: bool | None, has_parent: bool) -> None:
    got = parse_b3_single(value)
    assert got.sampled == sampled
    assert (got.parent is not None) == has_parent


def test_b3_multi_decision_only_and_flags() -> None:
    assert parse_b3_multi([(b"x-b3-sampled", b"0")]).sampled is False
    got = parse_b3_multi(
        [
            (b"x-b3-traceid", TRACE[:16].encode()),
            (b"x-b3-spanid", SPAN.encode()),
            (b"x-b3-flags", b"1"),
        ]
    )
    assert got.parent is not None and got.parent.debug and got.sampled is True
    # A bad parent id invalidates the context.
    bad = parse_b3_multi(
        [
            (b"x-b3-traceid", TRACE.encode()),
            (b"x-b3-spanid", SPAN.encode()),
            (b"x-b3-parentspanid", b"xyz"),
        ]
    )
    assert bad.parent is None


def test_extract_prefers_configured_order() -> None:
    other = "1" * 32
    headers = [
        (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        (b"x-b3-traceid", other.encode()),
        (b"x-b3-spanid", SPAN.encode()),
    ]
    w3c = extract(headers, ["w3c", "b3"]).parent
    b3 = extract(headers, ["b3", "w3c"]).parent
    assert w3c is not None and w3c.trace_id == TRACE
    assert b3 is not None and b3.trace_id == other
    # A format that is not configured is not read.
    assert extract(headers, ["b3-single"]).parent is None
    # An invalid first format falls back to the next valid one.
    broken = [(b"traceparent", b"nonsense"), *headers[1:]]
    got = extract(broken, ["w3c", "b3"]).parent
    assert got is not None and got.trace_id == other


def test_inject_replaces_every_format_header() -> None:
    ctx = SpanContext(trace_id=TRACE, span_id=SPAN, parent_id="1" * 16, sampled=False)
    headers = inject(
        [(b"b3", b"old"), (b"x-b3-sampled", b"1"), (b"x-b3-flags", b"1"), (b"host", b"h")],
        ctx,
        ["b3", "b3-single"],
    )
    assert headers == [
        (b"host", b"h"),
        (b"x-b3-traceid", TRACE.encode()),
        (b"x-b3-spanid", SPAN.encode()),
        (b"x-b3-parentspanid", b"1" * 16),
        (b"x-b3-sampled", b"0"),
        (b"b3", f"{TRACE}-{SPAN}-0-{'1' * 16}".encode()),
    ]


def _span(kind: str = "SERVER") -> Span:
    s = Span(
        trace_id=TRACE,
        span_id=SPAN,
        parent_id="1" * 16,
        name="ingress",
        kind=kind,  # type: ignore[arg-type]
        start_us=1_700_000_000_000_000,
        shared=kind == "SERVER",
    )
    s.duration_us = 1500
    s.tags.update({"http.status_code": "503", "error": "true", "component": "proxy"})
    s.error = True
    s.remote_ip, s.remote_port = "::1", 8080
    return s


def test_zipkin_json_shape() -> None:
    [obj] = json.loads(zipkin_json([_span()], "svc"))
    assert obj == {
        "traceId": TRACE,
        "id": SPAN,
        "parentId": "1" * 16,
        "name": "ingress",
        "kind": "SERVER",
        "timestamp": 1_700_000_000_000_000,
        "duration": 1500,
        "localEndpoint": {"serviceName": "svc"},
        "remoteEndpoint": {"ipv6": "::1", "port": 8080},
        "tags": {"http.status_code": "503", "error": "true", "component": "proxy"},
        "shared": True,
    }


def test_otlp_json_shape() -> None:
    body = json.loads(otlp_json([_span("CLIENT")], "svc", "1.0"))
    [rs] = body["resourceSpans"]
    [ss] = rs["scopeSpans"]
    assert ss["scope"] == {"name": "trioproxy", "version": "1.0"}
    [span] = ss["spans"]
    assert span["kind"] == 3
    assert span["traceId"] == TRACE and span["spanId"] == SPAN
    assert span["parentSpanId"] == "1" * 16
    assert span["startTimeUnixNano"] == "1700000000000000000"
    assert span["endTimeUnixNano"] == "1700000000001500000"
    assert span["status"] == {"code": 2}
    attrs = {a["key"]: a["value"] for a in span["attributes"]}
    assert attrs["http.status_code"] == {"intValue": "503"}
    assert attrs["error"] == {"boolValue": True}
    assert attrs["component"] == {"stringValue": "proxy"}
