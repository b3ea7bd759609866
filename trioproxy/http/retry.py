"""Retries: when a try may be retried, the back-off, and the replayable body.

The router makes one try at a time inside the route timeout's cancel scope
(so the route timeout covers every try, as in Envoy); with a hedge policy
tries overlap instead (see `Router._hedged`), under the same conditions and
limits. At each point where a
try can fail before anything was sent downstream — connect failure, reset,
per-try timeout, a response head with a retriable status — the router asks
`RetryState.should_retry(...)`. A yes unwinds the try (its upstream stream is
reset, never reused) and the router sleeps the back-off and tries again,
preferring a host it has not tried; a no lets the failure reach the client
as it would without a policy, flagged `URX` when the retry limit was the
reason.

Conditions follow Envoy's retry_state_impl: a connect failure is retried
under `5xx`, `gateway-error` or `connect-failure`; a reset under `5xx`,
`gateway-error` or `reset`; a refused stream also under `refused-stream`; a
per-try timeout under `5xx`, `gateway-error` or `reset`; responses by status
(`5xx`, `gateway-error` = 502/503/504, `retriable-4xx` = 409,
`retriable-status-codes`), by headers (`retriable-headers`) and, for gRPC
requests, by the `grpc-status` of a trailers-only response.

Limits: `num_retries`; the cluster's retry circuit breaker (`max_retries`,
3, or a retry budget: `budget_percent` of active requests, at least
`min_retry_concurrency`), counted as `upstream_rq_retry_overflow`; and the
replay buffer: a request body larger than `max_replay_bytes` is not kept, so
its try cannot be repeated (`response_code_details` says so). The runtime
key `upstream.use_retry` (a percentage, 100 by default) switches retries off
or down without a restart, as in Envoy.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import trio

from trioproxy.codec.grpc import GRPC_STATUS, grpc_status_of
from trioproxy.codec.stream import ResponseHead
from trioproxy.config import RetryPolicy
from trioproxy.config.graph import RETRY_ON
from trioproxy.http.route_table import header_matcher

if TYPE_CHECKING:
    from trioproxy.http.conn_manager import ActiveStream
    from trioproxy.net.upstream import UpstreamStream
    from trioproxy.upstream.cluster_manager import ClusterRuntime

__all__ = ["USE_RETRY_KEY", "ReplayBody", "RetryRuntime", "RetryState", "parse_retry_on"]

# Envoy's runtime key: the percentage of retriable failures actually retried.
USE_RETRY_KEY: Final = "upstream.use_retry"


class RetryRuntime(Protocol):
    """What retries ask the runtime (`trioproxy.runtime.layers.Runtime`)."""

    def feature_enabled(self, key: str, default_percent: float) -> bool: ...


_GRPC_CONDITIONS: Final = {
    "cancelled": GRPC_STATUS["CANCELLED"],
    "deadline-exceeded": GRPC_STATUS["DEADLINE_EXCEEDED"],
    "resource-exhausted": GRPC_STATUS["RESOURCE_EXHAUSTED"],
    "unavailable": GRPC_STATUS["UNAVAILABLE"],
    "internal": GRPC_STATUS["INTERNAL"],
}

# Which failures each condition covers (Envoy's wouldRetryFromReset and friends).
_FAILURE_CONDITIONS: Final = {
    "connect-failure": {"5xx", "gateway-error", "connect-failure"},
    "reset": {"5xx", "gateway-error", "reset"},
    "refused-stream": {"5xx", "gateway-error", "reset", "refused-stream"},
    "per-try-timeout": {"5xx", "gateway-error", "reset"},
}


def parse_retry_on(value: bytes) -> frozenset[str]:
    """The conditions of an `x-envoy-retry-on` header (unknown ones ignored)."""
    items = {t.strip().decode("latin-1").lower() for t in value.split(b",")}
    return frozenset(i for i in items if i in RETRY_ON)


@functools.cache
def _retriable_headers(
    policy: RetryPolicy,
) -> tuple[Callable[[ResponseHead], bool], ...]:
    """The policy's `retriable_headers`, compiled once per policy (the same
    matchers routes use)."""
    return tuple(header_matcher(m) for m in policy.retriable_headers)


class ReplayBody:
    """The request body, kept (up to a limit) so a later try can resend it.

    Each try calls `send(up)`: the chunks kept so far are replayed, then the
    rest is read from the downstream (only one try reads at a time).
    """

    __slots__ = ("_chunks", "_limit", "_size", "overflow", "stream")

    def __init__(self, stream: ActiveStream, limit: int) -> None:
        self.stream = stream
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.overflow = limit <= 0

    async def buffer(self) -> None:
        """Read the body into the buffer before any try, for hedged tries that
        send it concurrently. Stops once the body is over the limit: `overflow`
        is then set and `send` sends what was read, then the rest.

        Raises:
            DownstreamReset / DownstreamProtocolError: as `read_body`.
        """
        stream = self.stream
        while not self.overflow:
            chunk = await stream.read_body()
            if chunk is None:
                return
            self._size += len(chunk)
            self._chunks.append(chunk)
            self.overflow = self._size > self._limit

    async def send(self, up: UpstreamStream) -> None:
        for kept in self._chunks:
            await up.send_data(kept)
        if self.overflow:
            # Only left by `buffer()` for the one try that will be made.
            self._chunks.clear()
        stream = self.stream
        while (chunk := await stream.read_body()) is not None:
            if not self.overflow:
                self._size += len(chunk)
                if self._size > self._limit:
                    self.overflow = True
                    self._chunks.clear()
                else:
                    self._chunks.append(chunk)
            await up.send_data(chunk)
        await up.send_end(stream.request_trailers or None)


class RetryState:
    """One request's retry bookkeeping."""

    __slots__ = (
        "_cluster",
        "_grpc",
        "_rng",
        "_runtime",
        "attempt",
        "body",
        "conditions",
        "num_retries",
        "per_try_timeout",
        "policy",
        "retried",
        "stream",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        cluster: ClusterRuntime,
        stream: ActiveStream,
        body: ReplayBody,
        *,
        grpc: bool,
        rng: random.Random,
        retry_on: frozenset[str] | None = None,
        num_retries: int | None = None,
        runtime: RetryRuntime | None = None,
    ) -> None:
        self.policy = policy
        self._runtime = runtime
        self.conditions = policy.retry_on if retry_on is None else retry_on
        self.num_retries = policy.num_retries if num_retries is None else num_retries
        self.per_try_timeout = policy.per_try_timeout
        self._cluster = cluster
        self.stream = stream
        self.body = body
        self._grpc = grpc
        self._rng = rng
        self.attempt = 1
        self.retried = False

    # ------------------------------------------------------------ decisions

    def _allowed(self, details: str) -> bool:
        """The limits, once a condition said yes."""
        cluster = self._cluster
        info = self.stream.info
        if self.body.overflow and self.stream.has_body:
            info.response_code_details = f"{details}{{retry_skipped_body_too_large}}"
            return False
        if self.attempt > self.num_retries:
            cluster.rq_retry_limit_exceeded.inc()
            info.add_flag("URX")
            return False
        # Envoy's runtime kill switch for retries (RetryStateImpl::shouldRetry).
        runtime = self._runtime
        if runtime is not None and not runtime.feature_enabled(USE_RETRY_KEY, 100):
            return False
        if not cluster.retry_allowed():
            cluster.rq_retry_overflow.inc()
            return False
        return True

    def should_retry_failure(self, kind: str) -> bool:
        """A failure before any response: connect-failure, reset, refused-stream
        or per-try-timeout."""
        if not self.conditions & _FAILURE_CONDITIONS[kind]:
            return False
        return self._allowed(kind.replace("-", "_"))

    def should_retry_response(self, resp: ResponseHead) -> bool:
        return self.response_retriable(resp) and self._allowed("retriable_response")

    def retry_allowed(self) -> bool:
        """The limits for a retriable response (`response_retriable` said yes)."""
        return self._allowed("retriable_response")

    def response_retriable(self, resp: ResponseHead) -> bool:
        """The conditions alone: would this response be retried if the limits allowed?"""
        c = self.conditions
        status = resp.status
        hit = (
            ("5xx" in c and status >= 500)
            or ("gateway-error" in c and status in (502, 503, 504))
            or ("retriable-4xx" in c and status == 409)
            or ("retriable-status-codes" in c and status in self.policy.retriable_status_codes)
            or (
                "retriable-headers" in c
                and any(test(resp) for test in _retriable_headers(self.policy))
            )
        )
        if not hit and self._grpc:
            code = grpc_status_of(resp.headers)
            hit = code is not None and any(
                name in c and code == value for name, value in _GRPC_CONDITIONS.items()
            )
        return hit

    # ------------------------------------------------------------ between tries

    def begin_retry(self) -> float:
        """Count retry number `attempt`; its fully jittered exponential back-off."""
        p = self.policy
        ceiling = min(p.base_interval * (2**self.attempt - 1), p.max_interval)
        self.attempt += 1
        self.retried = True
        self._cluster.rq_retry.inc()
        return self._rng.uniform(0, ceiling)

    def should_hedge_per_try_timeout(self) -> bool:
        """A hedged per-try timeout: retried whenever the limits allow, whatever
        the conditions (Envoy's shouldHedgeRetryPerTryTimeout)."""
        return self._allowed("per_try_timeout")

    async def backoff(self) -> None:
        """Fully jittered exponential back-off before retry number `attempt`."""
        await trio.sleep(self.begin_retry())
