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
from collections.abc import Iterator, Sequence

__all__ = [
    "QUANTILES",
    "QUANTILE_LABELS",
    "SUPPORTED_QUANTILES",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSnapshot",
    "StatsStore",
]

# Envoy's default histogram bucket bounds (stats_config.histogram_bucket_settings).
_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip

# Envoy's quantiles on /stats.
QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)
# Their names on /stats, and the numbers of `supported_quantiles` in its JSON.
QUANTILE_LABELS: tuple[str, ...] = tuple(f"P{q * 100:g}" for q in QUANTILES)
SUPPORTED_QUANTILES: tuple[float, ...] = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


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
    """Counts in fixed buckets, plus count, sum, min and max.

    `record()` is the hot path: a bisect and a few additions. The interval
    view (Envoy's "interval" quantiles, the values recorded during the last
    completed flush interval) costs nothing there: `close_interval()`, run
    by the flush loop, takes the difference with the buckets at the previous
    flush. When a sink wants each value (StatsD timers), `samples` is a list
    that `record()` appends to, bounded by `max_samples` per interval.
    """

    __slots__ = (
        "_at_flush",
        "buckets",
        "count",
        "interval",
        "max",
        "min",
        "name",
        "samples",
        "samples_dropped",
        "sum",
        "used",
    )

    # Values kept per flush interval for a per-value sink (StatsD `|ms`):
    # a histogram recorded 10k times a second would otherwise queue 50k
    # values between two 5 s flushes. Beyond it values are dropped (and
    # counted in `samples_dropped`); quantiles never are.
    max_samples = 1000

    def __init__(self, name: str) -> None:
        self.name = name
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = 0.0
        self.used = False
        self._at_flush = [0] * (len(_BUCKETS) + 1)
        self.interval: HistogramSnapshot | None = None
        self.samples: list[float] | None = None
        self.samples_dropped = 0

    def record(self, value: float) -> None:
        self.buckets[bisect.bisect_left(_BUCKETS, value)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.used = True
        samples = self.samples
        if samples is not None:
            if len(samples) < self.max_samples:
                samples.append(value)
            else:
                self.samples_dropped += 1

    def quantile(self, q: float) -> float | None:
        """An interpolated quantile of every value recorded, or None when
        nothing was recorded."""
        return _quantile(self.buckets, self.count, self.min, self.max, q)

    def interval_quantile(self, q: float) -> float | None:
        """The quantile over the last completed flush interval (None: empty)."""
        iv = self.interval
        return None if iv is None else iv.quantile(q)

    def close_interval(self) -> None:
        """End a flush interval: what was recorded since the previous call
        becomes `interval`. Min and max of an interval are known only to
        bucket precision (clamped by the overall min and max)."""
        now = self.buckets
        delta = [a - b for a, b in zip(now, self._at_flush, strict=True)]
        self._at_flush = list(now)
        n = sum(delta)
        if n == 0:
            self.interval = None
            return
        first = next(i for i, d in enumerate(delta) if d)
        last = max(i for i, d in enumerate(delta) if d)
        lo = max(_BUCKETS[first - 1] if first > 0 else 0.0, self.min)
        hi = min(_BUCKETS[last] if last < len(_BUCKETS) else self.max, self.max)
        self.interval = HistogramSnapshot(tuple(delta), n, lo, hi)

    def take_samples(self) -> list[float]:
        """The values recorded since the last call (needs `samples` on)."""
        out = self.samples or []
        if self.samples is not None:
            self.samples = []
        return out

    @staticmethod
    def bucket_bounds() -> tuple[float, ...]:
        return _BUCKETS

    def summary(self) -> str:
        """Envoy's /stats text form: `P0(interval,cumulative) P25(...) ...`,
        `nan` where there is no value (nothing recorded in the interval)."""
        if self.count == 0:
            return "No recorded values"
        parts = []
        for q, label in zip(QUANTILES, QUANTILE_LABELS, strict=True):
            parts.append(f"{label}({_fmt(self.interval_quantile(q))},{_fmt(self.quantile(q))})")
        return " ".join(parts)


class HistogramSnapshot:
    """The buckets of one flush interval, for interval quantiles."""

    __slots__ = ("buckets", "count", "max", "min")

    def __init__(self, buckets: tuple[int, ...], count: int, lo: float, hi: float) -> None:
        self.buckets = buckets
        self.count = count
        self.min = lo
        self.max = hi

    def quantile(self, q: float) -> float | None:
        return _quantile(self.buckets, self.count, self.min, self.max, q)


def _quantile(
    buckets: Sequence[int], count: int, vmin: float, vmax: float, q: float
) -> float | None:
    """Interpolate quantile `q` linearly within the bucket that holds its rank."""
    if count == 0:
        return None
    if q <= 0:
        return vmin
    if q >= 1:
        return vmax
    rank = q * count
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lo = _BUCKETS[i - 1] if i > 0 else 0.0
            hi = _BUCKETS[i] if i < len(_BUCKETS) else vmax
            lo = max(lo, vmin)
            hi = min(hi, vmax)
            frac = (rank - seen) / n
            return lo + (hi - lo) * frac
        seen += n
    return vmax


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
        self._keep_samples = False

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
            if self._keep_samples:
                h.samples = []
        return h

    def close_intervals(self) -> None:
        """End a stats flush interval (Envoy's `stats_flush_interval`) for
        every histogram; the flush loop calls this before sinks read."""
        for h in self.histograms.values():
            h.close_interval()

    def keep_samples(self) -> None:
        """Have every histogram, present and future, keep its recorded values
        for a per-value sink (StatsD timers)."""
        self._keep_samples = True
        for h in self.histograms.values():
            if h.samples is None:
                h.samples = []

    def take_samples(self) -> dict[str, list[float]]:
        """Histogram values recorded since the last call, by name (empty
        lists left out); see `keep_samples`."""
        out: dict[str, list[float]] = {}
        for h in self.histograms.values():
            if h.samples:
                out[h.name] = h.take_samples()
        return out

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
