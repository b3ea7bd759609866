"""Invariant: an access-log format either parses, compiles and formats any
stream info without raising, or raises FormatError with a message and a
position inside the format.

For drawn format strings (valid operators with drawn arguments and `:N`
lengths, literal text with `%%` and stray `%`, malformed operators: lower
case, unterminated, bad lengths, arguments where none are allowed, bad
header names, unsupported START_TIME directives; and raw text):

1. `parse` returns tokens or raises `FormatError` (a `ValueError`) whose
   `message` is non-empty and whose `position` indexes the format; nothing
   else escapes, and `compile_format` / `compile_json_format` agree with it;
2. a format that parses compiles as text and as a `json_format` field, and
   formatting a drawn `StreamInfo` (odd start times included: NaN, huge,
   negative) returns a `str` (valid JSON for `json_format`), never raises;
3. round trip: writing the tokens back as a format string (`unparse` below,
   the module offers none) and parsing it again gives the same tokens.
"""

from __future__ import annotations

import json

import attrs
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.conftest import fuzz_settings, time_capped
from trioproxy.codec.access_log_format import (
    OPERATOR_NAMES,
    FormatError,
    Operator,
    Text,
    Token,
    compile_format,
    compile_json_format,
    parse,
)
from trioproxy.codec.stream import RequestHead, ResponseHead, StreamInfo

HEADER_OPS = ["REQ", "RESP", "TRAILER"]
HEADER_NAMES = st.one_of(
    st.sampled_from([":method", ":path", "user-agent", "X-Request-Id", "host", "content-length"]),
    st.text(alphabet="abcXYZ-_:0?", min_size=0, max_size=12),
    st.text(max_size=6),
)
TIME_PIECES = st.lists(
    st.one_of(
        st.sampled_from(["%Y", "%m", "%d", "%H:%M:%S", "%s", "%f", "%3f", "%9f", "%z", "%%", "T"]),
        st.sampled_from(["%k", "%Q", "%0f", "%", "%E", "%10f"]),  # unsupported
        st.text(alphabet="abc -:.", max_size=3),
    ),
    max_size=5,
).map("".join)


@st.composite
def operator_text(draw: st.DrawFn) -> str:
    """One `%...%` operator, valid or not."""
    name = draw(
        st.one_of(
            st.sampled_from(sorted(OPERATOR_NAMES)),
            st.sampled_from(["UNKNOWN", "req", "START_TIME2", "", "A B"]),
        )
    )
    arg = ""
    kind = draw(st.sampled_from(["none", "header", "time", "junk"]))
    if kind == "header" or (kind == "none" and name in HEADER_OPS and draw(st.booleans())):
        names = draw(st.lists(HEADER_NAMES, min_size=1, max_size=3))
        arg = "(" + "?".join(names) + ")"
    elif kind == "time":
        arg = "(" + draw(TIME_PIECES) + ")"
    elif kind == "junk":
        arg = draw(st.sampled_from(["(", "()", "(a", "(a)b", "(a)(b)"]))
    length = draw(
        st.one_of(
            st.just(""),
            st.integers(1, 50).map(lambda n: f":{n}"),
            st.sampled_from([":0", ":", ":x", ":-1", ":0007", ":" + "9" * 12]),
        )
    )
    close = draw(st.sampled_from(["%", "%", "%", "", "%%"]))
    return f"%{name}{arg}{length}{close}"


FORMATS = st.one_of(
    st.lists(
        st.one_of(
            operator_text(),
            st.text(alphabet="ab %\n\t()é", max_size=8),
            st.just("%%"),
        ),
        max_size=6,
    ).map("".join),
    st.text(max_size=40),
)


def unparse(tokens: tuple[Token, ...]) -> str:
    """The format string that `parse` reads back as `tokens`."""
    out = []
    for t in tokens:
        if isinstance(t, Text):
            out.append(t.text.replace("%", "%%"))
        else:
            arg = "" if t.arg is None else f"({t.arg})"
            length = "" if t.max_length is None else f":{t.max_length}"
            out.append(f"%{t.name}{arg}{length}%")
    return "".join(out)


def _unplaced(tokens: tuple[Token, ...]) -> tuple[Token, ...]:
    return tuple(attrs.evolve(t, position=0) if isinstance(t, Operator) else t for t in tokens)


HEADERS = st.lists(
    st.tuples(
        st.sampled_from([b"user-agent", b"x-request-id", b"content-length", b"x-a"]),
        st.binary(max_size=10),
    ),
    max_size=4,
)


@st.composite
def stream_infos(draw: st.DrawFn) -> StreamInfo:
    info = StreamInfo(
        start_time=draw(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.floats(0, 4e9),
                st.sampled_from([0.0, -1.5, 1e20, 253402300800.0]),
            )
        ),
        start_monotonic=draw(st.floats(0, 1e6)),
        protocol=draw(st.sampled_from(["HTTP/1.1", "HTTP/2", ""])),
        downstream_remote_address=draw(
            st.sampled_from(["", "1.2.3.4:5", "[::1]:80", "::1", "[bad", "a:b:c"])
        ),
    )
    if draw(st.booleans()):
        info.request = RequestHead(
            method=b"GET", path=draw(st.binary(max_size=8)), headers=draw(HEADERS)
        )
    if draw(st.booleans()):
        info.response = ResponseHead(status=draw(st.integers(100, 999)), headers=draw(HEADERS))
    if draw(st.booleans()):
        info.response_trailers = draw(HEADERS)
    info.response_code = draw(st.integers(0, 999))
    info.bytes_sent = draw(st.integers(0, 2**40))
    if draw(st.booleans()):
        info.end_monotonic = info.start_monotonic + draw(st.floats(0, 1e5))
    info.response_flags = draw(st.lists(st.sampled_from(["UH", "UF", "DC"]), max_size=2))
    info.route_name = draw(st.one_of(st.none(), st.text(max_size=5)))
    return info


def check(fmt: str, info: StreamInfo) -> None:
    try:
        tokens = parse(fmt)
    except FormatError as exc:
        assert exc.message and str(exc) == exc.message, repr(exc)
        assert 0 <= exc.position < max(1, len(fmt) + 1), (exc.position, fmt)
        for compiler in (compile_format, lambda f: compile_json_format({"k": f})):
            try:
                compiler(fmt)
            except FormatError:
                continue
            raise AssertionError(f"parse refused {fmt!r} but a compiler accepted it") from None
        return
    line = compile_format(fmt, hostname="host")(info)
    assert isinstance(line, str)
    record = json.loads(compile_json_format({"k": fmt, "n": {"m": fmt}})(info))
    assert set(record) == {"k", "n"}
    again = parse(unparse(tokens))
    assert _unplaced(again) == _unplaced(tokens), (fmt, unparse(tokens))
    assert unparse(again) == unparse(tokens)


@fuzz_settings(scale=10)
@given(fmt=FORMATS, info=stream_infos())
@example(
    fmt="%START_TIME(%s.%3f)% %REQ(:PATH):5% %%", info=StreamInfo(start_time=1e9, start_monotonic=0)
)
@example(fmt="%RESPONSE_CODE:0007%", info=StreamInfo(start_time=0, start_monotonic=0))
@example(fmt="%START_TIME%", info=StreamInfo(start_time=float("nan"), start_monotonic=0))
@time_capped
def test_format_strings(fmt: str, info: StreamInfo) -> None:
    check(fmt, info)
