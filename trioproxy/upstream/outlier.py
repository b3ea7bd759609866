"""Outlier detection (passive health checking), Envoy's four kinds.

Sans-IO: the detector is told each try's result with the time, and swept
with the time; the cluster manager feeds it from the router and runs
`sweep` every `interval` in its nursery. Ejected hosts leave the load
balancer (`ClusterRuntime.rebuild`) until their ejection time has passed.
At most `max_ejection_percent` of the hosts are ejected at once, but always
at least one, as Envoy does.

Kinds:
- consecutive 5xx and consecutive gateway failures: inline, as results
  arrive;
- success rate: every sweep, over the hosts that saw at least
  `success_rate_request_volume` requests in the interval (if there are at
  least `success_rate_minimum_hosts` of them): a host whose success rate
  is below mean - (success_rate_stdev_factor / 1000) * stdev is an outlier;
- failure percentage: every sweep, over the hosts with at least
  `failure_percentage_request_volume` requests (at least
  `failure_percentage_minimum_hosts` of them): a host failing at least
  `failure_percentage_threshold` % of its requests is an outlier.
Each detection counts `ejections_detected_<kind>`; it is enforced (the host
ejected, `ejections_enforced_<kind>`) with probability
`enforcing_<kind>` %.

Ejection time (Envoy): `base_ejection_time` × the host's ejection
multiplier, at most `max(max_ejection_time, base_ejection_time)`, plus a
random 0..`max_ejection_time_jitter`. The multiplier grows by one per
ejection (while base × multiplier < max + base, so it stays bounded) and
shrinks by one at every sweep that finds the host un-ejected for at least
an interval, so a host that stays healthy is forgiven step by step.

Results follow Envoy with `split_external_local_origin_errors: false`: a
5xx response counts towards `consecutive_5xx`, a 502/503/504 also towards
`consecutive_gateway_failure`; a connect failure, reset or timeout counts as
a 503 from the host; any other response resets both counts. For success
rate and failure percentage a 5xx (or local failure) is a failure, anything
else a success.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from trioproxy.config import OutlierDetection
from trioproxy.observe.stats import StatsStore

__all__ = ["OutlierDetector", "OutlierHost", "success_rate_threshold"]


class OutlierHost(Protocol):
    outlier_ejected: bool


def success_rate_threshold(rates: Sequence[float], stdev_factor: int) -> float:
    """Envoy's success-rate ejection threshold: mean - (factor / 1000) * stdev
    over `rates` (percentages), with the population standard deviation."""
    n = len(rates)
    mean = sum(rates) / n
    variance = sum((r - mean) ** 2 for r in rates) / n
    return mean - (stdev_factor / 1000.0) * math.sqrt(variance)


class _State:
    __slots__ = (
        "consecutive_5xx",
        "consecutive_gateway",
        "ejected_until",
        "interval_success",
        "interval_total",
        "times_ejected",
        "unejected_at",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.times_ejected = 0  # Envoy's ejection multiplier ("backoff")
        self.ejected_until = -math.inf
        self.unejected_at: float | None = None
        # This interval's requests, for success rate and failure percentage.
        self.interval_success = 0
        self.interval_total = 0


class OutlierDetector:
    def __init__(
        self,
        config: OutlierDetection,
        hosts: Sequence[OutlierHost],
        stats: StatsStore,
        prefix: str,
        *,
        on_change: Callable[[], None],
        rng: random.Random,
    ) -> None:
        self.config = config
        self._hosts = hosts
        self._state = {id(h): _State() for h in hosts}
        self._on_change = on_change
        self._rng = rng
        p = f"{prefix}outlier_detection."
        self.ejections_active = stats.gauge(p + "ejections_active")
        self.ejections_total = stats.counter(p + "ejections_total")
        self.ejections_enforced_total = stats.counter(p + "ejections_enforced_total")
        self.ejections_overflow = stats.counter(p + "ejections_overflow")
        self.enforced_5xx = stats.counter(p + "ejections_enforced_consecutive_5xx")
        self.detected_5xx = stats.counter(p + "ejections_detected_consecutive_5xx")
        self.enforced_gateway = stats.counter(p + "ejections_enforced_consecutive_gateway_failure")
        self.detected_gateway = stats.counter(p + "ejections_detected_consecutive_gateway_failure")
        self.enforced_success_rate = stats.counter(p + "ejections_enforced_success_rate")
        self.detected_success_rate = stats.counter(p + "ejections_detected_success_rate")
        self.enforced_failure_percentage = stats.counter(
            p + "ejections_enforced_failure_percentage"
        )
        self.detected_failure_percentage = stats.counter(
            p + "ejections_detected_failure_percentage"
        )

    def sync_hosts(self, removed: Sequence[OutlierHost] = ()) -> None:
        """The cluster's host list changed (discovery): forget `removed`
        hosts (an ejected one no longer counts as active) and start tracking
        the hosts that joined."""
        for h in removed:
            if self._state.pop(id(h), None) is not None and h.outlier_ejected:
                self.ejections_active.dec()
        for h in self._hosts:
            if id(h) not in self._state:
                self._state[id(h)] = _State()

    # ------------------------------------------------------------ results

    def on_result(self, host: OutlierHost, status: int, now: float) -> None:
        """A try's outcome: the response status, or 503 for a local failure."""
        st = self._state.get(id(host))
        if st is None:
            return
        st.interval_total += 1
        if status < 500:
            st.interval_success += 1
            st.consecutive_5xx = 0
            st.consecutive_gateway = 0
            return
        cfg = self.config
        st.consecutive_5xx += 1
        if status in (502, 503, 504):
            st.consecutive_gateway += 1
        if host.outlier_ejected:
            return
        if st.consecutive_5xx >= cfg.consecutive_5xx:
            self.detected_5xx.inc()
            st.consecutive_5xx = 0
            if self._roll(cfg.enforcing_consecutive_5xx) and self._eject(host, st, now):
                self.enforced_5xx.inc()
                return
        if st.consecutive_gateway >= cfg.consecutive_gateway_failure:
            self.detected_gateway.inc()
            st.consecutive_gateway = 0
            if self._roll(cfg.enforcing_consecutive_gateway_failure) and self._eject(host, st, now):
                self.enforced_gateway.inc()

    def _roll(self, percent: int) -> bool:
        if percent <= 0:
            return False
        return percent >= 100 or self._rng.randrange(100) < percent

    def _eject(self, host: OutlierHost, st: _State, now: float) -> bool:
        cfg = self.config
        ejected = sum(1 for h in self._hosts if h.outlier_ejected)
        limit = max(1, len(self._hosts) * cfg.max_ejection_percent // 100)
        if ejected >= limit:
            self.ejections_overflow.inc()
            return False
        base = cfg.base_ejection_time
        longest = max(cfg.max_ejection_time, base)
        # Envoy: the multiplier stops growing once base x multiplier reaches
        # max + base, so that it can decay back in a bounded number of sweeps.
        if st.times_ejected * base < cfg.max_ejection_time + base:
            st.times_ejected += 1
        jitter = (
            self._rng.uniform(0, cfg.max_ejection_time_jitter)
            if cfg.max_ejection_time_jitter
            else 0.0
        )
        st.ejected_until = now + min(base * st.times_ejected, longest) + jitter
        host.outlier_ejected = True
        self.ejections_total.inc()
        self.ejections_enforced_total.inc()
        self.ejections_active.inc()
        self._on_change()
        return True

    # ------------------------------------------------------------ time

    def multiplier(self, host: OutlierHost) -> int:
        """The host's ejection multiplier (for tests and /clusters)."""
        return self._state[id(host)].times_ejected

    def sweep(self, now: float) -> None:
        """Every `interval`: bring back hosts whose ejection time has passed,
        decay the multiplier of hosts that stayed in, then run the
        success-rate and failure-percentage detections over this interval's
        requests and start a new interval."""
        cfg = self.config
        changed = False
        for h in self._hosts:
            st = self._state[id(h)]
            if h.outlier_ejected:
                if st.ejected_until <= now:
                    h.outlier_ejected = False
                    st.unejected_at = now
                    self.ejections_active.dec()
                    changed = True
            elif (
                st.times_ejected
                and st.unejected_at is not None
                and now - st.unejected_at >= cfg.interval
            ):
                st.times_ejected -= 1
        if changed:
            self._on_change()
        self._statistical_ejections(now)
        for st in self._state.values():
            st.interval_success = 0
            st.interval_total = 0

    def _statistical_ejections(self, now: float) -> None:
        cfg = self.config
        sr_hosts: list[tuple[OutlierHost, _State, float]] = []
        fp_hosts: list[tuple[OutlierHost, _State, float]] = []
        for h in self._hosts:
            if h.outlier_ejected:
                continue
            st = self._state[id(h)]
            if not st.interval_total:
                continue
            rate = 100.0 * st.interval_success / st.interval_total
            if st.interval_total >= cfg.success_rate_request_volume:
                sr_hosts.append((h, st, rate))
            if st.interval_total >= cfg.failure_percentage_request_volume:
                fp_hosts.append((h, st, rate))
        if sr_hosts and len(sr_hosts) >= cfg.success_rate_minimum_hosts:
            threshold = success_rate_threshold(
                [rate for _h, _s, rate in sr_hosts], cfg.success_rate_stdev_factor
            )
            for h, st, rate in sr_hosts:
                if rate < threshold:
                    self.detected_success_rate.inc()
                    if (
                        not h.outlier_ejected
                        and self._roll(cfg.enforcing_success_rate)
                        and self._eject(h, st, now)
                    ):
                        self.enforced_success_rate.inc()
        if fp_hosts and len(fp_hosts) >= cfg.failure_percentage_minimum_hosts:
            for h, st, rate in fp_hosts:
                if 100.0 - rate >= cfg.failure_percentage_threshold:
                    self.detected_failure_percentage.inc()
                    if (
                        not h.outlier_ejected
                        and self._roll(cfg.enforcing_failure_percentage)
                        and self._eject(h, st, now)
                    ):
                        self.enforced_failure_percentage.inc()
