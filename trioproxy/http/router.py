"""The router: the terminal stage of every HTTP stream.

It matches the route, then either answers locally (redirect, direct
response, 404 `NR`) or forwards to a cluster:

    route timeout scope (Envoy `timeout`, 15 s; starts when the downstream
    request is complete, as in Envoy, and covers the whole response)
    └─ choose host (none: 503 UH) → acquire pooled connection (connect
       timeout scope inside the pool: 503 UF) → send head → [body pump task
       if the request has a body] → relay response head, body, trailers

Failures map to Envoy's local replies and flags: connect failure 503 `UF`,
upstream reset before the response 503 `UC`, invalid upstream response 502
`UPE`, route timeout 504 `UT`. After the response has started, a failure can
only close the downstream connection (the client sees a truncated body).

With a hedge policy (`_hedged`), tries overlap: each is a task in one
nursery with its own cancel scope, a supervisor starts them (racing delay,
retry back-off, hedged per-try timeouts), the first good response head wins
and is relayed by its task, and the others are cancelled: their HTTP/1.1
connection is closed, their HTTP/2 stream reset (CANCEL). Without a hedge
policy none of this runs: no extra task or nursery per request.

Every counter and pooled connection taken is given back in a `finally`, so
a request cancelled at any checkpoint (client gone, timeout) leaks nothing.
"""

from __future__ import annotations

import ipaddress
import math
import random
from typing import TYPE_CHECKING, Final

import attrs
import trio

from trioproxy.codec.grpc import GRPC_STATUS, is_grpc, parse_timeout
from trioproxy.codec.stream import RequestHead, ResponseHead
from trioproxy.config import (
    DirectResponseAction,
    HedgePolicy,
    RedirectAction,
    RetryPolicy,
    Route,
    RouteAction,
)
from trioproxy.http.hash_policy import request_hash
from trioproxy.http.retry import ReplayBody, RetryRuntime, RetryState, parse_retry_on
from trioproxy.http.upgrade import tunnel
from trioproxy.net.errors import (
    ConnectFailure,
    DownstreamProtocolError,
    DownstreamReset,
    PoolOverflow,
    UpstreamProtocolError,
    UpstreamReset,
)
from trioproxy.net.pool import UpstreamHttp1
from trioproxy.upstream.cluster_manager import ClusterManager, ClusterRuntime, Host

if TYPE_CHECKING:
    from trioproxy.http.conn_manager import ActiveStream, ConnectionManager
    from trioproxy.net.upstream import UpstreamStream
    from trioproxy.observe.tracing.tracer import ActiveSpan

__all__ = ["Router"]

# Envoy's local-reply bodies, so that users' grep patterns carry over.
_CONNECT_FAILURE_BODY = (
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
_OVERFLOW_BODY = (
    b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
)
_RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "


def _reset_reason(message: str) -> tuple[str, str]:
    """Envoy's response flag and reset reason for an upstream reset.

    An HTTP/2 RST_STREAM is a "remote reset" (flag UR), REFUSED_STREAM a
    "remote refused stream reset"; a closed connection is UC.
    """
    if message == "refused_stream":
        return "UR", "remote refused stream reset"
    if message.startswith("remote reset"):
        return "UR", "remote reset"
    return "UC", "connection termination"


# x-envoy-* request headers the router consumes; never forwarded upstream.
_CONSUMED_HEADERS: Final = frozenset(
    {
        b"x-envoy-retry-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-hedge-on-per-try-timeout",
    }
)


def _trusted(remote: str) -> bool:
    """A client whose x-envoy-* headers are honoured: loopback or a private
    (RFC 1918 / ULA) address, Envoy's classic internal addresses."""
    host = remote.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


_DEFAULT_REPLAY_BYTES: Final = RetryPolicy().max_replay_bytes
_NO_HEDGE: Final = HedgePolicy()

# How long a bodiless request waits for the response head before a task
# starts watching the downstream for a client that gives up.
_WATCH_AFTER: Final = 0.05


class _RetryResponse(Exception):
    """A try's response head was retriable: unwind the try."""


class _Forward:
    """The state of one forwarded request, shared by the relay and the pump."""

    __slots__ = (
        "body",
        "downstream_error",
        "lb_hash",
        "request_done",
        "retry",
        "route_scope",
        "set_cookies",
        "timeout",
        "try_status",
        "watch_done",
        "watch_scope",
    )

    def __init__(
        self,
        route_scope: trio.CancelScope,
        timeout: float,
        body: ReplayBody,
        retry: RetryState | None,
    ) -> None:
        self.route_scope = route_scope
        self.timeout = timeout
        self.body = body
        self.retry = retry
        self.request_done = False
        self.downstream_error: BaseException | None = None
        # The request's hash for ring_hash / maglev, and Set-Cookie values
        # generated by cookie hash policies (see `_hash_request`).
        self.lb_hash: int | None = None
        self.set_cookies: tuple[bytes, ...] = ()
        # The status of the current try's response (0: none yet), for tracing.
        self.try_status = 0
        # The downstream watcher's scope, and an event set once it has exited
        # (an upgrade must take the socket over from it). New for each try.
        self.watch_scope = trio.CancelScope()
        self.watch_done = trio.Event()

    def next_try(self) -> None:
        self.watch_scope = trio.CancelScope()
        self.watch_done = trio.Event()

    async def stop_watching(self) -> None:
        self.watch_scope.cancel()
        await self.watch_done.wait()

    def start_route_timer(self) -> None:
        # Envoy's route timeout starts once the whole request has been received.
        self.request_done = True
        self.route_scope.deadline = trio.current_time() + self.timeout


class _NoTimeout:
    """Stands in for `trio.move_on_after(math.inf)`: never cancels, catches nothing."""

    __slots__ = ()

    cancelled_caught: Final = False

    def __enter__(self) -> _NoTimeout:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_TIMEOUT: Final = _NoTimeout()


class _Reply:
    """A local reply a failed try would give, sent if it is the race's last."""

    __slots__ = ("body", "details", "flag", "grpc_status", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        flag: str,
        details: str,
        *,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        grpc_status: int | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.flag = flag
        self.details = details
        self.headers = headers
        self.grpc_status = grpc_status

    async def send(self, stream: ActiveStream) -> None:
        await stream.local_reply(
            self.status,
            self.body,
            flag=self.flag,
            details=self.details,
            headers=self.headers,
            grpc_status=self.grpc_status,
        )


_OVERFLOW_REPLY: Final = _Reply(
    503,
    _OVERFLOW_BODY,
    "UO",
    "upstream_reset_before_response_started{overflow}",
    headers=((b"x-envoy-overloaded", b"true"),),
)
_CONNECT_FAILURE_REPLY: Final = _Reply(
    503,
    _CONNECT_FAILURE_BODY,
    "UF",
    "upstream_reset_before_response_started{connection_failure}",
)
_PER_TRY_TIMEOUT_REPLY: Final = _Reply(
    504,
    b"upstream request timeout",
    "UT",
    "upstream_per_try_timeout",
    grpc_status=GRPC_STATUS["DEADLINE_EXCEEDED"],
)


class _Try:
    """One try of a hedged request."""

    __slots__ = ("answered", "attempt", "deadline", "finished", "host", "scope", "won")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt  # its x-envoy-attempt-count
        self.scope = trio.CancelScope()  # cancelled when another try wins
        self.host: Host | None = None
        self.deadline = math.inf  # a hedged (soft) per-try timeout
        self.answered = False  # its response head arrived
        self.won = False
        self.finished = False


class _Race:
    """The tries of one hedged request and what the supervisor waits for.

    Tries report to the supervisor through `receive` (set on any news);
    the supervisor alone starts tries and answers a race nobody won.
    """

    __slots__ = (
        "cluster",
        "decided",
        "done",
        "hedge",
        "holding",
        "inflight",
        "last_failure",
        "nursery",
        "receive",
        "responded",
        "retry_at",
        "state",
        "tried",
        "tries",
    )

    def __init__(
        self, hedge: HedgePolicy, state: RetryState | None, cluster: ClusterRuntime
    ) -> None:
        self.hedge = hedge
        self.cluster = cluster
        self.state = state
        self.nursery: trio.Nursery | None = None
        self.tries: list[_Try] = []
        self.tried: list[Host] = []
        self.inflight = 0  # tries started and not yet finished or failed
        self.retry_at: list[float] = []  # when retries after a back-off start
        self.holding = False  # counted in the cluster's retries_active
        self.responded = False  # some response head arrived: no more racing
        self.decided = False  # a try won
        self.done = False  # the winner relayed its response (or gave up)
        self.last_failure = _Reply(
            503, b"no healthy upstream", "UH", "no_healthy_upstream"
        )  # replaced by the first failure
        self.receive = trio.Event()

    def next_deadline(self, next_hedge: float) -> float:
        if self.decided:
            return math.inf  # only the winner's end is awaited
        soft = min((t.deadline for t in self.tries if not t.finished), default=math.inf)
        return min(next_hedge, soft, self.retry_at[0] if self.retry_at else math.inf)

    def retry(self, backoff: float, failed: _Try | None = None) -> None:
        """Start another try after `backoff` (counted already by RetryState)."""
        if failed is not None:
            self._drop(failed)
        if self.decided:
            return
        if not self.holding:
            self.cluster.retries_active += 1
            self.holding = True
        self.retry_at.append(trio.current_time() + backoff)
        self.retry_at.sort()
        self.receive.set()

    def fail(self, t: _Try, reply: _Reply, kind: str | None = None) -> None:
        """`t` failed before a response: retry if the policy says so, else
        keep `reply` for the client in case no other try succeeds."""
        state = self.state
        if self.decided:
            self._drop(t)
            return
        if kind is not None and state is not None and state.should_retry_failure(kind):
            self.retry(state.begin_retry(), t)
            return
        self.last_failure = reply
        self._drop(t)
        self.receive.set()

    def others_pending(self, t: _Try) -> bool:
        """Another try is in flight or a retry is due, besides `t`."""
        return self.inflight - (not t.finished) > 0 or bool(self.retry_at)

    def _drop(self, t: _Try) -> None:
        if not t.finished:
            t.finished = True
            t.deadline = math.inf
            self.inflight -= 1

    def claim(self, winner: _Try) -> None:
        """`winner` has a good response head: cancel every other try."""
        self.decided = True
        winner.won = True
        winner.deadline = math.inf
        self.retry_at.clear()
        for t in self.tries:
            if t is not winner and not t.finished:
                # A loser: its upstream request is reset (HTTP/2 RST_STREAM
                # CANCEL) or its connection closed, never pooled mid-message.
                t.scope.cancel()
                self.cluster.rq_tx_reset.inc()
        self.receive.set()

    def cancel_all(self) -> None:
        self.done = True
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    def finish(self, t: _Try) -> None:
        self._drop(t)
        if t.won:
            self.done = True
        self.receive.set()


class Router:
    def __init__(
        self,
        clusters: ClusterManager,
        *,
        rng: random.Random | None = None,
        runtime: RetryRuntime | None = None,
    ) -> None:
        self.clusters = clusters
        self._rng = rng or random.Random()
        self._runtime = runtime

    async def route(self, hcm: ConnectionManager, stream: ActiveStream) -> None:
        head = stream.head
        _vh, route = hcm.route_table.match(head)
        if route is None:
            hcm.stats.no_route.inc()
            await stream.local_reply(404, flag="NR", details="route_not_found")
            return
        stream.info.route_name = route.name
        action = route.action
        if type(action) is RouteAction:
            await self._forward(hcm, stream, route, action)
        elif type(action) is RedirectAction:
            hcm.stats.rq_redirect.inc()
            location = _redirect_location(head, route, action)
            await stream.local_reply(
                action.code, headers=[(b"location", location)], details="direct_response"
            )
        elif type(action) is DirectResponseAction:
            hcm.stats.rq_direct_response.inc()
            await stream.local_reply(
                action.status,
                action.body,
                content_type=action.content_type.encode(),
                details="direct_response",
            )
        else:  # pragma: no cover - the compiler admits no other action
            raise AssertionError(f"unknown route action {action!r}")

    # ------------------------------------------------------------------ forwarding

    def _pick_cluster(self, action: RouteAction) -> str:
        if action.cluster is not None:
            return action.cluster
        total = sum(w.weight for w in action.weighted_clusters)
        x = self._rng.random() * total
        for w in action.weighted_clusters:
            x -= w.weight
            if x < 0:
                return w.name
        return action.weighted_clusters[-1].name

    async def _forward(
        self, hcm: ConnectionManager, stream: ActiveStream, route: Route, action: RouteAction
    ) -> None:
        name = self._pick_cluster(action)
        stream.info.upstream_cluster = name
        cluster = self.clusters.get(name)
        if cluster is None:
            hcm.stats.no_cluster.inc()
            await stream.local_reply(503, flag="NC", details="cluster_not_found")
            return
        head = stream.head
        if stream.upgrade is not None and not (
            action.allow_upgrades and stream.upgrade.decode("latin-1") in hcm.config.upgrade_types
        ):
            # Envoy refuses an upgrade it is not configured for.
            await stream.local_reply(403, details="upgrade_failed")
            return
        if action.prefix_rewrite is not None or action.host_rewrite is not None:
            _rewrite(head, route, action)
        timeout = action.timeout if action.timeout > 0 else math.inf
        grpc = is_grpc(head)
        if grpc:
            # `grpc-timeout` sets the deadline (Envoy with grpc_timeout_header_max 0).
            deadline = parse_timeout(head.get(b"grpc-timeout"))
            if deadline is not None:
                timeout = deadline
        policy = action.retry_policy
        retry_on: frozenset[str] | None = None
        max_retries: int | None = None
        hedge = action.hedge_policy
        given = {k: v for k, v in reversed(head.headers) if k in _CONSUMED_HEADERS}
        if given:
            # Envoy's x-envoy-* request headers: honoured from trusted
            # clients, never forwarded. One scan when none is present.
            head.headers = [(k, v) for k, v in head.headers if k not in _CONSUMED_HEADERS]
            if _trusted(stream.info.downstream_remote_address):
                rq_timeout = given.get(b"x-envoy-upstream-rq-timeout-ms")
                if rq_timeout is not None and rq_timeout.isdigit():
                    timeout = int(rq_timeout) / 1000 or math.inf
                value = given.get(b"x-envoy-retry-on")
                if value is not None:
                    retry_on = parse_retry_on(value)
                value = given.get(b"x-envoy-max-retries")
                if value is not None and value.isdigit():
                    max_retries = int(value)
                value = given.get(b"x-envoy-hedge-on-per-try-timeout")
                if value is not None:
                    hedge = attrs.evolve(
                        hedge or _NO_HEDGE, hedge_on_per_try_timeout=value.lower() == b"true"
                    )
                    if hedge == _NO_HEDGE:
                        hedge = None  # one try at a time: the ordinary path
        if policy is None and retry_on:
            policy = RetryPolicy(retry_on=retry_on)
        if policy is not None:
            replay = policy.max_replay_bytes
        else:
            # Hedged tries each send the body: keep it as a retry policy would.
            replay = _DEFAULT_REPLAY_BYTES if hedge is not None else 0
        body = ReplayBody(stream, replay)
        state = None
        if policy is not None:
            state = RetryState(
                policy,
                cluster,
                stream,
                body,
                grpc=grpc,
                rng=self._rng,
                retry_on=retry_on,
                num_retries=max_retries,
                runtime=self._runtime,
            )
        try:
            # Without a body the route timeout starts now: the scope gets its
            # deadline when created rather than set on it (`start_route_timer`),
            # one deadline registration fewer per request.
            deadline = math.inf if stream.has_body else trio.current_time() + timeout
            with trio.CancelScope(deadline=deadline) as route_scope:
                fwd = _Forward(route_scope, timeout, body, state)
                fwd.request_done = not stream.has_body
                if cluster.hash_based and action.hash_policy:
                    _hash_request(fwd, stream, action)
                if hedge is None or stream.upgrade is not None:
                    await self._tries(stream, cluster, fwd)
                else:
                    await self._hedged(stream, cluster, fwd, hedge)
            if route_scope.cancelled_caught and stream.closed_by_client():
                # Cancelled by the client's reset (`cancel_on_reset`), not the timeout.
                stream.close_connection = True
                raise DownstreamReset("client closed before the response ended")
            if route_scope.cancelled_caught:
                cluster.rq_timeout.inc()
                stream.info.add_flag("UT")
                if stream.response_started:
                    stream.close_connection = True
                else:
                    await stream.local_reply(
                        504,
                        b"upstream request timeout",
                        details="upstream_response_timeout",
                        grpc_status=GRPC_STATUS["DEADLINE_EXCEEDED"],
                    )
        finally:
            if grpc:
                cluster.on_grpc_response(head.path, stream)
        if fwd.downstream_error is not None:
            raise fwd.downstream_error

    async def _tries(self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward) -> None:
        """One try, then more while the retry policy says so."""
        state = fwd.retry
        tried: list[Host] = []
        if state is None:
            await self._forward_once(stream, cluster, fwd, tried)
            return
        head = stream.head
        holding = False
        try:
            while True:
                head.set(b"x-envoy-attempt-count", str(state.attempt).encode())
                if not await self._forward_once(stream, cluster, fwd, tried):
                    break
                if not holding:
                    cluster.retries_active += 1
                    holding = True
                await state.backoff()
                fwd.next_try()
            if state.retried and 0 < stream.info.response_code < 500:
                cluster.rq_retry_success.inc()
        finally:
            if holding:
                cluster.retries_active -= 1

    def _choose(
        self, cluster: ClusterRuntime, tried: list[Host], lb_hash: int | None = None
    ) -> Host | None:
        """A host, preferring one not tried yet (Envoy's previous_hosts predicate).
        A hash-based balancer is asked again with a growing `attempt`."""
        host = cluster.choose_host(lb_hash)
        for attempt in range(1, 4):
            if host is None or host not in tried:
                break
            host = cluster.choose_host(lb_hash, attempt)
        return host

    async def _forward_once(
        self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward, tried: list[Host]
    ) -> bool:
        """One try; True if it failed in a way the retry policy retries."""
        info = stream.info
        retry = fwd.retry
        host = self._choose(cluster, tried, fwd.lb_hash)
        if host is None:
            await stream.local_reply(
                503, b"no healthy upstream", flag="UH", details="no_healthy_upstream"
            )
            return False
        if not cluster.request_allowed():
            await stream.local_reply(
                503,
                _OVERFLOW_BODY,
                flag="UO",
                details="upstream_reset_before_response_started{overflow}",
                headers=[(b"x-envoy-overloaded", b"true")],
            )
            return False
        tried.append(host)
        info.upstream_host = host.address
        span = stream.span
        if span is not None:
            span = span.start_client(cluster.name, host.address)
            span.inject(stream.head)
            fwd.try_status = 0
        cluster.on_request_start(host)
        up: UpstreamStream | None = None
        reusable = False
        per_try = retry.per_try_timeout if retry is not None and retry.per_try_timeout else math.inf
        try:
            # Without a per-try timeout no scope is opened: a CancelScope
            # costs ~2 % of a proxied request, and one with an infinite
            # deadline that nobody cancels never catches anything.
            scope = trio.move_on_after(per_try) if per_try != math.inf else _NO_TIMEOUT
            with scope as try_scope:
                try:
                    up = await host.pool.acquire()
                except PoolOverflow:
                    await stream.local_reply(
                        503,
                        _OVERFLOW_BODY,
                        flag="UO",
                        details="upstream_reset_before_response_started{overflow}",
                        headers=[(b"x-envoy-overloaded", b"true")],
                    )
                    return False
                except ConnectFailure as exc:
                    info.upstream_transport_failure_reason = f"{exc.reason}: {exc}"
                    cluster.on_local_failure(host)
                    if retry is not None and retry.should_retry_failure("connect-failure"):
                        return True
                    await stream.local_reply(
                        503,
                        _CONNECT_FAILURE_BODY,
                        flag="UF",
                        details="upstream_reset_before_response_started{connection_failure}",
                    )
                    return False
                reusable = await self._exchange(stream, cluster, host, up, fwd)
            if try_scope.cancelled_caught:
                cluster.rq_per_try_timeout.inc()
                cluster.on_local_failure(host)
                if stream.response_started:
                    stream.info.add_flag("UT")
                    stream.close_connection = True
                    return False
                if retry is not None and retry.should_retry_failure("per-try-timeout"):
                    return True
                info.add_flag("UT")
                await stream.local_reply(
                    504,
                    b"upstream request timeout",
                    details="upstream_per_try_timeout",
                    grpc_status=GRPC_STATUS["DEADLINE_EXCEEDED"],
                )
        except _RetryResponse:
            return True
        except UpstreamReset as exc:
            cluster.rq_rx_reset.inc()
            if not stream.response_started:
                cluster.on_local_failure(host)
            flag, reason = _reset_reason(str(exc))
            kind = "refused-stream" if str(exc) == "refused_stream" else "reset"
            if (
                not stream.response_started
                and retry is not None
                and retry.should_retry_failure(kind)
            ):
                return True
            await self._upstream_failed(
                stream, flag, 503, _RESET_PREFIX + reason.encode(), reason.replace(" ", "_")
            )
        except UpstreamProtocolError as exc:
            cluster.cx_protocol_error.inc()
            info.upstream_transport_failure_reason = str(exc)
            await self._upstream_failed(
                stream, "UPE", 502, b"upstream protocol error", "upstream_protocol_error"
            )
        finally:
            cluster.on_request_end(host)
            if up is not None:
                host.pool.release(up, reusable=reusable)
            if span is not None:
                _finish_span(span, fwd.try_status, up)
        return False

    # ------------------------------------------------------------------ hedging

    async def _hedged(
        self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward, hedge: HedgePolicy
    ) -> None:
        """Tries that overlap: racing (`initial_requests`, `additional_request_delay`)
        and Envoy's hedge_on_per_try_timeout. The first good response wins.

        The body is read into the replay buffer first (each try sends it);
        one too big for it gets a single, unhedged try. Timers (the next
        racing try, retry back-offs, hedged per-try timeouts) live here, in
        the supervisor; each try is a task in the race nursery with its own
        cancel scope, so a loser is cancelled and its stream reset or closed.
        """
        if stream.has_body:
            try:
                await fwd.body.buffer()
            except (DownstreamReset, DownstreamProtocolError) as exc:
                fwd.downstream_error = exc
                stream.close_connection = True
                return
            if fwd.body.overflow:
                await self._tries(stream, cluster, fwd)
                stream.info.response_code_details += "{hedge_skipped_body_too_large}"
                return
            fwd.start_route_timer()
        race = _Race(hedge, fwd.retry, cluster)
        try:
            async with trio.open_nursery() as nursery:
                race.nursery = nursery
                nursery.start_soon(self._watch_downstream, stream, fwd, nursery.cancel_scope)
                await self._supervise(stream, cluster, fwd, race)
                nursery.cancel_scope.cancel()
        finally:
            if race.holding:
                cluster.retries_active -= 1
        state = fwd.retry
        if state is not None and state.retried and 0 < stream.info.response_code < 500:
            cluster.rq_retry_success.inc()

    async def _supervise(
        self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward, race: _Race
    ) -> None:
        """Start tries on time, until a winner has relayed its response or the
        last failure has been answered."""
        hedge = race.hedge
        delay = hedge.additional_request_delay or 0.0
        extra = hedge.initial_requests - 1
        self._launch(stream, cluster, fwd, race)
        while extra and not delay:
            self._launch(stream, cluster, fwd, race)
            extra -= 1
        next_hedge = trio.current_time() + delay
        receive = race.receive
        while True:
            now = trio.current_time()
            if race.done:
                return
            if not race.decided:
                if race.inflight == 0 and not race.retry_at:
                    if not extra:
                        await race.last_failure.send(stream)
                        return
                    # Every try failed and no retry is due: race the next one now.
                    self._launch(stream, cluster, fwd, race)
                    extra -= 1
                    next_hedge = now + delay
                    continue
                if extra and not race.responded and next_hedge <= now:
                    self._launch(stream, cluster, fwd, race)
                    extra -= 1
                    next_hedge = now + delay
                    continue
                if race.retry_at and race.retry_at[0] <= now:
                    race.retry_at.pop(0)
                    self._launch(stream, cluster, fwd, race)
                    continue
                for t in race.tries:
                    if not t.finished and not t.answered and t.deadline <= now:
                        self._soft_per_try_timeout(cluster, race, t)
            deadline = race.next_deadline(next_hedge if extra and not race.responded else math.inf)
            with trio.move_on_at(deadline):
                await receive.wait()
            race.receive = receive = trio.Event()

    def _soft_per_try_timeout(self, cluster: ClusterRuntime, race: _Race, t: _Try) -> None:
        """Envoy's onSoftPerTryTimeout: count it, keep the try, maybe retry beside it."""
        t.deadline = math.inf
        cluster.rq_per_try_timeout.inc()
        if t.host is not None:
            cluster.on_local_failure(t.host)
        state = race.state
        if state is not None and state.should_hedge_per_try_timeout():
            race.retry(state.begin_retry())

    def _launch(
        self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward, race: _Race
    ) -> None:
        t = _Try(len(race.tries) + 1)
        state = race.state
        if race.hedge.hedge_on_per_try_timeout and state is not None and state.per_try_timeout:
            # A soft timeout, watched by the supervisor: the try goes on.
            t.deadline = trio.current_time() + state.per_try_timeout
        race.tries.append(t)
        race.inflight += 1
        assert race.nursery is not None
        race.nursery.start_soon(self._hedge_try, stream, cluster, fwd, race, t)

    async def _hedge_try(
        self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward, race: _Race, t: _Try
    ) -> None:
        """One try of a race. Until it wins it never touches the downstream:
        a failure is handed to the supervisor, which answers the client with
        the last one if no try is left."""
        state = race.state
        host = self._choose(cluster, race.tried, fwd.lb_hash)
        if host is None:
            race.fail(t, _Reply(503, b"no healthy upstream", "UH", "no_healthy_upstream"))
            return
        if not cluster.request_allowed():
            race.fail(t, _OVERFLOW_REPLY)
            return
        race.tried.append(host)
        t.host = host
        stream.info.upstream_host = host.address
        span = stream.span
        if span is not None:
            span = span.start_client(cluster.name, host.address)
        status = 0
        cluster.on_request_start(host)
        per_try = math.inf
        if state is not None and state.per_try_timeout and not race.hedge.hedge_on_per_try_timeout:
            per_try = state.per_try_timeout
        up: UpstreamStream | None = None
        reusable = False
        try:
            with t.scope, trio.move_on_after(per_try) as try_scope:
                try:
                    up = await host.pool.acquire()
                except PoolOverflow:
                    race.fail(t, _OVERFLOW_REPLY)
                    return
                except ConnectFailure as exc:
                    stream.info.upstream_transport_failure_reason = f"{exc.reason}: {exc}"
                    cluster.on_local_failure(host)
                    race.fail(t, _CONNECT_FAILURE_REPLY, "connect-failure")
                    return
                started = trio.current_time()
                # No checkpoint between setting the header and encoding the
                # head, so concurrent tries each send their own number.
                stream.head.set(b"x-envoy-attempt-count", str(t.attempt).encode())
                if span is not None:
                    span.inject(stream.head)
                await up.send_request_head(
                    stream.head, body=stream.has_body, content_length=stream.content_length
                )
                if stream.has_body:
                    await fwd.body.send(up)
                resp = await up.receive_response_head()
                status = resp.status
                t.answered = True
                race.responded = True
                if race.decided:
                    return  # lost by a hair: reset like the other losers
                if state is not None and state.response_retriable(resp):
                    if state.retry_allowed():
                        cluster.on_response(
                            host, resp.status, (trio.current_time() - started) * 1000
                        )
                        race.retry(state.begin_retry(), t)
                        return
                    if race.others_pending(t):
                        # Not retried, but another try may still do better
                        # (Envoy: a "bad" response waits for the others).
                        cluster.on_response(
                            host, resp.status, (trio.current_time() - started) * 1000
                        )
                        race.fail(t, race.last_failure)
                        return
                race.claim(t)
                stream.info.upstream_host = host.address
                await self._relay_response(
                    stream, cluster, host, up, started, fwd, resp, checked=True
                )
                reusable = fwd.downstream_error is None
            if try_scope.cancelled_caught:
                cluster.rq_per_try_timeout.inc()
                cluster.on_local_failure(host)
                if t.won:
                    stream.info.add_flag("UT")
                    stream.close_connection = True
                else:
                    race.fail(t, _PER_TRY_TIMEOUT_REPLY, "per-try-timeout")
        except UpstreamReset as exc:
            cluster.rq_rx_reset.inc()
            flag, reason = _reset_reason(str(exc))
            if t.won:
                await self._upstream_failed(
                    stream, flag, 503, _RESET_PREFIX + reason.encode(), reason.replace(" ", "_")
                )
            else:
                cluster.on_local_failure(host)
                kind = "refused-stream" if str(exc) == "refused_stream" else "reset"
                details = f"upstream_reset_before_response_started{{{reason.replace(' ', '_')}}}"
                race.fail(t, _Reply(503, _RESET_PREFIX + reason.encode(), flag, details), kind)
        except UpstreamProtocolError as exc:
            cluster.cx_protocol_error.inc()
            stream.info.upstream_transport_failure_reason = str(exc)
            if t.won:
                await self._upstream_failed(
                    stream, "UPE", 502, b"upstream protocol error", "upstream_protocol_error"
                )
            else:
                details = "upstream_reset_before_response_started{upstream_protocol_error}"
                race.fail(t, _Reply(502, b"upstream protocol error", "UPE", details))
        except DownstreamReset as exc:
            fwd.downstream_error = exc
            stream.close_connection = True
            race.cancel_all()
        finally:
            cluster.on_request_end(host)
            if up is not None:
                host.pool.release(up, reusable=reusable)
            if span is not None:
                _finish_span(span, status, up)
            race.finish(t)

    async def _upstream_failed(
        self, stream: ActiveStream, flag: str, status: int, body: bytes, details: str
    ) -> None:
        stream.info.add_flag(flag)
        if stream.response_started:
            stream.close_connection = True
            stream.info.response_code_details = details
            return
        await stream.local_reply(
            status, body, details=f"upstream_reset_before_response_started{{{details}}}"
        )

    async def _exchange(
        self,
        stream: ActiveStream,
        cluster: ClusterRuntime,
        host: Host,
        up: UpstreamStream,
        fwd: _Forward,
    ) -> bool:
        """Send the request and relay the response; True if `up` may be reused."""
        started = trio.current_time()
        await up.send_request_head(
            stream.head, body=stream.has_body, content_length=stream.content_length
        )
        if (
            not stream.has_body
            and stream.upgrade is None
            and stream.cancel_on_reset(fwd.route_scope)
        ):
            # HTTP/2: a client's reset cancels the route scope (`_forward`
            # turns that into DownstreamReset), so nothing needs to watch
            # and no 50 ms scope is needed before a watcher starts.
            fwd.watch_done.set()
            resp = await up.receive_response_head()
            await self._relay_response(stream, cluster, host, up, started, fwd, resp)
            return True
        if not stream.has_body:
            # Fast path: most upstreams answer quickly, so first wait for the
            # head without a watcher task (a task per request costs more than
            # the rest of the router). A slow head gets the watcher below; a
            # client that leaves during the body is seen when a write fails.
            head: ResponseHead | None = None
            with trio.move_on_after(_WATCH_AFTER):
                head = await up.receive_response_head()
            if head is not None:
                fwd.watch_done.set()
                await self._relay_response(stream, cluster, host, up, started, fwd, head)
                return True
        relay_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if stream.has_body:
                nursery.start_soon(self._pump_body, stream, up, fwd, nursery.cancel_scope)
            else:
                nursery.start_soon(self._watch_downstream, stream, fwd, nursery.cancel_scope)
            try:
                await self._relay_response(stream, cluster, host, up, started, fwd)
            except (UpstreamReset, UpstreamProtocolError, DownstreamReset, _RetryResponse) as exc:
                relay_error = exc
            if not stream.body_done:
                # The upstream answered before the request body ended (e.g. 413):
                # stop pumping; neither connection can be reused cleanly.
                stream.close_connection = True
            # Stops the pump (if the upstream answered early) and the watcher.
            nursery.cancel_scope.cancel()
        if relay_error is not None:
            raise relay_error
        return fwd.downstream_error is None

    async def _watch_downstream(
        self, stream: ActiveStream, fwd: _Forward, relay_scope: trio.CancelScope
    ) -> None:
        """Abandon the exchange if the client leaves before the response ends."""
        left = False
        try:
            with fwd.watch_scope:
                left = await stream.watch_disconnect()
        finally:
            fwd.watch_done.set()
        if left:
            stream.close_connection = True
            if stream.response_body_sent:
                # A client that closes right after reading the whole response
                # (curl does) is not a reset; the relay finishes normally.
                return
            fwd.downstream_error = DownstreamReset("client closed before the response ended")
            stream.close_connection = True
            relay_scope.cancel()

    async def _pump_body(
        self,
        stream: ActiveStream,
        up: UpstreamStream,
        fwd: _Forward,
        relay_scope: trio.CancelScope,
    ) -> None:
        """Copy the request body downstream → upstream, one chunk in flight."""
        try:
            await fwd.body.send(up)
            fwd.start_route_timer()
        except (DownstreamReset, DownstreamProtocolError) as exc:
            # The client is gone or broke framing: abandon the exchange.
            fwd.downstream_error = exc
            stream.close_connection = True
            fwd.watch_done.set()
            relay_scope.cancel()
            return
        except UpstreamReset:
            # The upstream stopped reading; the relay sees its response or reset.
            fwd.request_done = True
            stream.close_connection = True
            fwd.watch_done.set()
            return
        await self._watch_downstream(stream, fwd, relay_scope)

    async def _relay_response(
        self,
        stream: ActiveStream,
        cluster: ClusterRuntime,
        host: Host,
        up: UpstreamStream,
        started: float,
        fwd: _Forward,
        resp: ResponseHead | None = None,
        *,
        checked: bool = False,
    ) -> None:
        if resp is None:
            resp = await up.receive_response_head()
        fwd.try_status = resp.status
        if not checked and fwd.retry is not None and fwd.retry.should_retry_response(resp):
            cluster.on_response(host, resp.status, (trio.current_time() - started) * 1000)
            raise _RetryResponse
        now = trio.current_time()
        stream.info.first_upstream_rx_monotonic = now
        elapsed_ms = (now - started) * 1000
        cluster.on_response(host, resp.status, elapsed_ms)
        stream.info.response_code_details = "via_upstream"
        resp.headers.append((b"x-envoy-upstream-service-time", str(int(elapsed_ms)).encode()))
        for cookie in fwd.set_cookies:
            resp.headers.append((b"set-cookie", cookie))
        if resp.status == 101:
            await self._tunnel(stream, up, resp, fwd)
            return
        no_body = stream.head.method == b"HEAD" or resp.status in (204, 304)
        if no_body or getattr(up, "ended_with_head", False):
            # No body, or an HTTP/2 response that ended with its headers (a
            # gRPC trailers-only response): keep it one header block.
            await up.receive_data()  # the end of message
            await stream.send_response_head(resp, end_stream=True)
            return
        if isinstance(up, UpstreamHttp1):
            # A small response usually arrives whole with its head: then one
            # downstream write instead of three.
            chunks, ended = up.take_buffered()
            if ended:
                await stream.send_whole_response(resp, b"".join(chunks), up.trailers or None)
                return
            await stream.send_response_head(resp)
            for buffered in chunks:
                await stream.send_data(buffered)
        else:
            await stream.send_response_head(resp)
        while (chunk := await up.receive_data()) is not None:
            await stream.send_data(chunk)
        await stream.send_end(up.trailers or None)

    async def _tunnel(
        self, stream: ActiveStream, up: UpstreamStream, resp: ResponseHead, fwd: _Forward
    ) -> None:
        """The upstream agreed to switch protocols: join the two sockets."""
        if stream.upgrade is None or not isinstance(up, UpstreamHttp1):
            raise UpstreamProtocolError("101 Switching Protocols without an upgrade request")
        # The route timeout covered the handshake; the tunnel lives until
        # either side closes or the stream idle timeout fires.
        fwd.route_scope.deadline = math.inf
        await fwd.stop_watching()
        down_conn, down_buffered = await stream.accept_upgrade(resp)
        hcm_stats = stream.hcm_stats
        hcm_stats.cx_upgrades_total.inc()
        hcm_stats.cx_upgrades_active.inc()
        info = stream.info

        def downstream_bytes(n: int) -> None:
            info.bytes_received += n
            stream.touch()

        def upstream_bytes(n: int) -> None:
            info.bytes_sent += n
            stream.touch()

        try:
            await tunnel(
                down_conn,
                down_buffered,
                up.conn,
                up.codec.trailing_data,
                on_downstream_bytes=downstream_bytes,
                on_upstream_bytes=upstream_bytes,
            )
        finally:
            hcm_stats.cx_upgrades_active.dec()


def _finish_span(span: ActiveSpan, status: int, up: UpstreamStream | None) -> None:
    """End a try's client span (tracing)."""
    protocol = None if up is None else "HTTP/1.1" if isinstance(up, UpstreamHttp1) else "HTTP/2"
    span.finish_client(status, protocol)


def _hash_request(fwd: _Forward, stream: ActiveStream, action: RouteAction) -> None:
    """The route's hash policy, once per request (Envoy's generateHash);
    generated cookies are set on the upstream response."""
    info = stream.info
    cookies: list[bytes] = []
    fwd.lb_hash = request_hash(
        action.hash_policy,
        stream.head,
        info.downstream_remote_address,
        info.downstream_local_address,
        cookies,
    )
    if cookies:
        fwd.set_cookies = tuple(cookies)


def _rewrite(head: RequestHead, route: Route, action: RouteAction) -> None:
    """Envoy's prefix_rewrite and host_rewrite_literal, applied before forwarding.

    prefix_rewrite replaces the matched part of the path: the prefix for a
    prefix route, the whole path for a path route, the whole path without the
    query for a regex route; the query is kept. Whenever a path rewrite is
    configured the original path goes to `x-envoy-original-path` (Envoy sets
    it even if the new path happens to equal the old one).
    """
    if action.prefix_rewrite is not None:
        original = head.path
        m = route.match
        new_prefix = action.prefix_rewrite.encode()
        if m.path_kind == "regex":
            _, sep, query = original.partition(b"?")
            head.path = new_prefix + sep + query
        else:
            # A prefix or path route matched m.value (case-insensitively, maybe):
            # replace that many bytes.
            head.path = new_prefix + original[len(m.value.encode()) :]
        head.set(b"x-envoy-original-path", original)
    if action.host_rewrite is not None:
        head.authority = action.host_rewrite.encode()


def _redirect_location(head: RequestHead, route: Route, action: RedirectAction) -> bytes:
    """The `location` of a redirect, computed as Envoy's `Http::Utility::newUri`.

    - scheme: the redirect's, else the request's.
    - authority: the redirect host if set (the request's port is then dropped),
      else the request's Host; `:port` is appended when the redirect sets a port
      (replacing the request's, even 80/443). Without a new port, the request's
      port is dropped only when the scheme changes and the port is the default
      one of the request's original protocol (x-forwarded-proto, else the
      scheme): `http://h:80` -> `https://h`, `https://h:443` -> `http://h`.
    - path: `path` replaces the path and keeps the request's query unless it
      has its own query (then `strip_query` does not apply to it);
      `prefix_rewrite` replaces the matched part as when forwarding.
    """
    scheme = action.scheme or head.scheme.decode("latin-1")
    port = f":{action.port}" if action.port is not None else ""
    if action.host is not None:
        host = action.host
    else:
        host = head.authority.decode("latin-1")
        if _has_port(host):
            colon = host.rfind(":")
            request_port = host[colon:]
            xfp = head.get(b"x-forwarded-proto")
            original = (xfp if xfp is not None else head.scheme).decode("latin-1").lower()
            remove = bool(port)
            if scheme.lower() != original:
                remove |= original == "https" and request_port == ":443"
                remove |= original == "http" and request_port == ":80"
            if remove:
                host = host[:colon]
    path = head.path.decode("latin-1")
    path_has_query = False
    if action.path is not None:
        path_has_query = "?" in action.path
        if path_has_query:
            path = action.path
        else:
            _, sep, query = path.partition("?")
            path = action.path + sep + query
    elif action.prefix_rewrite is not None:
        m = route.match
        if m.path_kind == "regex":
            _, sep, query = path.partition("?")
            path = action.prefix_rewrite + sep + query
        else:
            # `path` is latin-1 text: one character per byte of the request.
            path = action.prefix_rewrite + path[len(m.value.encode()) :]
    if not path.startswith("/"):
        path = "/" + path
    if action.strip_query and not path_has_query:
        path = path.partition("?")[0]
    return f"{scheme}://{host}{port}{path}".encode("latin-1")


def _has_port(authority: str) -> bool:
    colon = authority.rfind(":")
    return colon > authority.rfind("]") and authority[colon + 1 :].isdigit()
