"""Trace-context headers, sans-IO: W3C `traceparent`/`tracestate` and B3
(`x-b3-*` multi-header and single-header `b3`), parsed and formatted.

Pure functions over header lists (lower-case byte pairs, as everywhere in
the proxy). No trio, no clock, no randomness: ids are made by the caller.

Rules (W3C Trace Context level 1; openzipkin/b3-propagation):
- ids are lower-case hex: trace id 32 digits (B3 also 16), span id 16;
  an all-zero id is invalid. Invalid headers are ignored, as if absent.
- `traceparent` is `00-<trace>-<span>-<flags>`; bit 0 of flags is
  "sampled". Version `ff` is invalid; a higher version is read by its
  first four fields. `tracestate` travels only with a valid `traceparent`.
- B3 `x-b3-sampled` is `1`/`0` (`true`/`false` accepted); `x-b3-flags: 1`
  is debug, which implies sampled. A sampling decision may come alone.
- single `b3` is `<trace>-<span>[-<sampling>[-<parent>]]` or `<sampling>`
  alone, where sampling is `1`, `0` or `d` (debug).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import attrs

__all__ = [
    "PROPAGATION_HEADERS",
    "Extracted",
    "SpanContext",
    "extract",
    "format_b3_single",
    "format_traceparent",
    "inject",
    "parse_b3_multi",
    "parse_b3_single",
    "parse_traceparent",
]

Headers = list[tuple[bytes, bytes]]

# Every header a format reads or writes; inject() replaces them all.
PROPAGATION_HEADERS: dict[str, tuple[bytes, ...]] = {
    "w3c": (b"traceparent", b"tracestate"),
    "b3": (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags"),
    "b3-single": (b"b3",),
}

_HEX = frozenset(b"0123456789abcdef")


@attrs.frozen(kw_only=True)
class SpanContext:
    """A span's identity as it travels: hex ids and the sampling decision."""

    trace_id: str  # 32 hex digits (16 for a 64-bit B3 trace id)
    span_id: str  # 16 hex digits
    parent_id: str | None = None  # B3 carries the caller's parent too
    sampled: bool | None = None  # None: no decision was made upstream
    debug: bool = False
    tracestate: bytes | None = None


@attrs.frozen(kw_only=True)
class Extracted:
    """What a request carried: a parent context, or a sampling decision only."""

    parent: SpanContext | None = None
    sampled: bool | None = None


def _is_id(value: bytes, *lengths: int) -> bool:
    return len(value) in lengths and _HEX.issuperset(value) and value.strip(b"0") != b""


def parse_traceparent(value: bytes, tracestate: bytes | None = None) -> SpanContext | None:
    """A `traceparent` value, or None if it is not valid."""
    v = value.strip().lower()
    if len(v) < 55 or (len(v) > 55 and (v[:2] == b"00" or v[55:56] != b"-")):
        return None
    version, trace, span, flags = v[:2], v[3:35], v[36:52], v[53:55]
    if v[2:3] != b"-" or v[35:36] != b"-" or v[52:53] != b"-":
        return None
    if not _is_hex(version) or version == b"ff" or not _is_hex(flags):
        return None
    if not _is_id(trace, 32) or not _is_id(span, 16):
        return None
    return SpanContext(
        trace_id=trace.decode(),
        span_id=span.decode(),
        sampled=bool(int(flags, 16) & 1),
        tracestate=tracestate or None,
    )


def _is_hex(value: bytes) -> bool:
    return bool(value) and _HEX.issuperset(value)


def format_traceparent(ctx: SpanContext) -> bytes:
    """`traceparent` for `ctx` (a 64-bit trace id is zero-padded to 128)."""
    flags = b"01" if ctx.sampled or ctx.debug else b"00"
    return b"00-%s-%s-%s" % (ctx.trace_id.rjust(32, "0").encode(), ctx.span_id.encode(), flags)


def _sampling(value: bytes) -> tuple[bool | None, bool] | None:
    """(sampled, debug) from a B3 sampling value; None if invalid."""
    v = value.strip().lower()
    if v in (b"1", b"true"):
        return True, False
    if v in (b"0", b"false"):
        return False, False
    if v == b"d":
        return True, True
    return None


def parse_b3_multi(headers: Sequence[tuple[bytes, bytes]]) -> Extracted:
    """The `x-b3-*` headers of a request."""
    found: dict[bytes, bytes] = {}
    for k, v in headers:
        if k.startswith(b"x-b3-"):
            found.setdefault(k, v.strip().lower())
    sampled: bool | None = None
    debug = found.get(b"x-b3-flags") == b"1"
    if debug:
        sampled = True
    elif b"x-b3-sampled" in found:
        s = _sampling(found[b"x-b3-sampled"])
        if s is not None and s != (True, True):
            sampled = s[0]
    trace = found.get(b"x-b3-traceid")
    span = found.get(b"x-b3-spanid")
    if trace is None or span is None or not _is_id(trace, 16, 32) or not _is_id(span, 16):
        return Extracted(sampled=sampled)
    parent = found.get(b"x-b3-parentspanid")
    if parent is not None and not _is_id(parent, 16):
        return Extracted(sampled=sampled)
    ctx = SpanContext(
        trace_id=trace.decode(),
        span_id=span.decode(),
        parent_id=parent.decode() if parent is not None else None,
        sampled=sampled,
        debug=debug,
    )
    return Extracted(parent=ctx, sampled=sampled)


def parse_b3_single(value: bytes) -> Extracted:
    """A single-header `b3` value; an invalid one yields nothing."""
    parts = value.strip().lower().split(b"-")
    if len(parts) == 1:
        s = _sampling(parts[0]) if parts[0] not in (b"true", b"false") else None
        return Extracted() if s is None else Extracted(sampled=s[0])
    if len(parts) > 4 or not _is_id(parts[0], 16, 32) or not _is_id(parts[1], 16):
        return Extracted()
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        s = _sampling(parts[2]) if parts[2] not in (b"true", b"false") else None
        if s is None:
            return Extracted()
        sampled, debug = s
    parent: str | None = None
    if len(parts) == 4:
        if not _is_id(parts[3], 16):
            return Extracted()
        parent = parts[3].decode()
    ctx = SpanContext(
        trace_id=parts[0].decode(),
        span_id=parts[1].decode(),
        parent_id=parent,
        sampled=sampled,
        debug=debug,
    )
    return Extracted(parent=ctx, sampled=sampled)


def format_b3_single(ctx: SpanContext) -> bytes:
    """`b3` for `ctx`: ids, the decision (`d` for debug), the parent."""
    out = f"{ctx.trace_id}-{ctx.span_id}"
    if ctx.debug:
        out += "-d"
    elif ctx.sampled is not None:
        out += "-1" if ctx.sampled else "-0"
    if ctx.parent_id is not None:
        if ctx.sampled is None and not ctx.debug:
            return out.encode()  # the parent may only follow a decision
        out += "-" + ctx.parent_id
    return out.encode()


def format_b3_multi(ctx: SpanContext) -> Headers:
    """The `x-b3-*` headers for `ctx`."""
    out: Headers = [
        (b"x-b3-traceid", ctx.trace_id.encode()),
        (b"x-b3-spanid", ctx.span_id.encode()),
    ]
    if ctx.parent_id is not None:
        out.append((b"x-b3-parentspanid", ctx.parent_id.encode()))
    if ctx.debug:
        out.append((b"x-b3-flags", b"1"))
    elif ctx.sampled is not None:
        out.append((b"x-b3-sampled", b"1" if ctx.sampled else b"0"))
    return out


_NOTHING = Extracted()


def extract(headers: Sequence[tuple[bytes, bytes]], formats: Iterable[str]) -> Extracted:
    """The incoming context from the first of `formats` the request carries
    (a valid context; failing that, the first sampling decision seen)."""
    formats = tuple(formats)
    names = _names(formats)
    if not any(k in names for k, _ in headers):
        return _NOTHING  # the common case at an edge: one scan, nothing built
    decision: bool | None = None
    for fmt in formats:
        if fmt == "w3c":
            tp: bytes | None = None
            ts: list[bytes] = []
            for k, v in headers:
                if k == b"traceparent" and tp is None:
                    tp = v
                elif k == b"tracestate":
                    ts.append(v)
            if tp is not None:
                ctx = parse_traceparent(tp, b",".join(ts) if ts else None)
                if ctx is not None:
                    return Extracted(parent=ctx, sampled=ctx.sampled)
            continue
        if fmt == "b3":
            got = parse_b3_multi(headers)
        else:
            got = Extracted()
            for k, v in headers:
                if k == b"b3":
                    got = parse_b3_single(v)
                    break
        if got.parent is not None:
            return got
        if decision is None:
            decision = got.sampled
    return Extracted(sampled=decision)


@functools.lru_cache(maxsize=16)
def _names(formats: tuple[str, ...]) -> frozenset[bytes]:
    """Every header name of `formats` (few distinct tuples: cached)."""
    return frozenset(h for f in formats for h in PROPAGATION_HEADERS[f])


def inject(headers: Headers, ctx: SpanContext, formats: Iterable[str]) -> Headers:
    """`headers` without any propagation header of `formats`, plus `ctx`
    written in each of them."""
    formats = tuple(formats)
    drop = _names(formats)
    out = [(k, v) for k, v in headers if k not in drop]
    for fmt in formats:
        if fmt == "w3c":
            out.append((b"traceparent", format_traceparent(ctx)))
            if ctx.tracestate:
                out.append((b"tracestate", ctx.tracestate))
        elif fmt == "b3":
            out.extend(format_b3_multi(ctx))
        else:
            out.append((b"b3", format_b3_single(ctx)))
    return out
