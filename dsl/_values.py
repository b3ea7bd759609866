"""Parsers for the scalar values a mesh file writes as text: durations and addresses.

Each parser takes the raw value the user passed to a builder (any object:
builders never check types) and returns the config value, or raises
`BadValue` whose message is the user-facing issue text. Only `_compile`
calls these; builders store raw values untouched.

Accepted forms:

- durations: `int`/`float` seconds (>= 0, finite), or a string of one or more
  `<number><unit>` parts with unit `ms`, `s`, `m` or `h` ("250ms", "1.5s",
  "1m30s"), or a bare number string meaning seconds ("0", "2.5").
- bind addresses (listeners, admin, demo services): `":8000"` (all IPv4
  interfaces), `"127.0.0.1:8000"`, `"[::1]:8000"`, `"localhost:8000"`
  (127.0.0.1); port 0..65535, 0 asking the kernel for a free port.
- endpoint addresses: an explicit host (IP literal or DNS name) and a port
  1..65535; `"localhost"` also means 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import math
import re

from trioproxy.config import SocketAddress

__all__ = [
    "BadValue",
    "Duration",
    "parse_bind_address",
    "parse_duration",
    "parse_endpoint_address",
]

Duration = int | float | str
"""A duration as a mesh file writes it: seconds, or a string like "250ms"."""


class BadValue(ValueError):
    """A raw value could not be parsed; `str()` is the issue text for the user."""


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+|{_NUMBER}")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "expected seconds >= 0 or a string like '250ms', '2s', '1m'"


def parse_duration(value: object, what: str) -> float:
    """Seconds as a float; `what` names the setting in the error message."""
    seconds: float
    if isinstance(value, bool):
        seconds = math.nan  # True is an int, but never a duration
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value):
        parts = _DURATION_PART.findall(value)
        if parts:
            seconds = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in parts)
        else:
            seconds = float(value)
    else:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise BadValue(f"bad duration {value!r} for {what} ({_DURATION_HINT})")
    return seconds


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_size(value: object, what: str) -> int:
    """Bytes as an int, from an int or a string like '512MiB' or '2GB'."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m and int(m.group(1)) > 0:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise BadValue(
        f"bad size {value!r} for {what} (expected bytes > 0 or a string like '512MiB', '2GB')"
    )


_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _split(value: object, what: str, hint: str) -> tuple[str, str, bool]:
    """Split "host:port" into (host, port text, bracketed)."""
    if not isinstance(value, str) or value != value.strip() or not value:
        raise BadValue(f"bad address {value!r} for {what} ({hint})")
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise BadValue(f"bad address {value!r} for {what} ({hint})")
        return value[1:close], value[close + 2 :], True
    host, sep, port = value.rpartition(":")
    if not sep or ":" in host:
        raise BadValue(f"bad address {value!r} for {what} ({hint})")
    return host, port, False


def _port(value: str, text: str, what: str, lowest: int) -> int:
    if not (text.isascii() and text.isdigit()) or not lowest <= int(text) <= 65535:
        raise BadValue(
            f"bad port {text!r} in address {value!r} for {what} (expected {lowest}..65535)"
        )
    return int(text)


def _ip(host: str, bracketed: bool) -> str | None:
    """The normalised IP literal, or None if `host` is not one of the right family."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if (ip.version == 6) != bracketed:
        return None
    return str(ip)


_BIND_HINT = "expected 'host:port', ':port' or '[ipv6]:port' with an IP address or localhost"


def parse_bind_address(value: object, what: str) -> SocketAddress:
    """An address to listen on; see the module docstring for the forms."""
    host, port_text, bracketed = _split(value, what, _BIND_HINT)
    assert isinstance(value, str)
    if host == "" and not bracketed:
        ip: str | None = "0.0.0.0"
    elif host == "localhost" and not bracketed:
        ip = "127.0.0.1"
    else:
        ip = _ip(host, bracketed)
    if ip is None:
        raise BadValue(f"bad address {value!r} for {what} ({_BIND_HINT})")
    return SocketAddress(host=ip, port=_port(value, port_text, what, 0))


def _is_dns_name(name: str) -> bool:
    """RFC 1123 host name; an all-numeric last label is a mistyped IP, not a name."""
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


_ENDPOINT_HINT = "expected 'host:port' or '[ipv6]:port' with an explicit host"


def parse_endpoint_address(value: object, what: str) -> SocketAddress:
    """An upstream address: an explicit host (IP or DNS name) and a port >= 1."""
    host, port_text, bracketed = _split(value, what, _ENDPOINT_HINT)
    assert isinstance(value, str)
    ip = _ip(host, bracketed)
    if ip is None and not bracketed:
        name = host.lower().removesuffix(".")
        if name == "localhost":
            ip = "127.0.0.1"
        elif _is_dns_name(name):
            ip = name
    if ip is None:
        raise BadValue(f"bad address {value!r} for {what} ({_ENDPOINT_HINT})")
    return SocketAddress(host=ip, port=_port(value, port_text, what, 1))
