"""The health_check HTTP filter (Envoy's envoy.filters.http.health_check).

A request whose head matches every one of the filter's `headers` (usually
one matcher on `:path`, e.g. `/healthz`) is a health-check request: its
stream info says so (`is_health_check`, for access-log filters).

- Not pass-through (the default here): the filter answers it itself, 200
  while the server is healthy, 503 (flag `LH`, details
  `health_check_failed`) once the admin's `POST /healthcheck/fail` was
  called, 200 again after `POST /healthcheck/ok`. The body is empty, as in
  Envoy.
- Pass-through: while healthy the request goes on to the router (the
  upstream decides); while failed it is answered 503 here.

While the server is failed, every response through this filter, health
check or not, carries `x-envoy-immediate-health-check-fail: true`, so a
downstream Envoy (or trioproxy) that health-checks us drops us at once.
Normal traffic keeps being routed.

The server-wide flag is a `ServerHealth` owned by the runtime `Server`
(and flipped by the admin); the server publishes it to its connection
tasks through the `SERVER_HEALTH` context variable, as `DOWNSTREAM_TLS`
publishes a connection's TLS session. Without a server (unit tests of the
connection manager alone) the server counts as healthy.

Not implemented: `cache_time`, `cluster_min_healthy_percentages`, the
`x-envoy-upstream-healthchecked-cluster` response header (it names the
local cluster, which we have no `--service-cluster` for).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from trioproxy.codec.stream import RequestHead, ResponseHead
from trioproxy.config import HeaderMatcher, HttpFilterConfig
from trioproxy.filters.base import FilterStatus, HttpFilter, http_filter
from trioproxy.http.route_table import header_matcher

if TYPE_CHECKING:
    from trioproxy.http.conn_manager import ActiveStream

__all__ = [
    "IMMEDIATE_HEALTH_CHECK_FAIL",
    "SERVER_HEALTH",
    "HealthCheckFilter",
    "LocalHealthCheck",
    "ServerHealth",
]

IMMEDIATE_HEALTH_CHECK_FAIL = b"x-envoy-immediate-health-check-fail"


@attrs.frozen(kw_only=True)
class LocalHealthCheck(HttpFilterConfig):
    """Envoy's HealthCheck filter config (`pass_through_mode`, `headers`)."""

    headers: tuple[HeaderMatcher, ...] = (HeaderMatcher(name=":path", value="/healthz"),)
    pass_through_mode: bool = False


class ServerHealth:
    """The server-wide health-check state that `/healthcheck/fail|ok` flip."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


SERVER_HEALTH: contextvars.ContextVar[ServerHealth | None] = contextvars.ContextVar(
    "SERVER_HEALTH", default=None
)

# Compiled matchers per config (configs are hashable and few; this avoids
# compiling regexes per request).
_MATCHERS: dict[LocalHealthCheck, tuple[Callable[[RequestHead | ResponseHead], bool], ...]] = {}


def _is_health_check(cfg: LocalHealthCheck, head: RequestHead) -> bool:
    tests = _MATCHERS.get(cfg)
    if tests is None:
        tests = _MATCHERS[cfg] = tuple(header_matcher(m) for m in cfg.headers)
    return all(t(head) for t in tests)


def _failed() -> bool:
    health = SERVER_HEALTH.get()
    return health is not None and health.failed


@http_filter(LocalHealthCheck)
class HealthCheckFilter(HttpFilter):
    config: LocalHealthCheck

    async def on_request_headers(self, stream: ActiveStream) -> FilterStatus:
        if not _is_health_check(self.config, stream.head):
            return FilterStatus.CONTINUE
        stream.info.is_health_check = True
        if _failed():
            await stream.local_reply(503, flag="LH", details="health_check_failed")
            return FilterStatus.STOP
        if self.config.pass_through_mode:
            return FilterStatus.CONTINUE
        await stream.local_reply(200, details="health_check_ok")
        return FilterStatus.STOP

    async def on_response_headers(self, stream: ActiveStream, head: ResponseHead) -> FilterStatus:
        if _failed():
            head.set(IMMEDIATE_HEALTH_CHECK_FAIL, b"true")
        return FilterStatus.CONTINUE
