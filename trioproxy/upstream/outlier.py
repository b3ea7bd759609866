"""Outlier detection (passive health checking), Envoy's consecutive-error kinds.

Sans-IO: the detector is told each try's result with the time, and swept
with the time; the cluster manager feeds it from the router and runs
`sweep` every `interval` in its nursery. Ejected hosts leave the load
balancer (`ClusterRuntime.rebuild`) until their ejection time has passed:
`base_ejection_time` × the number of times the host was ejected, capped at
`max_ejection_time`. At most `max_ejection_percent` of the hosts are ejected
at once, but always at least one, as Envoy does.

Results follow Envoy with `split_external_local_origin_errors: false`: a
5xx response counts towards `consecutive_5xx`, a 502/503/504 also towards
`consecutive_gateway_failure`; a connect failure, reset or timeout counts as
a 503 from the host; any other response resets both counts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from trioproxy.config import OutlierDetection
from trioproxy.observe.stats import StatsStore

__all__ = ["OutlierDetector", "OutlierHost"]


class OutlierHost(Protocol):
    outlier_ejected: bool


class _State:
    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejected_until", "times_ejected")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.times_ejected = 0
        self.ejected_until = -math.inf


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

    # ------------------------------------------------------------ results

    def on_result(self, host: OutlierHost, status: int, now: float) -> None:
        """A try's outcome: the response status, or 503 for a local failure."""
        st = self._state.get(id(host))
        if st is None:
            return
        if status < 500:
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
        return percent >= 100 or self._rng.randrange(100) < percent

    def _eject(self, host: OutlierHost, st: _State, now: float) -> bool:
        cfg = self.config
        ejected = sum(1 for h in self._hosts if h.outlier_ejected)
        limit = max(1, len(self._hosts) * cfg.max_ejection_percent // 100)
        if ejected >= limit:
            self.ejections_overflow.inc()
            return False
        st.times_ejected += 1
        st.ejected_until = now + min(
            cfg.base_ejection_time * st.times_ejected, max(cfg.max_ejection_time, 0.0)
        )
        host.outlier_ejected = True
        self.ejections_total.inc()
        self.ejections_enforced_total.inc()
        self.ejections_active.inc()
        self._on_change()
        return True

    # ------------------------------------------------------------ time

    def sweep(self, now: float) -> None:
        """Bring back hosts whose ejection time has passed (every `interval`)."""
        changed = False
        for h in self._hosts:
            if h.outlier_ejected and self._state[id(h)].ejected_until <= now:
                h.outlier_ejected = False
                self.ejections_active.dec()
                changed = True
        if changed:
            self._on_change()
