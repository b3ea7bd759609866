"""Compiling `http(...).http2_limits(...)`: the HTTP/2 flood limits of an
HTTP connection manager (`docs/security.md`, "HTTP/2")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trioproxy.config.graph import Location

if TYPE_CHECKING:
    from ._compile import _Compiler

_MAX: int = 2**31 - 1


def http2_limit_options(
    c: _Compiler, given: tuple[tuple[str, object], ...], location: Location | None
) -> dict[str, int | float]:
    """The `HttpConnectionManager` fields set by `http2_limits()`, checked."""
    out: dict[str, int | float] = {}
    for name, value in given:
        if name == "premature_reset_min_stream_lifetime":
            out[name] = c.duration(value, name, location)
        else:
            # 0 disables the premature-reset check; every other limit is >= 1.
            low = 0 if name == "premature_reset_total_stream_count" else 1
            out[name] = c.count(value, name, location, low=low, high=_MAX)
    return out
