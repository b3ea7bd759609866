"""The admin server: Envoy's admin endpoints over a small HTTP/1.1 server.

Bound to 127.0.0.1 by default. With a token (`admin(address, token=...)`)
every request must carry `Authorization: Bearer <token>` or gets 401; an
admin reachable from other hosts without a token refuses to start (the
compiler refuses it first). Read-only endpoints answer GET; endpoints that
change the server answer only POST (a GET gets 405 and says so).
Handlers are registered in `ENDPOINTS` with their help text; `/help` and `/`
list them. Nothing here runs on the data path.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import h11
import trio

from trioproxy.config import SocketAddress
from trioproxy.observe.stats import QUANTILES, SUPPORTED_QUANTILES, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from trioproxy.runtime.server import Server

__all__ = ["ENDPOINTS", "AdminResponse", "parse_query", "serve_admin"]

log = logging.getLogger("trioproxy.admin")


class AdminResponse:
    """An admin answer; with `stream`, the body is streamed (chunked) from
    that async iterator and the connection closes after it (`/events`)."""

    __slots__ = ("body", "content_type", "headers", "status", "stream")

    def __init__(
        self,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "text/plain",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        stream: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.stream = stream
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        self.content_type = content_type
        self.headers = headers  # extra response headers, e.g. `allow` on a 405


def _json(obj: Any, status: int = 200) -> AdminResponse:
    return AdminResponse(
        json.dumps(obj, indent=2) + "\n", status=status, content_type="application/json"
    )


Handler = Callable[["Server", dict[str, str]], Awaitable[AdminResponse]]


class Endpoint:
    __slots__ = ("handler", "help", "mutating")

    def __init__(self, handler: Handler, help: str, mutating: bool) -> None:
        self.handler = handler
        self.help = help
        self.mutating = mutating


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(path: str, help: str, *, mutating: bool = False) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ENDPOINTS[path] = Endpoint(fn, help, mutating)
        return fn

    return deco


# --------------------------------------------------------------------------- endpoints


@endpoint("/help", "print out list of admin commands")
async def _help(server: Server, q: dict[str, str]) -> AdminResponse:
    lines = ["admin commands are:"]
    for path, ep in sorted(ENDPOINTS.items()):
        method = " (POST)" if ep.mutating else ""
        lines.append(f"  {path}{method}: {ep.help}")
    return AdminResponse("\n".join(lines) + "\n")


@endpoint("/", "live dashboard (listeners, clusters, rates, latency, errors by flag)")
async def _home(server: Server, q: dict[str, str]) -> AdminResponse:
    from trioproxy.observe.dashboard import PAGE

    return AdminResponse(PAGE, content_type="text/html; charset=utf-8")


@endpoint("/events", "server-sent events: a JSON snapshot every second (?interval=S&count=N)")
async def _events(server: Server, q: dict[str, str]) -> AdminResponse:
    from trioproxy.observe.dashboard import event_stream

    try:
        interval = float(q.get("interval", "1"))
        count = int(q["count"]) if "count" in q else None
    except ValueError:
        return AdminResponse("interval must be a number, count an integer\n", status=400)
    if not 0.05 <= interval <= 3600 or (count is not None and count < 1):
        return AdminResponse("interval must be 0.05..3600 s and count >= 1\n", status=400)
    return AdminResponse(
        b"",
        content_type="text/event-stream",
        stream=event_stream(server, interval, count),
    )


@endpoint("/ready", "print server state, return 200 if LIVE, otherwise return 503")
async def _ready(server: Server, q: dict[str, str]) -> AdminResponse:
    return AdminResponse(server.state + "\n", status=200 if server.state == "LIVE" else 503)


@endpoint("/server_info", "print server version/status information")
async def _server_info(server: Server, q: dict[str, str]) -> AdminResponse:
    uptime = int(time.time() - server.start_time)
    return _json(
        {
            "version": f"trioproxy/{server.version}",
            "state": server.state,
            "hostname": server.hostname,
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime}s",
            "command_line_options": server.options,
            "node": {"id": server.hostname},
            "pid": os.getpid(),
        }
    )


def _stat_filter(q: dict[str, str]) -> re.Pattern[str] | None:
    f = q.get("filter")
    return re.compile(f) if f else None


@endpoint("/stats", "print server stats (?filter=REGEX, ?usedonly, ?format=json|prometheus)")
async def _stats(server: Server, q: dict[str, str]) -> AdminResponse:
    try:
        flt = _stat_filter(q)
    except re.error as exc:
        return AdminResponse(f"invalid filter regex: {exc}\n", status=400)
    used = "usedonly" in q
    store = server.stats
    fmt = q.get("format", "text")
    hists = [
        h
        for name, h in sorted(store.histograms.items())
        if (not used or h.used) and (flt is None or flt.search(name))
    ]
    if fmt == "json":
        stats: list[dict[str, Any]] = [
            {"name": n, "value": v} for n, v in store.iter_values(filter=flt, used_only=used)
        ]
        stats.append(
            {
                "histograms": {
                    "supported_quantiles": list(SUPPORTED_QUANTILES),
                    "computed_quantiles": [
                        {
                            "name": h.name,
                            "values": [
                                {"interval": h.interval_quantile(x), "cumulative": h.quantile(x)}
                                for x in QUANTILES
                            ],
                        }
                        for h in hists
                    ],
                }
            }
        )
        return _json({"stats": stats})
    if fmt == "prometheus":
        return await _prometheus(server, q)
    if fmt != "text":
        return AdminResponse(f"unknown format {fmt!r}; use json, prometheus or text\n", status=400)
    lines = [f"{n}: {v}" for n, v in store.iter_values(filter=flt, used_only=used)]
    lines += [f"{h.name}: {h.summary()}" for h in hists]
    return AdminResponse("\n".join(lines) + "\n" if lines else "")


_PROM_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_LE_INF = 'le="+Inf"'


def _prom_name(name: str) -> str:
    return "envoy_" + _PROM_INVALID.sub("_", name)


def _prom_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _prom_labels(tags: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = [f'{_PROM_INVALID.sub("_", k)}="{_prom_value(v)}"' for k, v in tags]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@endpoint("/stats/prometheus", "print server stats in prometheus format (?filter=REGEX, ?usedonly)")
async def _prometheus(server: Server, q: dict[str, str]) -> AdminResponse:
    """Text exposition format 0.0.4 with Envoy's tag extraction: one
    `# TYPE` per metric family, samples labelled by their tags, histograms
    as cumulative `_bucket{le=...}`, `_sum` and `_count`."""
    # ?filter matches the Envoy (dotted) name, as Envoy's handler does.
    try:
        flt = _stat_filter(q)
    except re.error as exc:
        return AdminResponse(f"invalid filter regex: {exc}\n", status=400)
    used = "usedonly" in q
    store = server.stats
    tags = server.stat_tags

    def shown(stat: Counter | Gauge | Histogram) -> bool:
        return (not used or stat.used) and (flt is None or flt.search(stat.name) is not None)

    # family name -> (type, [(labels, stat)])
    families: dict[str, tuple[str, list[tuple[tuple[tuple[str, str], ...], Any]]]] = {}
    kinds: tuple[tuple[str, Any], ...] = (
        ("counter", store.counters.values()),
        ("gauge", store.gauges.values()),
        ("histogram", store.histograms.values()),
    )
    for kind, stats in kinds:
        for stat in filter(shown, stats):
            t = tags.get(stat.name)
            family = _prom_name(t.name)
            labels = t.tags
            entry = families.get(family)
            if entry is not None and entry[0] != kind:
                # Two kinds under one family name: keep this one untagged.
                family, labels = _prom_name(stat.name), ()
                entry = families.get(family)
            if entry is None:
                entry = families[family] = (kind, [])
            entry[1].append((labels, stat))

    out: list[str] = []
    for family in sorted(families):
        kind, members = families[family]
        out.append(f"# TYPE {family} {kind}")
        for labels, stat in sorted(members, key=lambda m: m[0]):
            if kind != "histogram":
                out.append(f"{family}{_prom_labels(labels)} {stat.value}")
                continue
            h: Histogram = stat
            cum = 0
            for bound, count in zip(h.bucket_bounds(), h.buckets, strict=False):
                cum += count
                le = f'le="{bound:g}"'
                out.append(f"{family}_bucket{_prom_labels(labels, le)} {cum}")
            out.append(f"{family}_bucket{_prom_labels(labels, _LE_INF)} {h.count}")
            out.append(f"{family}_sum{_prom_labels(labels)} {h.sum:g}")
            out.append(f"{family}_count{_prom_labels(labels)} {h.count}")
    body = "\n".join(out) + "\n" if out else ""
    return AdminResponse(body, content_type="text/plain; version=0.0.4")


@endpoint("/clusters", "upstream cluster status (?format=json)")
async def _clusters(server: Server, q: dict[str, str]) -> AdminResponse:
    if q.get("format") == "json":
        statuses = []
        for name, c in server.clusters.clusters.items():
            hosts = []
            for h in c.hosts:
                host, _, port = h.address.rpartition(":")
                host = host.removeprefix("[").removesuffix("]")  # "[::1]:80" -> "::1"
                hosts.append(
                    {
                        "address": {"socket_address": {"address": host, "port_value": int(port)}},
                        "stats": [
                            {"name": "cx_active", "type": "GAUGE", "value": h.pool.active},
                            {"name": "rq_active", "type": "GAUGE", "value": h.active_requests},
                            {"name": "rq_total", "type": "COUNTER", "value": h.rq_total},
                            {"name": "rq_success", "type": "COUNTER", "value": h.rq_success},
                            {"name": "rq_error", "type": "COUNTER", "value": h.rq_error},
                        ],
                        "health_status": {
                            "eds_health_status": "HEALTHY" if h.available else "UNHEALTHY"
                        },
                        "hostname": h.hostname,
                        "weight": h.weight,
                        "priority": h.priority,
                    }
                )
            statuses.append(
                {
                    "name": name,
                    "observability_name": name,
                    "added_via_api": False,
                    "host_statuses": hosts,
                }
            )
        return _json({"cluster_statuses": statuses})
    lines: list[str] = []
    for name, c in server.clusters.clusters.items():
        # Cluster-level lines first, as Envoy prints them: a cluster with no
        # hosts (yet) still appears.
        lines += [f"{name}::observability_name::{name}", f"{name}::added_via_api::false"]
        for h in c.hosts:
            p = f"{name}::{h.address}::"
            lines += [
                f"{p}cx_active::{h.pool.active}",
                f"{p}rq_active::{h.active_requests}",
                f"{p}rq_error::{h.rq_error}",
                f"{p}rq_success::{h.rq_success}",
                f"{p}rq_total::{h.rq_total}",
                f"{p}health_flags::{_health_flags(h)}",
                f"{p}weight::{h.weight}",
                f"{p}priority::{h.priority}",
            ]
            if h.hostname:  # DNS-discovered hosts (Envoy prints it too)
                lines.append(f"{p}hostname::{h.hostname}")
    return AdminResponse("\n".join(lines) + "\n" if lines else "")


@endpoint("/config_dump", "dump current trioproxy configuration")
async def _config_dump(server: Server, q: dict[str, str]) -> AdminResponse:
    from trioproxy.config.dump import to_jsonable

    return _json(to_jsonable(server.mesh))


@endpoint("/listeners", "print listener info (?format=json)")
async def _listeners(server: Server, q: dict[str, str]) -> AdminResponse:
    if q.get("format") == "json":
        return _json(
            {
                "listener_statuses": [
                    {
                        "name": name,
                        "local_address": {
                            "socket_address": {
                                "address": lr.bound.host if lr.bound else "",
                                "port_value": lr.bound.port if lr.bound else 0,
                            }
                        },
                    }
                    for name, lr in server.listeners.items()
                ]
            }
        )
    return AdminResponse("".join(f"{name}::{lr.bound}\n" for name, lr in server.listeners.items()))


@endpoint("/reset_counters", "reset all counters to zero", mutating=True)
async def _reset_counters(server: Server, q: dict[str, str]) -> AdminResponse:
    server.stats.reset_counters()
    return AdminResponse("OK\n")


# /healthcheck/fail and /healthcheck/ok: the server-wide flag the health_check
# HTTP filter answers from (503 + x-envoy-immediate-health-check-fail while
# failed). As in Envoy, a failed server also reports state DRAINING (so
# /ready answers 503) and `server.live` 0; normal traffic is still served.


@endpoint("/healthcheck/fail", "cause the server to fail health checks", mutating=True)
async def _healthcheck_fail(server: Server, q: dict[str, str]) -> AdminResponse:
    server.health.failed = True
    if server.state == "LIVE":
        server.state = "DRAINING"
    server.stats.gauge("server.live").set(0)
    return AdminResponse("OK\n")


@endpoint("/healthcheck/ok", "cause the server to pass health checks", mutating=True)
async def _healthcheck_ok(server: Server, q: dict[str, str]) -> AdminResponse:
    if server.health.failed and server.state == "DRAINING" and not server.draining:
        server.state = "LIVE"
        server.stats.gauge("server.live").set(1)
    server.health.failed = False
    return AdminResponse("OK\n")


@endpoint(
    "/drain_listeners",
    "drain listeners: stop accepting, close idle connections, connection: close / GOAWAY "
    "on busy ones (?graceful, ?inboundonly accepted; the server keeps running)",
    mutating=True,
)
async def _drain_listeners(server: Server, q: dict[str, str]) -> AdminResponse:
    server.drain_listeners()
    return AdminResponse("OK\n")


@endpoint("/quitquitquit", "exit the server", mutating=True)
async def _quit(server: Server, q: dict[str, str]) -> AdminResponse:
    server.shutdown()
    return AdminResponse("OK\n")


@endpoint(
    "/explain",
    "explain how a request would be routed (?host=H&path=P&method=M&header=k:v&listener=L)",
)
async def _explain(server: Server, q: dict[str, str]) -> AdminResponse:
    from trioproxy.http.explain import explain

    if "host" not in q:
        return AdminResponse(
            "usage: GET /explain?host=H&path=P[&method=M][&header=k:v]\n", status=400
        )
    headers = []
    if "header" in q:
        name, sep, value = q["header"].partition(":")
        if not sep or not name.strip():
            return AdminResponse("header must be name:value\n", status=400)
        headers.append((name.strip(), value.strip()))
    return _json(
        explain(
            server.mesh,
            host=q["host"],
            path=q.get("path", "/"),
            method=q.get("method", "GET"),
            headers=headers,
            listener=q.get("listener"),
        )
    )


@endpoint("/reopen_logs", "reopen access logs (after moving the files away)", mutating=True)
async def _reopen_logs(server: Server, q: dict[str, str]) -> AdminResponse:
    server.reopen_access_logs()
    return AdminResponse("OK\n")


@endpoint("/logging", "change the log level (?level=debug|info|warning|error)", mutating=True)
async def _logging(server: Server, q: dict[str, str]) -> AdminResponse:
    level = q.get("level")
    root = logging.getLogger("trioproxy")
    if level:
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            return AdminResponse(f"unknown level {level!r}\n", status=400)
        root.setLevel(value)
    return AdminResponse(
        f"active loggers:\n  trioproxy: {logging.getLevelName(root.level).lower()}\n"
    )


@endpoint("/runtime", "print runtime values (layers and entries, JSON)")
async def _runtime(server: Server, q: dict[str, str]) -> AdminResponse:
    return _json(server.runtime.dump())


@endpoint(
    "/runtime_modify",
    "set runtime values in the admin layer (?key=value; empty removes)",
    mutating=True,
)
async def _runtime_modify(server: Server, q: dict[str, str]) -> AdminResponse:
    if not q:
        return AdminResponse("usage: POST /runtime_modify?key1=value1&key2=value2\n", status=400)
    server.runtime.modify(q)
    return AdminResponse("OK\n")


# --------------------------------------------------------------------------- server


async def serve_admin(
    server: Server,
    address: SocketAddress,
    *,
    task_status: trio.TaskStatus[SocketAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    # One admin per server, so no SO_REUSEPORT: a second trioproxy started
    # with the same admin address must fail to bind, not share the port and
    # answer half of the requests with the other process's stats.
    try:
        listener, (host, port) = await server.network.listen_tcp(
            address.host, address.port, reuse_port=False
        )
    except OSError as exc:
        # Same errno, a message that says what failed to bind where.
        raise OSError(
            exc.errno, f"admin cannot listen on {address}: {exc.strerror or exc}"
        ) from exc
    bound = SocketAddress(host=host, port=port)
    if server.admin_token is None and not _is_loopback(host):
        # The compiler refuses this; an `--admin` override must not bypass it.
        await listener.aclose()
        raise OSError(
            errno.EACCES,
            f"admin on {bound} would be reachable from other hosts without a token; "
            "set admin(..., token=...) in the mesh or bind it to 127.0.0.1",
        )
    log.info("admin listening on %s", bound)
    task_status.started(bound)
    async with trio.open_nursery() as nursery:
        try:
            # A takeover stops accepting and frees the port for the new
            # process; the admin connections open now (the /takeover
            # request's among them) carry on.
            with server.admin_accept_scope:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(_serve_conn, server, stream)
        finally:
            await trio.aclose_forcefully(listener)


# An idle admin connection (or a client that stops sending a request
# mid-way) is closed after this long. Envoy's admin uses the HTTP/1 idle
# timeout; one minute is plenty for curl, scrapers and browsers.
_ADMIN_IDLE_TIMEOUT = 60.0


async def _receive(stream: trio.abc.Stream) -> bytes | None:
    """The next bytes from the client; None if it stayed idle too long."""
    with trio.move_on_after(_ADMIN_IDLE_TIMEOUT):
        # bytes() is free for socket streams; memory streams give bytearrays.
        return bytes(await stream.receive_some(65536))
    return None


async def _serve_conn(server: Server, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await _receive(stream)
                    if data is None:
                        return
                    conn.receive_data(data)
                    continue
                if type(ev) is not h11.Request:
                    if type(ev) in (h11.Data, h11.EndOfMessage):
                        continue
                    return
                resp = await _dispatch(server, ev)
                if resp.stream is not None:
                    await _stream_response(conn, stream, resp, resp.stream)
                    return
                headers = [
                    (b"content-type", resp.content_type.encode()),
                    (b"content-length", str(len(resp.body)).encode()),
                    (b"cache-control", b"no-cache, max-age=0"),
                    (b"x-content-type-options", b"nosniff"),
                    *resp.headers,
                ]
                head = h11.Response(
                    status_code=resp.status, headers=headers, reason=_reason(resp.status)
                )
                out = conn.send(head) or b""
                if ev.method != b"HEAD":
                    out += conn.send(h11.Data(data=resp.body)) or b""
                # Drain a request body we do not use so the connection can be reused.
                while conn.their_state is h11.SEND_BODY:
                    nxt = conn.next_event()
                    if nxt is h11.NEED_DATA:
                        data = await _receive(stream)
                        if data is None:
                            return
                        conn.receive_data(data)
                    elif type(nxt) is h11.ConnectionClosed:
                        break
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return


async def _stream_response(
    conn: h11.Connection, stream: trio.abc.Stream, resp: AdminResponse, body: AsyncIterator[bytes]
) -> None:
    """Send `resp`'s head, then each chunk as it comes (chunked encoding for
    HTTP/1.1, close-delimited for 1.0); the connection closes afterwards."""
    head = h11.Response(
        status_code=resp.status,
        headers=[
            (b"content-type", resp.content_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
            (b"connection", b"close"),
            *resp.headers,
        ],
        reason=_reason(resp.status),
    )
    await stream.send_all(conn.send(head) or b"")
    try:
        async for chunk in body:
            await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def parse_query(query: str) -> dict[str, str]:
    """`a=1&b&c=x%7Cy` -> {"a": "1", "b": "", "c": "x|y"}; the first value wins.

    Percent-decoded, but `+` stays `+` (as in Envoy's admin): filters are
    regexes, where `+` is far more common than a space (`%20`).
    """
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        params.setdefault(unquote(key), unquote(value))
    return params


async def _dispatch(server: Server, req: h11.Request) -> AdminResponse:
    resp = await _answer(server, req)
    log.debug(
        "admin %s %s -> %d",
        bytes(req.method).decode("latin-1"),
        bytes(req.target).decode("latin-1"),
        resp.status,
    )
    return resp


async def _answer(server: Server, req: h11.Request) -> AdminResponse:
    target = bytes(req.target).decode("latin-1")
    parts = urlsplit(target)
    query = parse_query(parts.query)
    token = server.admin_token
    if token is not None and not _authorized(req, token):
        server.stats.counter("admin.downstream_rq_unauthorized").inc()
        return AdminResponse(
            "unauthorized: send Authorization: Bearer <admin token>\n",
            status=401,
            headers=((b"www-authenticate", b'Bearer realm="trioproxy admin"'),),
        )
    ep = ENDPOINTS.get(parts.path)
    if ep is None:
        return AdminResponse(f"no admin endpoint {parts.path!r}; see /help\n", status=404)
    method = bytes(req.method)
    # 405 rather than Envoy's 400: the method is what is wrong, and RFC 9110
    # requires the `allow` header that says which one to use.
    if ep.mutating and method != b"POST":
        return AdminResponse(
            f"{parts.path} changes the server; use POST (e.g. curl -X POST ...{parts.path})\n",
            status=405,
            headers=((b"allow", b"POST"),),
        )
    if not ep.mutating and method not in (b"GET", b"HEAD"):
        return AdminResponse(
            f"{parts.path} answers GET only\n", status=405, headers=((b"allow", b"GET, HEAD"),)
        )
    try:
        # A supervisor (`--workers N`) merges fresh worker stats first.
        refresh = getattr(server, "refresh_stats", None)
        if refresh is not None and parts.path.startswith(("/stats", "/server_info")):
            await refresh()
        if parts.path == "/stats" and "per_worker" in query:
            return _per_worker(server, query)
        return await ep.handler(server, query)
    except Exception as exc:  # an admin bug must not kill the admin server
        log.exception("admin handler %s failed", parts.path)
        return AdminResponse(f"internal error: {exc}\n", status=500)


def _authorized(req: h11.Request, token: str) -> bool:
    expected = b"Bearer " + token.encode()
    for name, value in req.headers:
        if name == b"authorization":
            # Constant time: the comparison must not leak the token's prefix.
            return hmac.compare_digest(bytes(value), expected)
    return False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _health_flags(h: Any) -> str:
    """Envoy's /clusters health_flags: `healthy`, or the failed checks."""
    flags = []
    if not h.healthy:
        flags.append("/failed_active_hc")
    if getattr(h, "outlier_ejected", False):
        flags.append("/failed_outlier_check")
    if getattr(h, "eds_unhealthy", False):
        flags.append("/failed_eds_health")
    return "".join(flags) or "healthy"


def _per_worker(server: Server, q: dict[str, str]) -> AdminResponse:
    """`/stats?per_worker`: every worker's own counters and gauges, prefixed
    `worker_<i>.` (JSON with `format=json`); one process: `worker_0`."""
    per = getattr(server, "per_worker_stats", None)
    snaps: dict[str, Any] = (
        per()
        if per is not None
        else {
            "worker_0": {
                "counters": {n: c.value for n, c in server.stats.counters.items()},
                "gauges": {n: g.value for n, g in server.stats.gauges.items()},
            }
        }
    )
    try:
        flt = _stat_filter(q)
    except re.error as exc:
        return AdminResponse(f"invalid filter regex: {exc}\n", status=400)
    if q.get("format") == "json":
        return _json(snaps)
    lines = []
    for worker, snap in snaps.items():
        values = {**snap.get("counters", {}), **snap.get("gauges", {})}
        for name, value in sorted(values.items()):
            if flt is None or flt.search(name):
                lines.append(f"{worker}.{name}: {value}\n")
    return AdminResponse("".join(lines))


# /reload: hot reload of the mesh file (trioproxy's own; Envoy reloads only
# through xDS). 200 with what changed, 400 if the mesh is invalid (the old
# config keeps serving; the errors are in the log), 501 with no mesh file.


@endpoint("/reload", "compile the mesh file again and apply what changed", mutating=True)
async def _reload(server: Server, q: dict[str, str]) -> AdminResponse:
    if server.mesh_loader is None:
        return AdminResponse("this server has no mesh file to reload\n", status=501)
    diff = await server.reload_from_source()
    if diff is None:
        return AdminResponse(
            "reload failed; the old config keeps serving (errors in the log)\n", status=400
        )
    return AdminResponse("OK\n" + "".join(line + "\n" for line in diff.lines))


# /takeover: trioproxy's hot restart (`trioproxy serve --takeover`). The new
# process has bound every listener beside ours with SO_REUSEPORT; we close
# admin (its port is the new process's to bind) and drain as SIGTERM does.


@endpoint(
    "/takeover",
    "hand over to a new process that bound the same listeners (serve --takeover): "
    "free the admin address, drain gracefully, exit",
    mutating=True,
)
async def _takeover(server: Server, q: dict[str, str]) -> AdminResponse:
    server.hand_over()
    return _json({"pid": os.getpid(), "drain_time_s": server.drain_time})
