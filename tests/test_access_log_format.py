"""Envoy access-log format strings: every operator, the default line, errors, fuzz."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.codec.access_log_format import (
    NUMERIC_OPERATORS,
    OPERATOR_NAMES,
    FormatError,
    Operator,
    Text,
    compile_format,
    compile_json_format,
    parse,
)
from trioproxy.codec.stream import RequestHead, ResponseFlag, ResponseHead, StreamInfo
from trioproxy.config import DEFAULT_ACCESS_LOG_FORMAT

# 2016-04-15T20:17:00.310Z, the time in Envoy's documented example line.
START = 1460751420.310


def full_info() -> StreamInfo:
    """A request that went everywhere: every field set."""
    info = StreamInfo(
        start_time=START,
        start_monotonic=1000.0,
        protocol="HTTP/2",
        downstream_remote_address="10.0.35.28:51000",
        downstream_local_address="10.0.0.5:10000",
    )
    info.request = RequestHead(
        method=b"POST",
        path=b"/api/v1/locations",
        authority=b"locations",
        scheme=b"https",
        headers=[
            (b"x-forwarded-for", b"10.0.35.28"),
            (b"user-agent", b"nsq2http"),
            (b"x-request-id", b"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"),
            (b"x-latin", b"caf\xe9"),
        ],
    )
    info.response = ResponseHead(status=204, headers=[(b"x-envoy-upstream-service-time", b"100")])
    info.response_trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    info.response_code = 204
    info.response_code_details = "via_upstream"
    info.add_flag(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
    info.add_flag(ResponseFlag.UPSTREAM_REMOTE_RESET)
    info.bytes_received = 154
    info.bytes_sent = 0
    info.end_monotonic = 1000.226
    info.last_downstream_rx_monotonic = 1000.012
    info.first_upstream_rx_monotonic = 1000.2
    info.route_name = "locations_route"
    info.upstream_host = "tcp://10.0.2.1:80"
    info.upstream_cluster = "locations"
    info.upstream_transport_failure_reason = "tls handshake failed"
    return info


def empty_info() -> StreamInfo:
    """A connection that never got as far as a request."""
    return StreamInfo(start_time=START, start_monotonic=1000.0)


def fmt(f: str, info: StreamInfo, *, hostname: str = "-") -> str:
    return compile_format(f, hostname=hostname)(info)


# (format, value for full_info(), value for empty_info())
OPERATOR_TABLE = [
    ("%START_TIME%", "2016-04-15T20:17:00.310Z", "2016-04-15T20:17:00.310Z"),
    ("%START_TIME()%", "2016-04-15T20:17:00.310Z", "2016-04-15T20:17:00.310Z"),
    ("%START_TIME(%s)%", "1460751420", "1460751420"),
    ("%START_TIME(%s.%3f)%", "1460751420.310", "1460751420.310"),
    ("%START_TIME(%6f)%", "310000", "310000"),
    ("%START_TIME(%9f)%", "310000000", "310000000"),
    ("%START_TIME(%f|%1f)%", "310000000|3", "310000000|3"),
    (
        "%START_TIME(%Y/%m/%d %H:%M:%S %z)%",
        "2016/04/15 20:17:00 +0000",
        "2016/04/15 20:17:00 +0000",
    ),
    ("%START_TIME(%%s %a)%", "%s Fri", "%s Fri"),
    ("%START_TIME(%s):4%", "1460", "1460"),
    ("%REQ(:METHOD)%", "POST", "-"),
    ("%REQ(:PATH)%", "/api/v1/locations", "-"),
    ("%REQ(:AUTHORITY)%", "locations", "-"),
    ("%REQ(:SCHEME)%", "https", "-"),
    ("%REQ(HOST)%", "locations", "-"),
    ("%REQ(User-Agent)%", "nsq2http", "-"),
    ("%REQ(X-MISSING)%", "-", "-"),
    ("%REQ(X-MISSING?USER-AGENT)%", "nsq2http", "-"),
    ("%REQ(USER-AGENT?X-FORWARDED-FOR)%", "nsq2http", "-"),
    ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/api/v1/locations", "-"),
    ("%REQ(USER-AGENT):3%", "nsq", "-"),
    ("%REQ(X-LATIN)%", "café", "-"),
    ("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "100", "-"),
    ("%RESP(:STATUS)%", "204", "-"),
    ("%RESP(X-MISSING?X-ENVOY-UPSTREAM-SERVICE-TIME)%", "100", "-"),
    ("%RESP(X-MISSING)%", "-", "-"),
    ("%TRAILER(GRPC-STATUS)%", "0", "-"),
    ("%TRAILER(X-MISSING?GRPC-MESSAGE)%", "ok", "-"),
    ("%TRAILER(GRPC-MESSAGE):1%", "o", "-"),
    ("%PROTOCOL%", "HTTP/2", "HTTP/1.1"),
    ("%RESPONSE_CODE%", "204", "0"),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream", "-"),
    ("%RESPONSE_FLAGS%", "UT,UR", "-"),
    ("%BYTES_RECEIVED%", "154", "0"),
    ("%BYTES_SENT%", "0", "0"),
    ("%DURATION%", "226", "-"),
    ("%REQUEST_DURATION%", "12", "-"),
    ("%RESPONSE_DURATION%", "200", "-"),
    ("%UPSTREAM_HOST%", "tcp://10.0.2.1:80", "-"),
    ("%UPSTREAM_CLUSTER%", "locations", "-"),
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "tls handshake failed", "-"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.35.28:51000", "-"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.35.28", "-"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.5:10000", "-"),
    ("%ROUTE_NAME%", "locations_route", "-"),
    ("%ROUTE_NAME:9%", "locations", "-"),
    ("%HOSTNAME%", "-", "-"),
]


@pytest.mark.parametrize(("f", "full", "empty"), OPERATOR_TABLE)
def test_operator(f: str, full: str, empty: str) -> None:
    assert fmt(f, full_info()) == full
    assert fmt(f, empty_info()) == empty


def test_operator_table_covers_every_operator() -> None:
    covered = {op.name for f, _, _ in OPERATOR_TABLE for op in parse(f) if isinstance(op, Operator)}
    assert covered == OPERATOR_NAMES


def test_hostname_is_a_parameter() -> None:
    assert fmt("%HOSTNAME%", empty_info(), hostname="proxy-1") == "proxy-1"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1:80", "10.0.0.1"),
        ("[::1]:8080", "::1"),
        ("::1", "::1"),
        ("10.0.0.1", "10.0.0.1"),
        ("", "-"),
    ],
)
def test_remote_address_without_port(address: str, expected: str) -> None:
    info = StreamInfo(start_time=START, start_monotonic=0.0, downstream_remote_address=address)
    assert fmt("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", info) == expected


def test_durations_round_to_the_millisecond_not_down() -> None:
    # 0.3 s in floats is 0.29999999999999993 away from 1.0 + 0.3; truncating
    # the float would print 299.
    info = StreamInfo(start_time=START, start_monotonic=0.1)
    info.end_monotonic = 0.1 + 0.3
    info.last_downstream_rx_monotonic = 0.1 + 0.7
    assert fmt("%DURATION% %REQUEST_DURATION%", info) == "300 700"


def test_start_time_changes_with_the_second() -> None:
    # The per-second cache must not serve the previous second.
    f = compile_format("%START_TIME%")
    a = StreamInfo(start_time=START, start_monotonic=0.0)
    b = StreamInfo(start_time=START + 61.5, start_monotonic=0.0)
    assert f(a) == "2016-04-15T20:17:00.310Z"
    assert f(b) == "2016-04-15T20:18:01.810Z"
    assert f(a) == "2016-04-15T20:17:00.310Z"


def test_start_time_rounds_to_the_microsecond() -> None:
    info = StreamInfo(start_time=1.9999999, start_monotonic=0.0)
    assert fmt("%START_TIME(%s.%6f)%", info) == "2.000000"


def test_envoy_default_format_line() -> None:
    # The example line of Envoy's docs (access_log/usage, "Default format string").
    info = full_info()
    info.response_flags = []
    assert fmt(DEFAULT_ACCESS_LOG_FORMAT, info) == (
        '[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 '
        '"10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" '
        '"tcp://10.0.2.1:80"\n'
    )


def test_envoy_default_format_without_a_request() -> None:
    assert fmt(DEFAULT_ACCESS_LOG_FORMAT, empty_info()) == (
        '[2016-04-15T20:17:00.310Z] "- - HTTP/1.1" 0 - 0 0 - - "-" "-" "-" "-" "-"\n'
    )


def test_parse_tokens() -> None:
    assert parse("a%%b %REQ(X?Y):5% c%%") == (
        Text(text="a%b "),
        Operator(name="REQ", arg="X?Y", max_length=5, position=5),
        Text(text=" c%"),
    )
    assert parse("") == ()
    assert parse("%%") == (Text(text="%"),)
    assert parse("%PROTOCOL%%DURATION%") == (
        Operator(name="PROTOCOL", position=0),
        Operator(name="DURATION", position=10),
    )


def test_literal_only_format() -> None:
    assert fmt("100%% done\n", empty_info()) == "100% done\n"


# (format, position, words the message must contain)
ERROR_TABLE = [
    ("%FOO%", 0, ["unknown operator", "FOO"]),
    ("ab %UPSTREAM_HOSTS%", 3, ["unknown operator", "UPSTREAM_HOSTS"]),
    ("abc%", 3, ["unterminated"]),
    ("%", 0, ["unterminated"]),
    ("100% sure", 3, ["'%%'"]),
    ("%req(x)%", 0, ["upper-case"]),
    ("%PROTOCOL", 0, ["unterminated", "PROTOCOL"]),
    ("x %REQ(USER-AGENT)", 2, ["unterminated", "REQ"]),
    ("%REQ(USER-AGENT%", 0, ["unterminated", "REQ", "')'"]),
    ("%REQ%", 0, ["REQ", "header name"]),
    ("%REQ()%", 0, ["REQ", "header name"]),
    ("%RESP%", 0, ["RESP", "header name"]),
    ("%TRAILER%", 0, ["TRAILER", "header name"]),
    ("%REQ(A?B?C)%", 0, ["REQ", "fallback"]),
    ("%REQ(A?)%", 0, ["REQ", "header name"]),
    ("%REQ(?B)%", 0, ["REQ", "header name"]),
    ("%REQ(A B)%", 0, ["REQ", "header name"]),
    ("%REQ(É)%", 0, ["REQ", "header name"]),
    ("%REQ(A):%", 0, ["REQ", "length"]),
    ("%REQ(A):x%", 0, ["REQ", "length"]),
    ("%REQ(A):0%", 0, ["REQ", "length"]),
    ("%REQ(A):12x%", 0, ["REQ", "length"]),
    ("%REQ(A):1234567890%", 0, ["REQ", "length"]),
    ("%REQ(A):5", 0, ["REQ", "length"]),
    ("%PROTOCOL(x)%", 0, ["PROTOCOL", "no argument"]),
    ("%DURATION()%", 0, ["DURATION", "no argument"]),
    ("%START_TIME(%Q)%", 12, ["START_TIME", "'%Q'"]),
    ("..%START_TIME(%Y %)%", 17, ["START_TIME", "'%'"]),
    ("%START_TIME(%0f)%", 12, ["START_TIME", "'%0'"]),
    ("%START_TIME(%k)%", 12, ["START_TIME", "'%k'"]),
]


@pytest.mark.parametrize(("f", "position", "words"), ERROR_TABLE)
def test_format_errors(f: str, position: int, words: list[str]) -> None:
    with pytest.raises(FormatError) as info:
        parse(f)
    err = info.value
    assert err.position == position
    assert f"position {position}" in str(err)
    for word in words:
        assert word in str(err)
    with pytest.raises(FormatError):
        compile_format(f)


# -- json_format -------------------------------------------------------------


def test_json_format_types() -> None:
    line = compile_json_format(
        {
            "status": "%RESPONSE_CODE%",
            "duration": "%DURATION%",
            "bytes": {"in": "%BYTES_RECEIVED%", "out": "%BYTES_SENT%"},
            "method": "%REQ(:METHOD)%",
            "ua": "%REQ(USER-AGENT):3%",
            "route": "%ROUTE_NAME%",
            "line": "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-MISSING)%",
            "const": "literal 100%%",
            "n": 1,
            "flag": True,
            "nothing": None,
            "host": "%HOSTNAME%",
        },
        hostname="proxy-1",
    )(full_info())
    assert line.endswith("}\n")
    assert line.count("\n") == 1
    assert json.loads(line) == {
        "status": 204,
        "duration": 226,
        "bytes": {"in": 154, "out": 0},
        "method": "POST",
        "ua": "nsq",
        "route": "locations_route",
        "line": "POST /api/v1/locations -",
        "const": "literal 100%",
        "n": 1,
        "flag": True,
        "nothing": None,
        "host": "proxy-1",
    }


def test_json_format_missing_values_are_null() -> None:
    line = compile_json_format(
        {
            "duration": "%DURATION%",
            "method": "%REQ(:METHOD)%",
            "details": "%RESPONSE_CODE_DETAILS%",
            "status": "%RESPONSE_CODE%",
            "mixed": "m=%REQ(:METHOD)%",
        }
    )(empty_info())
    assert json.loads(line) == {
        "duration": None,
        "method": None,
        "details": None,
        "status": 0,
        "mixed": "m=-",
    }


def test_json_format_is_compact_with_sorted_keys() -> None:
    line = compile_json_format({"b": "%RESPONSE_CODE%", "a": {"d": "x", "c": "y"}})(empty_info())
    assert line == '{"a":{"c":"y","d":"x"},"b":0}\n'


def test_json_format_numeric_operators_stay_numbers() -> None:
    info = full_info()
    for name in NUMERIC_OPERATORS:
        value = json.loads(compile_json_format({"v": f"%{name}%"})(info))["v"]
        assert isinstance(value, int), name


def test_json_format_escapes_control_characters() -> None:
    info = full_info()
    assert info.request is not None
    info.request.set(b"user-agent", b'a"b\nc')
    line = compile_json_format({"ua": "%REQ(USER-AGENT)%"})(info)
    assert line.count("\n") == 1
    assert json.loads(line) == {"ua": 'a"b\nc'}


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"a": {"b": "%NOPE%"}}, ["a.b", "NOPE", "position 0"]),
        ({"a": "x %REQ%"}, ["a", "REQ", "position 2"]),
        ({"a": [1, 2]}, ["a", "unsupported"]),
        ({"a": float("nan")}, ["a", "unsupported"]),
        ({1: "x"}, ["key 1"]),
    ],
)
def test_json_format_errors(fields: dict[object, object], words: list[str]) -> None:
    with pytest.raises(FormatError) as info:
        compile_json_format(fields)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)


# -- Hypothesis --------------------------------------------------------------

VALID_OPERATORS = [
    "%START_TIME%",
    "%START_TIME(%Y-%m-%d %H:%M:%S.%3f %z)%",
    "%START_TIME(%s.%6f)%",
    "%START_TIME(%s%9f%%)%",
    "%REQ(:METHOD)%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "%REQ(USER-AGENT)%",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "%RESP(:STATUS)%",
    "%TRAILER(GRPC-STATUS?GRPC-MESSAGE)%",
    *(f"%{name}%" for name in sorted(OPERATOR_NAMES - {"START_TIME", "REQ", "RESP", "TRAILER"})),
]

# Literal text: anything but '%' (a lone '%' must start an operator).
literal_text = st.text(st.characters(blacklist_characters="%", blacklist_categories=["Cs"]))


@st.composite
def operator_strategy(draw: st.DrawFn) -> str:
    op = draw(st.sampled_from(VALID_OPERATORS))
    length = draw(st.none() | st.integers(min_value=1, max_value=10_000))
    return op if length is None else f"{op[:-1]}:{length}%"


@given(st.lists(literal_text | st.just("%%") | operator_strategy(), max_size=20))
def test_valid_formats_parse_and_format(segments: list[str]) -> None:
    f = "".join(segments)
    tokens = parse(f)
    expected_ops = sum(1 for s in segments if s.startswith("%") and s != "%%")
    assert sum(isinstance(t, Operator) for t in tokens) == expected_ops
    # Merged literals: never two Text tokens in a row, never an empty one.
    for a, b in itertools.pairwise(tokens):
        assert not (isinstance(a, Text) and isinstance(b, Text))
    assert all(t.text for t in tokens if isinstance(t, Text))
    compiled = compile_format(f)
    assert isinstance(compiled(full_info()), str)
    assert isinstance(compiled(empty_info()), str)


@given(st.lists(literal_text | st.just("%%"), max_size=20))
def test_literal_only_formats_round_trip(segments: list[str]) -> None:
    f = "".join(segments)
    expected = "".join("%" if s == "%%" else s for s in segments)
    assert compile_format(f)(full_info()) == expected
    assert "".join(t.text for t in parse(f) if isinstance(t, Text)) == expected


format_alphabet = st.sampled_from([*"%()?:_ AZDERQSTUVX019%s.fYm-", "REQ", "START_TIME"])


@given(st.text() | st.lists(format_alphabet).map("".join))
def test_parse_raises_only_format_error(f: str) -> None:
    try:
        compiled = compile_format(f)
    except FormatError as exc:
        assert 0 <= exc.position <= len(f)
        assert f"position {exc.position}" in str(exc)
    else:
        assert isinstance(compiled(full_info()), str)
        assert isinstance(compiled(empty_info()), str)
