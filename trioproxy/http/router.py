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

Every counter and pooled connection taken is given back in a `finally`, so
a request cancelled at any checkpoint (client gone, timeout) leaks nothing.
"""

from __future__ import annotations

import ipaddress
import math
import random
from typing import TYPE_CHECKING, Final

import trio

from trioproxy.codec.grpc import GRPC_STATUS, is_grpc, parse_timeout
from trioproxy.codec.stream import RequestHead, ResponseHead
from trioproxy.config import (
    DirectResponseAction,
    RedirectAction,
    RetryPolicy,
    Route,
    RouteAction,
)
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
    {b"x-envoy-retry-on", b"x-envoy-max-retries", b"x-envoy-upstream-rq-timeout-ms"}
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
        "request_done",
        "retry",
        "route_scope",
        "timeout",
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
        if policy is None and retry_on:
            policy = RetryPolicy(retry_on=retry_on)
        body = ReplayBody(stream, policy.max_replay_bytes if policy is not None else 0)
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
            with trio.CancelScope() as route_scope:
                fwd = _Forward(route_scope, timeout, body, state)
                if not stream.has_body:
                    fwd.start_route_timer()
                await self._tries(stream, cluster, fwd)
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

    def _choose(self, cluster: ClusterRuntime, tried: list[Host]) -> Host | None:
        """A host, preferring one not tried yet (Envoy's previous_hosts predicate)."""
        host = cluster.choose_host()
        for _ in range(3):
            if host is None or host not in tried:
                break
            host = cluster.choose_host()
        return host

    async def _forward_once(
        self, stream: ActiveStream, cluster: ClusterRuntime, fwd: _Forward, tried: list[Host]
    ) -> bool:
        """One try; True if it failed in a way the retry policy retries."""
        info = stream.info
        retry = fwd.retry
        host = self._choose(cluster, tried)
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
        cluster.on_request_start(host)
        up: UpstreamStream | None = None
        reusable = False
        per_try = retry.per_try_timeout if retry is not None and retry.per_try_timeout else math.inf
        try:
            with trio.move_on_after(per_try) as try_scope:
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
        return False

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
    ) -> None:
        if resp is None:
            resp = await up.receive_response_head()
        if fwd.retry is not None and fwd.retry.should_retry_response(resp):
            cluster.on_response(host, resp.status, (trio.current_time() - started) * 1000)
            raise _RetryResponse
        now = trio.current_time()
        stream.info.first_upstream_rx_monotonic = now
        elapsed_ms = (now - started) * 1000
        cluster.on_response(host, resp.status, elapsed_ms)
        stream.info.response_code_details = "via_upstream"
        resp.headers.append((b"x-envoy-upstream-service-time", str(int(elapsed_ms)).encode()))
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
