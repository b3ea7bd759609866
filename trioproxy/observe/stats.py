"""The stats store: counters, gauges and histograms with Envoy's names.

Hot-path code asks the store for a handle once (at config or connect time)
and then only calls `inc()` / `record()` on it: no name is formatted and no
dict is looked up per request. One store per worker; the supervisor merges
snapshots on read (counters summed, gauges summed, histograms merged).

Histograms keep counts in fixed buckets (Envoy's default supported bucket
bounds, in the stat's unit) plus sum and count, so quantiles are interpolated
within a bucket, as Envoy's own circllhist-based quantiles are approximations.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

__all__ = ["QUANTILES", "Counter", "Gauge", "Histogram", "StatsStore"]

# Envoy's default histogram bucket bounds (stats_config.histogram_bucket_settings).
_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip

# Envoy's quantiles on /stats.
QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)


class Counter:
    __slots__ = ("name", "used", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.used = False

    def inc(self, n: int = 1) -> None:
        self.value += n
        self.used = True


class Gauge:
    __slots__ = ("name", "used", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.used = False

    def inc(self, n: int = 1) -> None:
        self.value += n
        self.used = True

    def dec(self, n: int = 1) -> None:
        self.value -= n
        self.used = True

    def set(self, v: int) -> None:
        self.value = v
        self.used = True


class Histogram:
    __slots__ = ("buckets", "count", "max", "min", "name", "sum", "used")

    def __init__(self, name: str) -> None:
        self.name = name
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = 0.0
        self.used = False

    def record(self, value: float) -> None:
        self.buckets[bisect.bisect_left(_BUCKETS, value)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.used = True

    def quantile(self, q: float) -> float | None:
        """An interpolated quantile, or None when nothing was recorded."""
        if self.count == 0:
            return None
        if q <= 0:
            return self.min
        if q >= 1:
            return self.max
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                lo = _BUCKETS[i - 1] if i > 0 else 0.0
                hi = _BUCKETS[i] if i < len(_BUCKETS) else self.max
                lo = max(lo, self.min)
                hi = min(hi, self.max)
                frac = (rank - seen) / n
                return lo + (hi - lo) * frac
            seen += n
        return self.max

    @staticmethod
    def bucket_bounds() -> tuple[float, ...]:
        return _BUCKETS

    def summary(self) -> str:
        """Envoy's /stats text form: `P0(x,x) P25(...)...` (interval, cumulative)."""
        if self.count == 0:
            return "No recorded values"
        parts = []
        for q in QUANTILES:
            v = self.quantile(q)
            label = f"P{q * 100:g}"
            parts.append(f"{label}({_fmt(v)},{_fmt(v)})")
        return " ".join(parts)


def _fmt(v: float | None) -> str:
    if v is None:
        return "nan"
    return f"{v:.6g}"


class StatsStore:
    """Every stat of one worker, by full dotted name."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms: dict[str, Histogram] = {}

    def counter(self, name: str) -> Counter:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = Counter(name)
        return c

    def gauge(self, name: str) -> Gauge:
        g = self.gauges.get(name)
        if g is None:
            g = self.gauges[name] = Gauge(name)
        return g

    def histogram(self, name: str) -> Histogram:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = Histogram(name)
        return h

    def reset_counters(self) -> None:
        for c in self.counters.values():
            c.value = 0

    def iter_values(
        self, *, filter: re.Pattern[str] | None = None, used_only: bool = False
    ) -> Iterator[tuple[str, int]]:
        """Counters and gauges, sorted by name."""
        items: list[tuple[str, int, bool]] = [
            (c.name, c.value, c.used) for c in self.counters.values()
        ]
        items += [(g.name, g.value, g.used) for g in self.gauges.values()]
        items.sort()
        for name, value, used in items:
            if used_only and not used:
                continue
            if filter is not None and not filter.search(name):
                continue
            yield name, value
