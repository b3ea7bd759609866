"""Envoy access-log format strings: parsing and compiled formatters.

What lives here: the grammar of Envoy's access-log format strings
(`%NAME%`, `%NAME(args)%`, `%NAME(args):N%`, `%%`), the table of command
operators trioproxy supports, and compilers that turn a format string (or an
Envoy `json_format` dictionary) into a closure `StreamInfo -> str`.

What must not: any I/O. This is a codec, so it imports neither trio, socket,
time nor random; the host name and the clock reach it as data (the hostname
is a parameter, the start time is a field of `StreamInfo`). Writing lines to
files is `trioproxy.observe.access_log`'s job.

Rules of the format (Envoy's, see docs "access_log/usage"):

- Text outside operators is copied as is; `%%` is one literal `%`. Any other
  `%` must start an operator: upper-case name, optional `(argument)` running to
  the first `)`, optional `:N` (N >= 1, truncate the value's text to N
  characters), closing `%`. Anything else is a `FormatError` that names the
  operator (if any) and the position of its opening `%`.
- An operator whose value is unset or empty prints `-` in text formats and
  `null` in JSON formats.
- In `json_format`, a value that is exactly one operator keeps its type, so
  `%RESPONSE_CODE%` is a JSON number; a value mixing text and operators is a
  string. Keys are sorted, as Envoy always sorts them.

All parsing happens at compile time; the returned closures only read fields.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import attrs

from trioproxy.codec.stream import StreamInfo, get_header

__all__ = [
    "DEFAULT_START_TIME_FORMAT",
    "NUMERIC_OPERATORS",
    "OPERATOR_NAMES",
    "FormatError",
    "Formatter",
    "Operator",
    "Text",
    "Token",
    "compile_format",
    "compile_json_format",
    "parse",
]

# Envoy's %START_TIME% without an argument: ISO 8601, milliseconds, UTC.
DEFAULT_START_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%3fZ"

Formatter = Callable[[StreamInfo], str]

# A compiled operator: the raw value, or None when unset. Strings are
# formatted as text, ints stay numbers in JSON.
_Getter = Callable[[StreamInfo], str | int | None]


class FormatError(ValueError):
    """A format string that cannot be compiled.

    Attributes:
        message: what is wrong, naming the operator and the position.
        position: index into the format string of the offending `%` (or of
            the offending directive inside a START_TIME argument).
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message, position)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return self.message


@attrs.frozen(kw_only=True)
class Text:
    """Literal text, with `%%` already collapsed to `%`."""

    text: str


@attrs.frozen(kw_only=True)
class Operator:
    """One command operator: `%name(arg):max_length%` at `position`."""

    name: str
    arg: str | None = None
    max_length: int | None = None
    position: int = 0


Token = Text | Operator


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

_NAME_RE: Final = re.compile(r"[A-Z0-9_]+")
_DIGITS_RE: Final = re.compile(r"[0-9]+")
# A longer `:N` is a typo, not a length (and Python refuses to convert
# digit strings of more than 4300 characters anyway).
_MAX_LENGTH_DIGITS: Final = 9


def parse(fmt: str) -> tuple[Token, ...]:
    """Split `fmt` into literal text and validated operators.

    Adjacent literal text (including `%%` escapes) is merged into one `Text`.

    Raises:
        FormatError: unknown operator, unterminated `%`, missing or unexpected
            argument, bad `:N` length, or bad START_TIME format.
    """
    tokens: list[Token] = []
    literal: list[str] = []
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            literal.append(fmt[i:])
            break
        literal.append(fmt[i:j])
        if fmt.startswith("%", j + 1):
            literal.append("%")
            i = j + 2
            continue
        op, i = _parse_operator(fmt, j)
        text = "".join(literal)
        if text:
            tokens.append(Text(text=text))
        literal.clear()
        tokens.append(op)
    text = "".join(literal)
    if text:
        tokens.append(Text(text=text))
    return tuple(tokens)


def _parse_operator(fmt: str, start: int) -> tuple[Operator, int]:
    """Parse the operator whose `%` is at `start`; return it and the next index."""
    n = len(fmt)
    m = _NAME_RE.match(fmt, start + 1)
    if m is None:
        if start + 1 >= n:
            raise FormatError(
                f"unterminated '%' at position {start}: expected an operator name or '%%'",
                start,
            )
        raise FormatError(
            f"'%' at position {start} does not start an operator "
            f"(expected an upper-case operator name); write '%%' for a literal '%'",
            start,
        )
    name = m.group()
    i = m.end()
    arg: str | None = None
    if i < n and fmt[i] == "(":
        close = fmt.find(")", i + 1)
        if close < 0:
            raise FormatError(
                f"unterminated argument of operator {name} at position {start}: missing ')'",
                start,
            )
        arg = fmt[i + 1 : close]
        i = close + 1
    max_length: int | None = None
    if i < n and fmt[i] == ":":
        d = _DIGITS_RE.match(fmt, i + 1)
        end = d.end() if d is not None else i + 1
        if d is None or end >= n or fmt[end] != "%":
            raise FormatError(
                f"bad length for operator {name} at position {start}: "
                f"expected ':N%' with N a positive integer",
                start,
            )
        digits = d.group()
        if len(digits) > _MAX_LENGTH_DIGITS or int(digits) == 0:
            raise FormatError(
                f"bad length for operator {name} at position {start}: "
                f"N must be between 1 and {10**_MAX_LENGTH_DIGITS - 1}",
                start,
            )
        max_length = int(digits)
        i = end
    if i >= n or fmt[i] != "%":
        raise FormatError(
            f"unterminated operator {name} at position {start}: expected a closing '%'",
            start,
        )
    op = Operator(name=name, arg=arg, max_length=max_length, position=start)
    _validate(op)
    return op, i + 1


def _validate(op: Operator) -> None:
    spec = _OPERATORS.get(op.name)
    if spec is None:
        raise FormatError(f"unknown operator {op.name} at position {op.position}", op.position)
    if spec.arg == "none" and op.arg is not None:
        raise FormatError(
            f"operator {op.name} at position {op.position} takes no argument", op.position
        )
    if spec.arg == "header":
        _header_names(op)
    elif spec.arg == "time":
        _compile_time_format(op)


# --------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------

ArgKind = Literal["none", "header", "time"]


@attrs.frozen(kw_only=True)
class _Spec:
    # "none": no argument; "header": required `X` or `X?Y`; "time": optional
    # strftime format.
    arg: ArgKind
    # Whether the value is a number (stays a number in JSON).
    numeric: bool
    # Builds the getter once per compiled format: (operator, hostname).
    build: Callable[[Operator, str], _Getter]


def _field(name: str) -> Callable[[Operator, str], _Getter]:
    """An operator that prints a str-or-None field of StreamInfo."""

    def build(op: Operator, hostname: str) -> _Getter:
        def get(info: StreamInfo) -> str | None:
            value: str | None = getattr(info, name)
            return value

        return get

    return build


def _int_field(name: str) -> Callable[[Operator, str], _Getter]:
    def build(op: Operator, hostname: str) -> _Getter:
        def get(info: StreamInfo) -> int:
            value: int = getattr(info, name)
            return value

        return get

    return build


def _ms(start: float, end: float) -> int:
    # Round to the microsecond first: (end - start) in floats can be
    # 0.29999999 for 300 ms, and truncating that would print 299.
    return round((end - start) * 1_000_000) // 1000


def _build_duration(op: Operator, hostname: str) -> _Getter:
    def get(info: StreamInfo) -> int | None:
        end = info.end_monotonic
        return None if end is None else _ms(info.start_monotonic, end)

    return get


def _build_request_duration(op: Operator, hostname: str) -> _Getter:
    def get(info: StreamInfo) -> int | None:
        t = info.last_downstream_rx_monotonic
        return None if t is None else _ms(info.start_monotonic, t)

    return get


def _build_response_duration(op: Operator, hostname: str) -> _Getter:
    def get(info: StreamInfo) -> int | None:
        t = info.first_upstream_rx_monotonic
        return None if t is None else _ms(info.start_monotonic, t)

    return get


def _build_response_flags(op: Operator, hostname: str) -> _Getter:
    def get(info: StreamInfo) -> str:
        return info.response_flags_str

    return get


def _build_hostname(op: Operator, hostname: str) -> _Getter:
    def get(info: StreamInfo) -> str:
        return hostname

    return get


def _strip_port(address: str) -> str:
    """`1.2.3.4:80` -> `1.2.3.4`; `[::1]:80` -> `::1`; a bare IPv6 stays."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    if address.count(":") == 1:
        return address.rpartition(":")[0]
    return address


def _build_remote_without_port(op: Operator, hostname: str) -> _Getter:
    def get(info: StreamInfo) -> str:
        return _strip_port(info.downstream_remote_address)

    return get


def _header_names(op: Operator) -> tuple[bytes, bytes | None]:
    """`X` or `X?Y` as lower-case byte names; validated at parse time."""
    arg = op.arg
    if not arg:
        raise FormatError(
            f"operator {op.name} at position {op.position} requires a header name, "
            f"as in %{op.name}(X)% or %{op.name}(X?Y)%",
            op.position,
        )
    names = arg.split("?")
    if len(names) > 2:
        raise FormatError(
            f"operator {op.name} at position {op.position}: "
            f"more than one fallback header in {arg!r}",
            op.position,
        )
    for name in names:
        if not name or not name.isascii() or any(c.isspace() for c in name):
            raise FormatError(
                f"operator {op.name} at position {op.position}: "
                f"bad header name {name!r} in {arg!r}",
                op.position,
            )
    main = names[0].lower().encode("ascii")
    alt = names[1].lower().encode("ascii") if len(names) == 2 else None
    return main, alt


def _build_req(op: Operator, hostname: str) -> _Getter:
    main, alt = _header_names(op)

    def get(info: StreamInfo) -> str | None:
        head = info.request
        if head is None:
            return None
        value = head.get(main)
        if value is None and alt is not None:
            value = head.get(alt)
        return None if value is None else value.decode("latin-1")

    return get


def _build_resp(op: Operator, hostname: str) -> _Getter:
    main, alt = _header_names(op)

    def get(info: StreamInfo) -> str | None:
        head = info.response
        if head is None:
            return None
        value = head.get(main)
        if value is None and alt is not None:
            value = head.get(alt)
        return None if value is None else value.decode("latin-1")

    return get


def _build_trailer(op: Operator, hostname: str) -> _Getter:
    main, alt = _header_names(op)

    def get(info: StreamInfo) -> str | None:
        trailers = info.response_trailers
        if trailers is None:
            return None
        value = get_header(trailers, main)
        if value is None and alt is not None:
            value = get_header(trailers, alt)
        return None if value is None else value.decode("latin-1")

    return get


# START_TIME --------------------------------------------------------------

# strftime conversions passed through to `datetime.strftime` (the portable
# C89/POSIX set; glibc-only ones like %k are refused so a format means the
# same on every platform). `%s` (epoch seconds) and `%f`/`%1f`..`%9f`
# (fraction digits, `%f` = 9 as in Envoy) are rendered here.
_STRFTIME_CONVERSIONS: Final = frozenset("aAbBcCdDeFgGhHIjmMnprRStTuUVwWxXyYzZ%")
_EPOCH: Final = -1  # piece marker for %s; positive ints are fraction digits


def _compile_time_format(op: Operator) -> tuple[str | int, ...]:
    """Split a START_TIME format into strftime chunks, `_EPOCH` and digit counts."""
    fmt = op.arg or DEFAULT_START_TIME_FORMAT
    base = op.position + len(op.name) + 2  # index of the argument in the format
    pieces: list[str | int] = []
    chunk: list[str] = []
    i = 0
    n = len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            chunk.append(c)
            i += 1
            continue
        d = fmt[i + 1] if i + 1 < n else ""
        special: int | None = None
        width = 2
        if d == "s":
            special = _EPOCH
        elif d == "f":
            special = 9
        elif d and d in "123456789" and fmt.startswith("f", i + 2):
            special = int(d)
            width = 3
        elif d and d in _STRFTIME_CONVERSIONS:
            chunk.append(fmt[i : i + 2])
            i += 2
            continue
        else:
            shown = fmt[i : i + 2]
            raise FormatError(
                f"operator START_TIME at position {op.position}: "
                f"unsupported directive {shown!r} at position {base + i}",
                base + i,
            )
        if chunk:
            pieces.append("".join(chunk))
            chunk.clear()
        pieces.append(special)
        i += width
    if chunk:
        pieces.append("".join(chunk))
    return tuple(pieces)


def _build_start_time(op: Operator, hostname: str) -> _Getter:
    pieces = _compile_time_format(op)
    has_fraction = any(isinstance(p, int) and p > 0 for p in pieces)

    def render_second(sec: int) -> tuple[str | int, ...]:
        dt = datetime.fromtimestamp(sec, UTC)
        out: list[str | int] = []
        for p in pieces:
            text = dt.strftime(p) if isinstance(p, str) else str(sec) if p == _EPOCH else None
            if text is None:
                out.append(p)
            elif out and isinstance(out[-1], str):
                out[-1] += text
            else:
                out.append(text)
        return tuple(out)

    # Everything but the fraction changes once a second: cache it (Envoy
    # caches the formatted seconds the same way).
    cache: list[tuple[int, tuple[str | int, ...]]] = [(-(2**63), ())]

    def get(info: StreamInfo) -> str | None:
        # Floats hold epoch seconds to about a microsecond, so that is the
        # finest digit we print faithfully; %9f ends in 000.
        try:
            sec, micros = divmod(round(info.start_time * 1_000_000), 1_000_000)
            cached = cache[0]
            if cached[0] != sec:
                cached = (sec, render_second(sec))
                cache[0] = cached
        except (OverflowError, OSError, ValueError):
            return None
        rendered = cached[1]
        if not has_fraction:
            # All pieces were strftime/epoch text, merged into one string.
            return "".join(p for p in rendered if isinstance(p, str))
        nanos = f"{micros:06d}000"
        return "".join(p if isinstance(p, str) else nanos[:p] for p in rendered)

    return get


# The operator table. Adding an operator is adding a row here.
_OPERATORS: Final[Mapping[str, _Spec]] = {
    "START_TIME": _Spec(arg="time", numeric=False, build=_build_start_time),
    "REQ": _Spec(arg="header", numeric=False, build=_build_req),
    "RESP": _Spec(arg="header", numeric=False, build=_build_resp),
    "TRAILER": _Spec(arg="header", numeric=False, build=_build_trailer),
    "PROTOCOL": _Spec(arg="none", numeric=False, build=_field("protocol")),
    "RESPONSE_CODE": _Spec(arg="none", numeric=True, build=_int_field("response_code")),
    "RESPONSE_CODE_DETAILS": _Spec(
        arg="none", numeric=False, build=_field("response_code_details")
    ),
    "RESPONSE_FLAGS": _Spec(arg="none", numeric=False, build=_build_response_flags),
    "BYTES_RECEIVED": _Spec(arg="none", numeric=True, build=_int_field("bytes_received")),
    "BYTES_SENT": _Spec(arg="none", numeric=True, build=_int_field("bytes_sent")),
    "DURATION": _Spec(arg="none", numeric=True, build=_build_duration),
    "REQUEST_DURATION": _Spec(arg="none", numeric=True, build=_build_request_duration),
    "RESPONSE_DURATION": _Spec(arg="none", numeric=True, build=_build_response_duration),
    "UPSTREAM_HOST": _Spec(arg="none", numeric=False, build=_field("upstream_host")),
    "UPSTREAM_CLUSTER": _Spec(arg="none", numeric=False, build=_field("upstream_cluster")),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _Spec(
        arg="none", numeric=False, build=_field("upstream_transport_failure_reason")
    ),
    "DOWNSTREAM_REMOTE_ADDRESS": _Spec(
        arg="none", numeric=False, build=_field("downstream_remote_address")
    ),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _Spec(
        arg="none", numeric=False, build=_build_remote_without_port
    ),
    "DOWNSTREAM_LOCAL_ADDRESS": _Spec(
        arg="none", numeric=False, build=_field("downstream_local_address")
    ),
    "ROUTE_NAME": _Spec(arg="none", numeric=False, build=_field("route_name")),
    "HOSTNAME": _Spec(arg="none", numeric=False, build=_build_hostname),
}

# Names of every supported operator, and of those whose value is a number.
OPERATOR_NAMES: Final = frozenset(_OPERATORS)
NUMERIC_OPERATORS: Final = frozenset(name for name, s in _OPERATORS.items() if s.numeric)


# --------------------------------------------------------------------------
# Compilers
# --------------------------------------------------------------------------


def _text_part(op: Operator, hostname: str) -> Formatter:
    """The operator's value as text: `-` when unset or empty, else truncated."""
    get = _OPERATORS[op.name].build(op, hostname)
    limit = op.max_length

    def part(info: StreamInfo) -> str:
        value = get(info)
        if value is None or value == "":
            return "-"
        text = value if isinstance(value, str) else str(value)
        return text if limit is None else text[:limit]

    return part


def _compile_tokens(tokens: tuple[Token, ...], hostname: str) -> Formatter:
    # A template with the literal text in place and a slot per operator:
    # formatting fills the slots and joins, nothing else.
    template: list[str] = []
    slots: list[tuple[int, Formatter]] = []
    for token in tokens:
        if isinstance(token, Text):
            template.append(token.text)
        else:
            slots.append((len(template), _text_part(token, hostname)))
            template.append("")
    if not slots:
        constant = "".join(template)
        return lambda info: constant
    if len(template) == 1:
        return slots[0][1]

    def format_line(info: StreamInfo) -> str:
        out = template.copy()
        for index, part in slots:
            out[index] = part(info)
        return "".join(out)

    return format_line


def compile_format(fmt: str, *, hostname: str = "-") -> Formatter:
    """Compile an Envoy text format into `StreamInfo -> str`.

    Args:
        fmt: the format string; it must carry its own trailing newline, as in
            Envoy.
        hostname: the value of `%HOSTNAME%` (the caller asks the OS).

    Raises:
        FormatError: see `parse`.
    """
    return _compile_tokens(parse(fmt), hostname)


_JsonValue = Callable[[StreamInfo], Any]


def _json_leaf(fmt: str, where: str, hostname: str) -> _JsonValue:
    try:
        tokens = parse(fmt)
    except FormatError as exc:
        raise FormatError(f"json_format field {where}: {exc.message}", exc.position) from None
    if len(tokens) == 1 and isinstance(tokens[0], Operator):
        op = tokens[0]
        get = _OPERATORS[op.name].build(op, hostname)
        limit = op.max_length

        def typed(info: StreamInfo) -> str | int | None:
            value = get(info)
            if value is None or value == "":
                return None
            if limit is not None and isinstance(value, str):
                return value[:limit]
            return value

        return typed
    return _compile_tokens(tokens, hostname)


def _json_node(value: object, where: str, hostname: str) -> _JsonValue:
    if isinstance(value, str):
        return _json_leaf(value, where, hostname)
    if isinstance(value, Mapping):
        children: list[tuple[str, _JsonValue]] = []
        for key in value:
            if not isinstance(key, str):
                raise FormatError(f"json_format field {where}: key {key!r} is not a string", 0)
            child = f"{where}.{key}" if where else key
            children.append((key, _json_node(value[key], child, hostname)))
        children.sort(key=lambda kv: kv[0])
        return lambda info: {k: f(info) for k, f in children}
    if (
        value is None
        or isinstance(value, bool | int)
        or (isinstance(value, float) and math.isfinite(value))
    ):
        return lambda info: value
    raise FormatError(
        f"json_format field {where}: unsupported value {value!r} "
        f"(expected a format string, a nested mapping, a number, a bool or None)",
        0,
    )


def compile_json_format(fields: Mapping[str, Any], *, hostname: str = "-") -> Formatter:
    """Compile an Envoy `json_format` dictionary into `StreamInfo -> str`.

    Each value is a format string or a nested mapping (numbers, bools and
    None are copied as constants). The line is one compact JSON object with
    sorted keys, ending in a newline.

    Raises:
        FormatError: a bad format string in any field (the message names the
            field's dotted path), or a value of another type.
    """
    root = _json_node(fields, "", hostname)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def format_line(info: StreamInfo) -> str:
        return dumps(root(info)) + "\n"

    return format_line
