"""Envoy's access-log filters, compiled once into `StreamInfo -> bool`.

A filter tree from the config graph (`trioproxy.config.AccessLogFilter`)
becomes one closure per access log; the hot path calls it after the request
completes and skips formatting when it answers False.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from typing import Protocol

from trioproxy.codec.stream import StreamInfo
from trioproxy.config import (
    AccessLogFilter,
    AndFilter,
    DurationFilter,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    RuntimeFilter,
    StatusCodeFilter,
)

__all__ = ["Predicate", "RuntimeReader", "compile_filter"]

Predicate = Callable[[StreamInfo], bool]

_OPS: dict[str, Callable[[int, int], bool]] = {
    "EQ": operator.eq,
    "GE": operator.ge,
    "LE": operator.le,
}


class RuntimeReader(Protocol):
    """The part of `trioproxy.runtime.layers.Runtime` the filters read."""

    def get_integer(self, key: str, default: int) -> int: ...

    def fraction_enabled(self, key: str, numerator: int, denominator: int = 100) -> bool: ...


def _threshold(value: int, key: str, runtime: RuntimeReader | None) -> Callable[[], int]:
    if key and runtime is not None:
        return lambda: runtime.get_integer(key, value)
    return lambda: value


def compile_filter(f: AccessLogFilter, runtime: RuntimeReader | None = None) -> Predicate:
    """The predicate for filter `f`; `runtime` serves runtime keys and
    `runtime_filter` (without one, a runtime filter uses its static fraction).

    Raises:
        TypeError: an unknown filter type.
    """
    if isinstance(f, StatusCodeFilter):
        cmp, limit = _OPS[f.op], _threshold(f.value, f.runtime_key, runtime)
        return lambda info: cmp(info.response_code, limit())
    if isinstance(f, DurationFilter):
        cmp, limit = _OPS[f.op], _threshold(f.value, f.runtime_key, runtime)

        def duration(info: StreamInfo) -> bool:
            ms = info.duration_ms()
            return cmp(ms if ms is not None else 0, limit())

        return duration
    if isinstance(f, NotHealthCheckFilter):
        return lambda info: not info.is_health_check
    if isinstance(f, ResponseFlagFilter):
        if not f.flags:
            return lambda info: bool(info.response_flags)
        wanted = frozenset(f.flags)
        return lambda info: not wanted.isdisjoint(info.response_flags)
    if isinstance(f, RuntimeFilter):
        key, num, den = f.runtime_key, f.numerator, f.denominator
        if runtime is not None:
            rt = runtime
            return lambda info: rt.fraction_enabled(key, num, den)
        rng = random.Random()
        return lambda info: rng.randrange(den) < num
    if isinstance(f, AndFilter):
        parts = tuple(compile_filter(p, runtime) for p in f.filters)
        return lambda info: all(p(info) for p in parts)
    if isinstance(f, OrFilter):
        parts = tuple(compile_filter(p, runtime) for p in f.filters)
        return lambda info: any(p(info) for p in parts)
    raise TypeError(f"unknown access-log filter {f!r}")
