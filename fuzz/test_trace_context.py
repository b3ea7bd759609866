"""Invariant: whatever trace-context headers a client sends, extracting never
raises, and the context the proxy would send on is valid and reads back as
the same trace, span and decision in every format.

For header values that are random bytes, or valid `traceparent` / `b3` /
`x-b3-*` values mutated by one byte, truncated or re-cased:

1. `extract` returns a context or none, and raises nothing;
2. a context it returns has lower-case hex ids of the right lengths;
3. `inject`ing it in all three formats and extracting each format alone
   gives the same trace id (W3C zero-pads a 64-bit one), span id and
   sampling decision (debug implies sampled).

The budget is ten times `TRIOPROXY_FUZZ_EXAMPLES` (a cheap, pure target).
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.conftest import fuzz_settings, time_capped
from trioproxy.observe.tracing.context import extract, inject

VALID = [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    b"80f198ee56343ba8-e457b5a2e4d86bd1-d",
    b"e457b5a2e4d86bd1",
    b"1",
]
NAMES = [
    b"traceparent",
    b"tracestate",
    b"b3",
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-parentspanid",
    b"x-b3-sampled",
    b"x-b3-flags",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["keep", "flip", "cut", "upper"]))
    if how == "flip" and value:
        i = draw(st.integers(0, len(value) - 1))
        value[i] = draw(st.integers(0, 255))
    elif how == "cut":
        del value[draw(st.integers(0, len(value))) :]
    elif how == "upper":
        value = bytearray(bytes(value).upper())
    return bytes(value)


HEADERS = st.lists(
    st.tuples(st.sampled_from(NAMES), st.one_of(st.binary(max_size=70), mutated())),
    max_size=8,
)
FORMATS = st.permutations(["w3c", "b3", "b3-single"]).flatmap(
    lambda p: st.integers(1, 3).map(lambda n: p[:n])
)


@fuzz_settings(scale=10)
@given(HEADERS, FORMATS)
@example([(b"traceparent", VALID[0]), (b"tracestate", b"a=1")], ["w3c", "b3"])
@example([(b"b3", VALID[1]), (b"x-b3-sampled", b"0")], ["b3", "b3-single"])
@example([(b"x-b3-traceid", b"80f198ee56343ba8"), (b"x-b3-spanid", VALID[3])], ["b3"])
@example([(b"b3", b"d")], ["b3-single", "w3c", "b3"])
@time_capped
def test_extracted_contexts_travel_unchanged(
    headers: list[tuple[bytes, bytes]], formats: list[str]
) -> None:
    got = extract(headers, formats)
    ctx = got.parent
    if ctx is None:
        return
    assert re.fullmatch(r"[0-9a-f]{16}|[0-9a-f]{32}", ctx.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", ctx.span_id)
    assert ctx.parent_id is None or re.fullmatch(r"[0-9a-f]{16}", ctx.parent_id)
    out = inject(list(headers), ctx, ["w3c", "b3", "b3-single"])
    decision = True if ctx.debug else ctx.sampled
    for fmt in ("w3c", "b3", "b3-single"):
        back = extract(out, [fmt]).parent
        assert back is not None, fmt
        assert back.span_id == ctx.span_id
        if fmt == "w3c":
            assert back.trace_id == ctx.trace_id.rjust(32, "0")
            assert back.sampled == bool(decision)
        else:
            assert back.trace_id == ctx.trace_id
            assert back.sampled == decision
