"""The overload manager's state: which actions are on (sans-IO).

`OverloadState.update(rss, connections)` turns resource readings into
pressures (use / maximum) and each configured action on or off against its
threshold. The data plane only reads three booleans, so the per-request cost
is an attribute load:

- `stop_requests`: new requests get a local 503 with flag `OM`
  (Envoy's envoy.overload_actions.stop_accepting_requests);
- `disable_keepalive`: HTTP/1.1 responses carry `connection: close`
  (envoy.overload_actions.disable_http_keepalive);
- `stop_connections`: listeners close new connections at accept
  (envoy.overload_actions.stop_accepting_connections).

The runtime samples the readings every `refresh_interval` and publishes
the gauges `overload.<action>.active` and `overload.<resource>.pressure`
(0..100), as Envoy names them.
"""

from __future__ import annotations

from trioproxy.config import OverloadManager

__all__ = ["INACTIVE", "OverloadState"]


class OverloadState:
    __slots__ = ("config", "disable_keepalive", "pressures", "stop_connections", "stop_requests")

    def __init__(self, config: OverloadManager | None = None) -> None:
        self.config = config
        self.stop_requests = False
        self.disable_keepalive = False
        self.stop_connections = False
        self.pressures: dict[str, float] = {}

    def update(self, *, rss_bytes: int, downstream_connections: int) -> None:
        """Recompute pressures and actions from fresh readings."""
        c = self.config
        if c is None:
            return
        pressures: dict[str, float] = {}
        if c.max_heap_bytes:
            pressures["fixed_heap"] = rss_bytes / c.max_heap_bytes
        if c.max_active_downstream_connections:
            pressures["global_downstream_max_connections"] = (
                downstream_connections / c.max_active_downstream_connections
            )
        self.pressures = pressures
        top = max(pressures.values(), default=0.0)
        active = {name for name, threshold in c.actions if top >= threshold}
        self.stop_requests = "stop_accepting_requests" in active
        self.disable_keepalive = "disable_http_keepalive" in active
        self.stop_connections = "stop_accepting_connections" in active

    def active(self, action: str) -> bool:
        return {
            "stop_accepting_requests": self.stop_requests,
            "disable_http_keepalive": self.disable_keepalive,
            "stop_accepting_connections": self.stop_connections,
        }[action]


# Shared by connection managers that run without an overload manager.
INACTIVE = OverloadState()
