"""The DSL compiler: raw builders in, a validated `trioproxy.config.Mesh` out.

Rules of this file:

- Every check records a `MeshIssue` and carries on with a placeholder value,
  so one run reports every problem; `compile_mesh` raises a single
  `MeshError` at the end if anything was recorded.
- An issue points at the builder call that caused it (the call's
  `Location`), not at the enclosing `mesh(...)`.
- Allowed enum values (lb policies, codecs, ...) come from the `Literal`
  types of `trioproxy.config.graph`, so the graph stays the one source of truth.

Checks, in the order they run: mesh items; cluster definitions (including
clusters used as builder objects in routes and TCP proxies; upstream TLS)
and duplicate names; listeners (names, addresses, chains, vhosts, domains,
routes, matches, targets, cluster references; TLS files, filter-chain
matches and the tls_inspector, in `_compile_tls`); admin and demo services;
address clashes between everything that binds a port.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, TypeVar, cast, get_args

import attrs

from trioproxy.codec.access_log_format import FormatError, compile_format, compile_json_format
from trioproxy.config import (
    DEFAULT_ACCESS_LOG_FORMAT,
    AccessLog,
    AccessLogFilter,
    Admin,
    AndFilter,
    CircuitBreakers,
    Cluster,
    CookieHashPolicy,
    DemoService,
    DirectResponseAction,
    DurationFilter,
    Endpoint,
    FilterChain,
    GrpcHealthCheck,
    HashPolicy,
    HeaderHashPolicy,
    HeaderMatcher,
    HealthCheck,
    HedgePolicy,
    HttpConnectionManager,
    HttpFilterConfig,
    Listener,
    Location,
    Mesh,
    NotHealthCheckFilter,
    OrFilter,
    OutlierDetection,
    OverloadManager,
    QueryParameterHashPolicy,
    QueryParameterMatcher,
    RedirectAction,
    ResponseFlagFilter,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    RuntimeFilter,
    RuntimeFraction,
    RuntimeValue,
    SocketAddress,
    SourceIpHashPolicy,
    StatsdSink,
    StatusCodeFilter,
    TcpHealthCheck,
    VirtualHost,
    WeightedCluster,
)
from trioproxy.config.graph import (
    RETRY_ON,
    Action,
    CodecType,
    Http1Parser,
    LbPolicy,
    OverloadActionName,
    PathKind,
    StringMatchKind,
    UpstreamProtocol,
)
from trioproxy.filters.http.health_check import LocalHealthCheck

from ._builders import (
    AccessLogSpec,
    AdminBuilder,
    ClusterBuilder,
    DemoServiceBuilder,
    DirectResponseBuilder,
    EndpointBuilder,
    Given,
    HashPolicyBuilder,
    HeaderSpec,
    HealthCheckFilterSpec,
    HedgeBuilder,
    HttpBuilder,
    ListenerBuilder,
    MatchBuilder,
    MeshBuilder,
    OverloadBuilder,
    QuerySpec,
    RedirectBuilder,
    RetryBuilder,
    RouteSpec,
    RuntimeBuilder,
    StatsdBuilder,
    VhostBuilder,
    WeightedBuilder,
)
from ._compile_discovery import discovery_options
from ._compile_http2 import http2_limit_options
from ._compile_tls import (
    apply_chain_options,
    default_alpn_for_codec,
    finish_listener,
    tcp_proxy_chain,
    upstream_tls,
    xfcc_options,
)
from ._compile_tracing import tracing_config
from ._errors import MeshError, MeshIssue
from ._tls_builders import TcpProxyBuilder
from ._values import (
    BadValue,
    parse_bind_address,
    parse_duration,
    parse_endpoint_address,
    parse_size,
)

__all__ = ["compile_mesh"]

_S = TypeVar("_S", bound=str)

# Envoy: route timeout 15 s when unset.
DEFAULT_ROUTE_TIMEOUT: Final = 15.0
REDIRECT_CODES: Final = (301, 302, 303, 307, 308)
# Envoy caps max_request_headers_kb at 8192 (8 MiB).
MAX_REQUEST_HEADERS_KB: Final = 8192
# RFC 6265 cookie-name (a token) and a path without ";" or controls.
_COOKIE_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_PATH: Final = re.compile(r"[\x21-\x3a\x3c-\x7e]*")
_MATCH_KINDS: Final = "exact=, prefix=, suffix=, contains=, regex=, present="
_WILDCARD_ADDRESSES: Final = frozenset({"0.0.0.0", "::"})
# Envoy bounds priorities by the number of levels configured; 128 is plenty.
MAX_PRIORITY: Final = 127
# Envoy: ring sizes are capped at 8M entries.
MAX_RING_SIZE: Final = 8 * 1024 * 1024
# The options of `.lb(...)` and the policies that take each one.
_LB_OPTIONS: Final = {
    "choice_count": ("least_request",),
    "active_request_bias": ("least_request",),
    "minimum_ring_size": ("ring_hash",),
    "maximum_ring_size": ("ring_hash",),
    "table_size": ("maglev",),
}


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def compile_mesh(m: MeshBuilder, source: str = "") -> Mesh:
    """Validate `m` and build its config graph; `source` names the mesh file.

    Raises:
        MeshError: listing every problem found, each with its `file:line`.
    """
    if not isinstance(m, MeshBuilder):
        raise MeshError([MeshIssue(location=None, message=f"expected mesh(...), got {_kind(m)}")])
    return _Compiler().mesh(m, source)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _kind(value: object) -> str:
    return type(value).__name__


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(choices: tuple[str, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _at(location: Location | None) -> str:
    return f" at {location}" if location is not None else ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _walk_clusters(items: Iterable[object]) -> Iterator[ClusterBuilder]:
    """Cluster builders in order of first appearance: mesh items and route targets."""
    for item in items:
        if isinstance(item, ClusterBuilder):
            yield item
        elif isinstance(item, ListenerBuilder):
            for chain in item._chains:
                if isinstance(chain.value, TcpProxyBuilder):
                    yield from _target_clusters(chain.value._target)
                    continue
                if not isinstance(chain.value, HttpBuilder):
                    continue
                tracing = chain.value._tracing
                if tracing is not None and isinstance(tracing.collector, ClusterBuilder):
                    yield tracing.collector
                for vh in chain.value._vhosts:
                    if not isinstance(vh.value, VhostBuilder):
                        continue
                    for route in vh.value._routes:
                        target = route.target
                        if isinstance(target, ClusterBuilder):
                            yield target
                        elif isinstance(target, WeightedBuilder):
                            for entry in target._entries:
                                if isinstance(entry, tuple | list) and entry:
                                    first = entry[0]
                                    if isinstance(first, ClusterBuilder):
                                        yield first


def _target_clusters(target: object) -> Iterator[ClusterBuilder]:
    if isinstance(target, ClusterBuilder):
        yield target
    elif isinstance(target, WeightedBuilder):
        for entry in target._entries:
            if isinstance(entry, tuple | list) and entry and isinstance(entry[0], ClusterBuilder):
                yield entry[0]


class _Compiler:
    """One compilation: the issues found so far and the cluster names known."""

    def __init__(self) -> None:
        self.issues: list[MeshIssue] = []
        self.cluster_names: set[str] = set()

    def error(self, location: Location | None, message: str) -> None:
        self.issues.append(MeshIssue(location=location, message=message))

    # ------------------------------------------------------------------ scalars

    def name(self, value: object, what: str, location: Location | None) -> str:
        if isinstance(value, str) and value:
            return value
        self.error(location, f"{what} name must be a non-empty string, got {value!r}")
        return str(value)

    def text(self, value: object, what: str, location: Location | None) -> str:
        if isinstance(value, str):
            return value
        self.error(location, f"{what} must be a string, got {_kind(value)}")
        return ""

    def optional_text(self, value: object, what: str, location: Location | None) -> str | None:
        return None if value is None else self.text(value, what, location)

    def flag(self, value: object, what: str, location: Location | None) -> bool:
        if isinstance(value, bool):
            return value
        self.error(location, f"{what} must be True or False, got {value!r}")
        return False

    def count(
        self, value: object, what: str, location: Location | None, *, low: int, high: int
    ) -> int:
        if _is_int(value) and low <= cast(int, value) <= high:
            return cast(int, value)
        self.error(location, f"bad {what} {value!r} (expected an integer {low}..{high})")
        return low

    def duration(
        self, value: object, what: str, location: Location | None, *, positive: bool = False
    ) -> float:
        try:
            seconds = parse_duration(value, what)
        except BadValue as exc:
            self.error(location, str(exc))
            return 1.0
        if positive and seconds == 0:
            self.error(location, f"{what} must be greater than 0")
        return seconds

    def choice(
        self, value: object, choices: tuple[_S, ...], what: str, location: Location | None
    ) -> _S:
        for choice in choices:
            if value == choice:
                return choice
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        self.error(location, f"unknown {what} {value!r}{hint or f' (expected {_one_of(choices)})'}")
        return choices[0]

    def bind_address(self, value: object, what: str, location: Location | None) -> SocketAddress:
        try:
            return parse_bind_address(value, what)
        except BadValue as exc:
            self.error(location, str(exc))
            return SocketAddress(host="0.0.0.0", port=0)

    def regex(self, pattern: str, what: str, location: Location | None) -> None:
        try:
            re.compile(pattern)
        except re.error as exc:
            self.error(location, f"bad regex {pattern!r}{what}: {exc}")

    # ------------------------------------------------------------------ mesh

    def mesh(self, m: MeshBuilder, source: str) -> Mesh:
        listeners: list[ListenerBuilder] = []
        admins: list[AdminBuilder] = []
        demos: list[DemoServiceBuilder] = []
        sinks: list[StatsdBuilder] = []
        runtimes: list[RuntimeBuilder] = []
        overloads: list[OverloadBuilder] = []
        for i, item in enumerate(m._items, 1):
            if isinstance(item, ListenerBuilder):
                listeners.append(item)
            elif isinstance(item, AdminBuilder):
                admins.append(item)
            elif isinstance(item, DemoServiceBuilder):
                demos.append(item)
            elif isinstance(item, StatsdBuilder):
                sinks.append(item)
            elif isinstance(item, RuntimeBuilder):
                runtimes.append(item)
            elif isinstance(item, OverloadBuilder):
                overloads.append(item)
            elif not isinstance(item, ClusterBuilder):
                self.error(
                    m._location,
                    f"mesh() item {i} must be listener(...), cluster(...), admin(...), "
                    f"demo_service(...), statsd(...), runtime(...) or overload(...), "
                    f"got {_kind(item)}",
                )
        if not listeners:
            self.error(m._location, "mesh has no listeners")

        clusters = self.clusters(_walk_clusters(m._items))
        built_listeners = self.listeners(listeners)
        built_admin = self.admin(admins)
        built_demos = self.demo_services(demos)
        built_overload = self.overload(overloads)
        self.address_clashes(built_listeners, built_admin, built_demos)
        built_sinks = tuple(self.statsd(b) for b in sinks)
        built_runtime = self.runtime(runtimes)
        if self.issues:
            raise MeshError(self.issues)
        return Mesh(
            listeners=built_listeners,
            clusters=clusters,
            admin=built_admin,
            demo_services=built_demos,
            stats_sinks=built_sinks,
            runtime=built_runtime,
            overload=built_overload,
            source=source,
        )

    # ------------------------------------------------------------------ clusters

    def clusters(self, builders: Iterable[ClusterBuilder]) -> tuple[Cluster, ...]:
        seen: dict[str, tuple[ClusterBuilder, Cluster, bool]] = {}
        out: list[Cluster] = []
        for cb in builders:
            key = str(cb._name)
            first = seen.get(key)
            if first is not None and cb == first[0]:
                continue  # the same cluster used again
            before = len(self.issues)
            built = self.cluster(cb)
            ok = len(self.issues) == before
            if first is None:
                seen[key] = (cb, built, ok)
                self.cluster_names.add(built.name)
                out.append(built)
            elif not (ok and first[2] and built == first[1]):
                self.error(
                    cb._location,
                    f"duplicate cluster {key!r} with a different definition"
                    f" (first defined{_at(first[1].location)})",
                )
        return tuple(out)

    def cluster(self, cb: ClusterBuilder) -> Cluster:
        loc = cb._location
        name = self.name(cb._name, "cluster", loc)
        endpoints: list[Endpoint] = []
        for raw in cb._endpoints:
            if not isinstance(raw, EndpointBuilder):
                self.error(
                    loc,
                    f"cluster {name!r}: an endpoint must be a 'host:port' string or "
                    f"endpoint(...), got {_kind(raw)}",
                )
                continue
            eloc = raw._location
            address: SocketAddress | None = None
            try:
                address = parse_endpoint_address(raw._address, f"an endpoint of cluster {name!r}")
            except BadValue as exc:
                self.error(eloc, str(exc))
            weight = raw._weight
            if not _is_int(weight) or cast(int, weight) < 1:
                shown = address if address is not None else repr(raw._address)
                self.error(
                    eloc,
                    f"bad weight {weight!r} for endpoint {shown} of cluster {name!r}"
                    " (expected a positive integer)",
                )
                continue
            if address is None:
                continue
            priority = raw._priority
            if not _is_int(priority) or not 0 <= cast(int, priority) <= MAX_PRIORITY:
                self.error(
                    eloc,
                    f"bad priority {priority!r} for endpoint {address} of cluster {name!r}"
                    f" (expected an integer 0..{MAX_PRIORITY})",
                )
                continue
            endpoints.append(
                Endpoint(address=address, weight=cast(int, weight), priority=cast(int, priority))
            )
        lb = self.choice(cb._lb.value, get_args(LbPolicy), "lb policy", cb._lb.location)
        lb_options = self.lb_options(cb, name, lb)
        panic = 50.0
        if cb._panic_threshold is not None:
            raw_panic = cb._panic_threshold.value
            if (
                isinstance(raw_panic, int | float)
                and not isinstance(raw_panic, bool)
                and (0 <= raw_panic <= 100)
            ):
                panic = float(raw_panic)
            else:
                self.error(
                    cb._panic_threshold.location,
                    f"bad healthy_panic_threshold {raw_panic!r} of cluster {name!r}"
                    " (expected a percentage 0..100)",
                )
        ct = cb._connect_timeout
        what = f"connect_timeout of cluster {name!r}"
        connect_timeout = self.duration(ct.value, what, ct.location, positive=True)
        protocol = self.choice(
            cb._protocol.value, get_args(UpstreamProtocol), "protocol", cb._protocol.location
        )
        http1_parser: Http1Parser = self.choice(
            cb._http1_parser.value,
            get_args(Http1Parser),
            "http1 parser",
            cb._http1_parser.location,
        )
        tls = None
        if cb._tls is not None:
            tls = upstream_tls(
                self,
                cb._tls.value,
                cb._tls.location,
                name,
                protocol,
                [e.address.host for e in endpoints],
            )
        elif protocol == "auto":
            self.error(
                cb._protocol.location,
                f"cluster {name!r}: auto_http() picks the protocol by TLS ALPN,"
                " so it needs .tls(...)",
            )
        discovery = discovery_options(self, cb, name, endpoints)
        return Cluster(
            name=name,
            **discovery,  # type: ignore[arg-type]
            endpoints=tuple(endpoints),
            lb_policy=lb,
            healthy_panic_threshold=panic,
            **lb_options,  # type: ignore[arg-type]
            protocol=protocol,
            http1_parser=http1_parser,
            connect_timeout=connect_timeout,
            tls=tls,
            outlier_detection=self.outlier(cb, name),
            health_check=self.health_check(cb, name, protocol),
            circuit_breakers=self.breakers(cb, name),
            location=loc,
        )

    def lb_options(self, cb: ClusterBuilder, name: str, policy: str) -> dict[str, object]:
        """The `.lb(...)` options as `Cluster` fields, each checked against its policy."""
        given = cb._lb_options
        if given is None:
            return {}
        loc = given.location
        out: dict[str, object] = {}
        for key, raw in given.value.items():
            what = f"{key} of cluster {name!r}"
            policies = _LB_OPTIONS[key]
            if policy not in policies:
                self.error(loc, f"{what} applies to lb policy {_one_of(policies)}, not {policy!r}")
                continue
            if key == "active_request_bias":
                if isinstance(raw, int | float) and not isinstance(raw, bool) and 0 <= raw <= 100:
                    out[key] = float(raw)
                else:
                    self.error(loc, f"bad {what} {raw!r} (expected a number 0..100)")
            elif key == "choice_count":
                out[key] = self.count(raw, what, loc, low=1, high=100)
            elif key == "table_size":
                size = self.count(raw, what, loc, low=2, high=5_000_011)
                if _is_int(raw) and not _is_prime(size):
                    self.error(loc, f"{what} must be a prime number (Envoy), got {size}")
                out["maglev_table_size"] = size
            else:
                out[key] = self.count(raw, what, loc, low=1, high=MAX_RING_SIZE)
        low = out.get("minimum_ring_size", 1024)
        high = out.get("maximum_ring_size", MAX_RING_SIZE)
        if cast(int, low) > cast(int, high):
            self.error(
                loc, f"cluster {name!r}: minimum_ring_size {low} exceeds maximum_ring_size {high}"
            )
        return out

    def health_check(
        self, cb: ClusterBuilder, name: str, protocol: str = "http1"
    ) -> HealthCheck | None:
        given = cb._health_check
        if given is None:
            return None
        loc = given.location
        o = given.value
        kind = str(o.get("kind", "http"))
        what = f"{'' if kind == 'http' else kind + '_'}health_check of cluster {name!r}"
        base = HealthCheck(
            interval=self.duration(o["interval"], f"interval of {what}", loc, positive=True),
            timeout=self.duration(o["timeout"], f"timeout of {what}", loc, positive=True),
            unhealthy_threshold=self.count(
                o["unhealthy_threshold"], f"unhealthy_threshold of {what}", loc, low=1, high=1000
            ),
            healthy_threshold=self.count(
                o["healthy_threshold"], f"healthy_threshold of {what}", loc, low=1, high=1000
            ),
            interval_jitter=self.duration(o["interval_jitter"], f"interval_jitter of {what}", loc),
            no_traffic_interval=self.duration(
                o["no_traffic_interval"], f"no_traffic_interval of {what}", loc, positive=True
            ),
        )
        if kind == "tcp":
            return attrs.evolve(base, checker=self.tcp_checker(o, what, loc))
        if kind == "grpc":
            return attrs.evolve(base, checker=self.grpc_checker(o, what, loc, protocol))
        path = o["path"]
        if not isinstance(path, str) or not path.startswith("/"):
            self.error(loc, f"{what}: path must start with '/', got {path!r}")
            path = "/"
        host = o["host"]
        if host is not None and not isinstance(host, str):
            self.error(loc, f"{what}: host must be a string, got {_kind(host)}")
            host = None
        statuses: list[tuple[int, int]] = []
        for code in cast(tuple[object, ...], o["expected_statuses"]):
            if _is_int(code) and 100 <= cast(int, code) <= 599:
                statuses.append((cast(int, code), cast(int, code) + 1))
            else:
                self.error(loc, f"{what}: bad expected status {code!r}")
        return attrs.evolve(
            base, path=path, host=host, expected_statuses=tuple(statuses) or ((200, 201),)
        )

    def tcp_checker(self, o: dict[str, object], what: str, loc: Location | None) -> TcpHealthCheck:
        send = o["send"]
        if not isinstance(send, bytes):
            hint = f" (write b{send!r})" if isinstance(send, str) else ""
            self.error(loc, f"{what}: send must be bytes, got {_kind(send)}{hint}")
            send = b""
        raw = o["expect"]
        blocks = (raw,) if isinstance(raw, bytes | str) else raw
        expect: list[bytes] = []
        if not isinstance(blocks, tuple | list):
            self.error(loc, f"{what}: expect must be bytes or a list of bytes, got {_kind(raw)}")
            blocks = ()
        for block in blocks:
            if not isinstance(block, bytes):
                hint = f" (write b{block!r})" if isinstance(block, str) else ""
                self.error(loc, f"{what}: expect must be bytes, got {_kind(block)}{hint}")
            elif not block:
                if raw != b"":
                    self.error(loc, f"{what}: an expected block is empty")
            else:
                expect.append(block)
        return TcpHealthCheck(send=send, receive=tuple(expect))

    def grpc_checker(
        self, o: dict[str, object], what: str, loc: Location | None, protocol: str
    ) -> GrpcHealthCheck:
        service = o["service"]
        if not isinstance(service, str):
            self.error(loc, f"{what}: service must be a string, got {_kind(service)}")
            service = ""
        authority = o["authority"]
        if authority is not None and (not isinstance(authority, str) or not authority):
            self.error(loc, f"{what}: authority must be a non-empty string, got {authority!r}")
            authority = None
        if protocol == "http1":
            # Envoy refuses this too: gRPC needs HTTP/2.
            self.error(
                loc,
                f"{what}: gRPC health checks need HTTP/2; add .http2() (or .auto_http() with TLS)",
            )
        return GrpcHealthCheck(service_name=service, authority=authority)

    def health_check_filter(
        self, spec: HealthCheckFilterSpec, stat_prefix: str, before: list[HttpFilterConfig]
    ) -> LocalHealthCheck:
        what = f"health_check filter of http {stat_prefix!r}"
        path = spec.path
        if not isinstance(path, str) or not path.startswith("/"):
            self.error(spec.location, f"{what}: path must start with '/', got {path!r}")
            path = "/healthz"
        if not isinstance(spec.pass_through, bool):
            self.error(spec.location, f"{what}: pass_through must be True or False")
        if any(isinstance(f, LocalHealthCheck) for f in before):
            self.error(spec.location, f"{what}: one health_check per http(...)")
        return LocalHealthCheck(
            headers=(HeaderMatcher(name=":path", kind="exact", value=path),),
            pass_through_mode=spec.pass_through is True,
        )

    def breakers(self, cb: ClusterBuilder, name: str) -> CircuitBreakers:
        given = cb._breakers
        if given is None:
            return CircuitBreakers()
        loc = given.location
        values: dict[str, object] = {}
        for key, raw in given.value.items():
            shown = "retry_budget_percent" if key == "budget_percent" else key
            what = f"circuit_breakers {shown} of cluster {name!r}"
            if raw is None:
                values[key] = None
            elif key == "budget_percent":
                if isinstance(raw, int | float) and not isinstance(raw, bool) and 0 < raw <= 100:
                    values[key] = float(raw)
                else:
                    self.error(loc, f"bad {what} {raw!r} (expected a percentage in (0, 100])")
            else:
                low = 0 if key in ("max_retries", "max_pending_requests") else 1
                values[key] = self.count(raw, what, loc, low=low, high=2**31 - 1)
        return CircuitBreakers(**values)  # type: ignore[arg-type]

    def outlier(self, cb: ClusterBuilder, name: str) -> OutlierDetection | None:
        given = cb._outlier
        if given is None:
            return None
        loc = given.location
        values: dict[str, object] = {}
        for key, raw in given.value.items():
            what = f"outlier_detection {key} of cluster {name!r}"
            if key in ("interval", "base_ejection_time", "max_ejection_time"):
                values[key] = self.duration(raw, what, loc, positive=True)
            elif key == "max_ejection_time_jitter":
                values[key] = self.duration(raw, what, loc)
            elif key.startswith("enforcing_") or key in (
                "max_ejection_percent",
                "failure_percentage_threshold",
            ):
                values[key] = self.count(raw, what, loc, low=0, high=100)
            elif key == "success_rate_stdev_factor":
                values[key] = self.count(raw, what, loc, low=0, high=2**31 - 1)
            else:
                values[key] = self.count(raw, what, loc, low=1, high=2**31 - 1)
        return OutlierDetection(**values)  # type: ignore[arg-type]

    def cluster_ref(self, target: object, location: Location | None) -> str:
        """The name of a route's cluster (builder or name), checking that it exists."""
        if isinstance(target, ClusterBuilder):
            return str(target._name)  # defined, so known (or already reported)
        if not isinstance(target, str):
            self.error(location, f"a cluster must be cluster(...) or its name, got {_kind(target)}")
            return ""
        if target not in self.cluster_names:
            hint = _did_you_mean(target, sorted(self.cluster_names))
            self.error(location, f"unknown cluster {target!r}{hint}")
        return target

    # ------------------------------------------------------------------ listeners

    def listeners(self, builders: list[ListenerBuilder]) -> tuple[Listener, ...]:
        seen: dict[str, Location | None] = {}
        out: list[Listener] = []
        for lb in builders:
            built = self.listener(lb)
            if built.name in seen:
                self.error(
                    lb._location,
                    f"duplicate listener {built.name!r} (first defined{_at(seen[built.name])})",
                )
            else:
                seen[built.name] = lb._location
            out.append(built)
        return tuple(out)

    def listener(self, lb: ListenerBuilder) -> Listener:
        loc = lb._location
        name = self.name(lb._name, "listener", loc)
        address = self.bind_address(lb._address, f"listener {name!r}", loc)
        chains: list[FilterChain] = []
        for i, (given, opts) in enumerate(zip(lb._chains, lb._options(), strict=True)):
            what = f"listener {name!r} chain {i}"
            if isinstance(given.value, HttpBuilder):
                chain = self.chain(given.value, name, given.location)
                codec = cast(HttpConnectionManager, chain.filters[0]).codec
                alpn = default_alpn_for_codec(codec)
            elif isinstance(given.value, TcpProxyBuilder):
                chain = tcp_proxy_chain(self, given.value, name, given.location)
                alpn = ()
            else:
                self.error(
                    given.location,
                    f"listener {name!r}: a chain must be http(...) or tcp_proxy(...),"
                    f" got {_kind(given.value)}",
                )
                continue
            chains.append(apply_chain_options(self, chain, opts, what, alpn))
        chains, listener_filters = finish_listener(self, name, chains, lb._inspect, loc)
        filters_timeout = 15.0
        if lb._listener_filters_timeout is not None:
            g = lb._listener_filters_timeout
            filters_timeout = self.duration(g.value, "listener_filters_timeout", g.location)
        stat_prefix = None
        if lb._stat_prefix is not None:
            stat_prefix = self.name(lb._stat_prefix.value, "stat_prefix", lb._stat_prefix.location)
        max_connections = None
        if lb._max_connections is not None:
            g = lb._max_connections
            max_connections = self.count(
                g.value, f"listener {name!r} max_connections", g.location, low=1, high=10**9
            )
        return Listener(
            name=name,
            address=address,
            filter_chains=tuple(chains),
            stat_prefix=stat_prefix,
            listener_filters=listener_filters,
            listener_filters_timeout=filters_timeout,
            max_connections=max_connections,
            location=loc,
        )

    def access_log(self, spec: AccessLogSpec) -> AccessLog:
        """An `.access_log(...)` call: its format is parsed here, so a bad
        operator is an error at the call's file:line."""
        loc = spec.location
        fmt = (
            DEFAULT_ACCESS_LOG_FORMAT
            if spec.format is None
            else self.text(spec.format, "access_log format", loc)
        )
        json_text: str | None = None
        try:
            if spec.json_format is not None:
                if spec.format is not None:
                    self.error(loc, "access_log takes a format or a json_format, not both")
                if not isinstance(spec.json_format, Mapping):
                    self.error(
                        loc,
                        f"access_log json_format must be a dict, got {_kind(spec.json_format)}",
                    )
                else:
                    compile_json_format(spec.json_format)
                    json_text = json.dumps(spec.json_format, sort_keys=True)
            else:
                compile_format(fmt)
        except FormatError as exc:
            self.error(loc, f"bad access_log format: {exc}")
        log_filter = None
        if spec.filter is not None and self.access_log_filter(spec.filter, loc):
            log_filter = cast(AccessLogFilter, spec.filter)
        return AccessLog(
            path=self.name(spec.path, "access_log path", loc),
            format=fmt,
            json_format=json_text,
            filter=log_filter,
            location=loc,
        )

    def access_log_filter(self, f: object, loc: Location | None) -> bool:
        """Check an access-log filter tree; False (with errors) if it is bad."""
        if isinstance(f, AndFilter | OrFilter):
            if not f.filters:
                self.error(loc, f"{type(f).__name__} needs at least one filter")
                return False
            return all([self.access_log_filter(p, loc) for p in f.filters])
        if isinstance(f, StatusCodeFilter | DurationFilter):
            what = "status_code_filter" if isinstance(f, StatusCodeFilter) else "duration_filter"
            ok = True
            if f.op not in ("EQ", "GE", "LE"):
                self.error(loc, f"{what}: bad comparison {f.op!r} (==, >= or <=)")
                ok = False
            if not isinstance(f.value, int) or isinstance(f.value, bool) or f.value < 0:
                self.error(loc, f"{what}: value must be a non-negative integer, got {f.value!r}")
                ok = False
            return ok
        if isinstance(f, RuntimeFilter):
            if f.denominator not in (100, 10000, 1000000):
                self.error(
                    loc,
                    f"runtime_filter: bad denominator {f.denominator!r} (100, 10000 or 1000000)",
                )
                return False
            if not isinstance(f.numerator, int) or f.numerator < 0:
                self.error(loc, f"runtime_filter: bad numerator {f.numerator!r}")
                return False
            return True
        if isinstance(f, ResponseFlagFilter):
            bad = [x for x in f.flags if not (isinstance(x, str) and x.isalnum() and x.isupper())]
            if bad:
                self.error(loc, f"response_flag_filter: bad flag(s) {bad!r}")
                return False
            return True
        if isinstance(f, NotHealthCheckFilter):
            return True
        self.error(loc, f"access_log filter must be an access-log filter, got {_kind(f)}")
        return False

    def chain(self, hb: HttpBuilder, listener: str, location: Location | None) -> FilterChain:
        loc = hb._location
        stat_prefix = listener
        if hb._stat_prefix is not None:
            stat_prefix = self.name(hb._stat_prefix, "http() stat_prefix", loc)
        codec: CodecType = self.choice(hb._codec, get_args(CodecType), "codec", loc)
        access_logs = tuple(self.access_log(spec) for spec in hb._access_logs)
        filters: list[HttpFilterConfig] = []
        for given in hb._filters:
            if isinstance(given.value, HttpFilterConfig):
                filters.append(given.value)
            elif isinstance(given.value, HealthCheckFilterSpec):
                filters.append(self.health_check_filter(given.value, stat_prefix, filters))
            else:
                self.error(
                    given.location,
                    f"an HTTP filter must be an HttpFilterConfig, got {_kind(given.value)}",
                )
        xfcc = xfcc_options(self, hb._forward_client_cert, hb._client_cert_details, loc)
        hcm = HttpConnectionManager(
            stat_prefix=stat_prefix,
            route_config=RouteConfig(virtual_hosts=self.vhosts(hb._vhosts)),
            codec=codec,
            http_filters=tuple(filters),
            access_logs=access_logs,
            max_request_headers_kb=self.count(
                hb._max_request_headers_kb,
                "max_request_headers_kb",
                loc,
                low=1,
                high=MAX_REQUEST_HEADERS_KB,
            ),
            max_headers_count=self.count(
                hb._max_headers_count, "max_headers_count", loc, low=1, high=2**31 - 1
            ),
            http1_parser=self.choice(hb._http1_parser, get_args(Http1Parser), "http1_parser", loc),
            server_name=self.text(hb._server_name, "server_name", loc),
            generate_request_id=self.flag(hb._generate_request_id, "generate_request_id", loc),
            preserve_external_request_id=self.flag(
                hb._preserve_external_request_id, "preserve_external_request_id", loc
            ),
            tracing=None if hb._tracing is None else tracing_config(self, hb._tracing),
            use_remote_address=self.flag(hb._use_remote_address, "use_remote_address", loc),
            allow_connect=self.flag(hb._allow_connect, "allow_connect", loc),
            request_headers_timeout=self.duration(
                hb._request_headers_timeout, "request_headers_timeout", loc
            ),
            idle_timeout=self.duration(hb._idle_timeout, "idle_timeout", loc),
            stream_idle_timeout=self.duration(hb._stream_idle_timeout, "stream_idle_timeout", loc),
            request_timeout=self.duration(hb._request_timeout, "request_timeout", loc),
            forward_client_cert_details=xfcc[0],
            set_current_client_cert_details=xfcc[1],
            **http2_limit_options(self, hb._h2_limits, loc),  # type: ignore[arg-type]
            location=loc,
        )
        return FilterChain(filters=(hcm,), location=location)

    # ------------------------------------------------------------------ vhosts

    def vhosts(self, given: tuple[Given[object], ...]) -> tuple[VirtualHost, ...]:
        out: list[VirtualHost] = []
        names: dict[str, Location | None] = {}
        # domain -> (index, name, location) of the first vhost serving it
        domains: dict[str, tuple[int, str, Location | None]] = {}
        for index, g in enumerate(given):
            if not isinstance(g.value, VhostBuilder):
                self.error(g.location, f"a vhost must be vhost(...), got {_kind(g.value)}")
                continue
            vh = self.vhost(g.value)
            loc = vh.location
            if vh.name in names:
                self.error(loc, f"duplicate vhost {vh.name!r} (first defined{_at(names[vh.name])})")
            else:
                names[vh.name] = loc
            for domain in dict.fromkeys(vh.domains):  # repeats within a vhost: see vhost()
                first = domains.setdefault(domain, (index, vh.name, loc))
                if first[0] == index:
                    continue
                if domain == "*":
                    self.error(
                        loc,
                        f"more than one vhost with domain '*': {vh.name!r}"
                        f" and {first[1]!r}{_at(first[2])}",
                    )
                else:
                    self.error(
                        loc,
                        f"domain {domain!r} of vhost {vh.name!r} is also in vhost"
                        f" {first[1]!r}{_at(first[2])}",
                    )
            out.append(vh)
        return tuple(out)

    def vhost(self, vb: VhostBuilder) -> VirtualHost:
        loc = vb._location
        name = self.name(vb._name, "vhost", loc)
        domains: list[str] = []
        for raw in vb._domains:
            if not isinstance(raw, str) or not raw:
                self.error(loc, f"bad domain {raw!r} in vhost {name!r} (expected a host name)")
                continue
            domain = raw.lower()
            stars = domain.count("*")
            if domain != "*" and (stars > 1 or (stars == 1 and "*" not in (domain[0], domain[-1]))):
                self.error(
                    loc,
                    f"bad domain {raw!r} in vhost {name!r}"
                    " (a wildcard '*' may appear once, as the first or last character)",
                )
            if domain in domains:
                self.error(loc, f"domain {raw!r} repeated in vhost {name!r}")
            domains.append(domain)
        routes = tuple(self.route(spec, name, i) for i, spec in enumerate(vb._routes))
        return VirtualHost(name=name, domains=tuple(domains), routes=routes, location=loc)

    # ------------------------------------------------------------------ routes

    def route(self, spec: RouteSpec, vhost: str, index: int) -> Route:
        loc = spec.location
        name = f"{vhost}/{index}" if spec.name is None else self.name(spec.name, "route", loc)
        if isinstance(spec.match, MatchBuilder):
            match = self.match(spec.match)
        else:
            self.error(
                loc,
                "a route match must be prefix(...), path(...) or regex(...),"
                f" got {_kind(spec.match)}",
            )
            match = RouteMatch()
        action = self.action(spec)
        return Route(name=name, match=match, action=action, location=loc)

    def action(self, spec: RouteSpec) -> Action:
        loc = spec.location
        target = spec.target
        if isinstance(target, RedirectBuilder | DirectResponseBuilder):
            what = "redirect()" if isinstance(target, RedirectBuilder) else "direct_response()"
            for option in (
                "timeout",
                "prefix_rewrite",
                "host_rewrite",
                "upgrades",
                "retry",
                "hedge",
                "hash_policy",
            ):
                if getattr(spec, option) is not None:
                    self.error(
                        loc,
                        f"route option {option}= needs a cluster or weighted() target, not {what}",
                    )
            if isinstance(target, RedirectBuilder):
                return self.redirect(target)
            return self.direct_response(target)

        timeout = DEFAULT_ROUTE_TIMEOUT
        if spec.timeout is not None:
            timeout = self.duration(spec.timeout, "route timeout", loc)
        prefix_rewrite = self.optional_text(spec.prefix_rewrite, "prefix_rewrite", loc)
        host_rewrite = None
        if spec.host_rewrite is not None:
            host_rewrite = self.name(spec.host_rewrite, "host_rewrite", loc)
        upgrades = True
        if spec.upgrades is not None:
            if isinstance(spec.upgrades, bool):
                upgrades = spec.upgrades
            else:
                self.error(
                    loc, f"route option upgrades= must be True or False, got {_kind(spec.upgrades)}"
                )
        retry_policy = None
        if spec.retry is not None:
            if isinstance(spec.retry, RetryBuilder):
                retry_policy = self.retry_policy(spec.retry)
            else:
                self.error(loc, f"route option retry= takes retry(...), got {_kind(spec.retry)}")
        hedge_policy = None
        if spec.hedge is not None:
            if isinstance(spec.hedge, HedgeBuilder):
                hedge_policy = self.hedge_policy(spec.hedge, retry_policy)
            else:
                self.error(loc, f"route option hedge= takes hedge(...), got {_kind(spec.hedge)}")
        hash_policy = self.hash_policies(spec.hash_policy, loc)
        if isinstance(target, WeightedBuilder):
            return RouteAction(
                hash_policy=hash_policy,
                retry_policy=retry_policy,
                hedge_policy=hedge_policy,
                weighted_clusters=self.weighted(target),
                timeout=timeout,
                prefix_rewrite=prefix_rewrite,
                host_rewrite=host_rewrite,
                allow_upgrades=upgrades,
            )
        if not isinstance(target, ClusterBuilder | str):
            self.error(
                loc,
                "a route target must be a cluster, a cluster name, weighted(...),"
                f" redirect(...) or direct_response(...), got {_kind(target)}",
            )
        forwards = isinstance(target, ClusterBuilder | str)
        return RouteAction(
            hash_policy=hash_policy,
            retry_policy=retry_policy,
            hedge_policy=hedge_policy,
            cluster=self.cluster_ref(target, loc) if forwards else "",
            timeout=timeout,
            prefix_rewrite=prefix_rewrite,
            host_rewrite=host_rewrite,
            allow_upgrades=upgrades,
        )

    def hash_policies(self, raw: object, location: Location | None) -> tuple[HashPolicy, ...]:
        """A route's `hash_policy=`: a list of hash_header(), hash_cookie(), ..."""
        if raw is None:
            return ()
        if isinstance(raw, HashPolicyBuilder):
            raw = (raw,)
        if not isinstance(raw, tuple | list):
            self.error(
                location,
                "route option hash_policy= takes a list of hash_header(...), hash_cookie(...),"
                f" hash_source_ip() or hash_query(...), got {_kind(raw)}",
            )
            return ()
        out: list[HashPolicy] = []
        for item in raw:
            if not isinstance(item, HashPolicyBuilder):
                self.error(
                    location,
                    "a hash_policy entry must be hash_header(...), hash_cookie(...),"
                    f" hash_source_ip() or hash_query(...), got {_kind(item)}",
                )
                continue
            loc = item._location
            terminal = self.flag(item._terminal, f"hash_{item._kind} terminal", loc)
            if item._kind == "source_ip":
                out.append(SourceIpHashPolicy(terminal=terminal))
                continue
            what = {"header": "hash_header", "cookie": "hash_cookie"}.get(item._kind, "hash_query")
            name = self.name(item._name, what, loc)
            if item._kind == "header":
                out.append(HeaderHashPolicy(name=name.lower(), terminal=terminal))
            elif item._kind == "query_parameter":
                out.append(QueryParameterHashPolicy(name=name, terminal=terminal))
            else:
                if not _COOKIE_NAME.fullmatch(name):
                    self.error(loc, f"bad cookie name {name!r} in hash_cookie()")
                ttl = None
                if item._ttl is not None:
                    ttl = round(self.duration(item._ttl, f"ttl of hash_cookie({name!r})", loc))
                path = self.optional_text(item._path, f"path of hash_cookie({name!r})", loc)
                if path is not None and (
                    not path.startswith("/") or not _COOKIE_PATH.fullmatch(path)
                ):
                    self.error(
                        loc, f"bad cookie path {path!r} in hash_cookie() (must start with '/')"
                    )
                out.append(CookieHashPolicy(name=name, ttl=ttl, path=path, terminal=terminal))
        return tuple(out)

    def retry_policy(self, rb: RetryBuilder) -> RetryPolicy:
        loc = rb._location
        on: set[str] = set()
        if not isinstance(rb._on, str) or not rb._on.strip():
            self.error(loc, "retry(on=...) needs a comma-separated list of conditions")
        else:
            for cond in (c.strip().lower() for c in rb._on.split(",")):
                if cond in RETRY_ON:
                    on.add(cond)
                else:
                    hint = _did_you_mean(cond, tuple(sorted(RETRY_ON)))
                    self.error(loc, f"unknown retry condition {cond!r}{hint}")
        n = rb._num_retries
        if not _is_int(n) or cast(int, n) < 0:
            self.error(loc, f"bad num_retries {n!r} (expected an integer >= 0)")
            n = 1
        per_try = 0.0
        if rb._per_try_timeout is not None:
            per_try = self.duration(rb._per_try_timeout, "per_try_timeout", loc)
        codes: list[int] = []
        raw_codes = rb._status_codes
        if not isinstance(raw_codes, tuple | list) or not all(
            _is_int(c) and 100 <= cast(int, c) <= 599 for c in raw_codes
        ):
            self.error(loc, f"bad status_codes {raw_codes!r} (expected HTTP status codes)")
        else:
            codes = [cast(int, c) for c in raw_codes]
        if codes and "retriable-status-codes" not in on:
            on.add("retriable-status-codes")
        replay = rb._max_replay_bytes
        if not _is_int(replay) or cast(int, replay) < 0:
            self.error(loc, f"bad max_replay_bytes {replay!r} (expected an integer >= 0)")
            replay = 1024 * 1024
        return RetryPolicy(
            retry_on=frozenset(on),
            num_retries=cast(int, n),
            per_try_timeout=per_try,
            retriable_status_codes=tuple(codes),
            max_replay_bytes=cast(int, replay),
        )

    def hedge_policy(self, hb: HedgeBuilder, retry: RetryPolicy | None) -> HedgePolicy | None:
        loc = hb._location
        n = hb._initial
        if not _is_int(n) or cast(int, n) < 1:
            self.error(loc, f"bad hedge initial {n!r} (expected an integer >= 1)")
            n = 1
        delay = None
        if hb._delay is not None:
            delay = self.duration(hb._delay, "hedge delay", loc) or None
        on_timeout = hb._on_per_try_timeout
        if not isinstance(on_timeout, bool):
            self.error(loc, f"hedge on_per_try_timeout= must be True or False, got {on_timeout!r}")
            on_timeout = False
        if on_timeout and (retry is None or not retry.per_try_timeout):
            self.error(
                loc,
                "hedge(on_per_try_timeout=True) needs the route's"
                " retry(per_try_timeout=...) (it hedges when that timeout fires)",
            )
        if delay is not None and n == 1:
            self.error(loc, "hedge(delay=...) needs initial >= 2 (the tries it spaces out)")
        if n == 1 and not on_timeout:
            return None  # nothing to hedge: the route keeps the one-try path
        return HedgePolicy(
            initial_requests=cast(int, n),
            additional_request_delay=delay,
            hedge_on_per_try_timeout=on_timeout,
        )

    def weighted(self, wb: WeightedBuilder) -> tuple[WeightedCluster, ...]:
        loc = wb._location
        if not wb._entries:
            self.error(loc, "weighted() needs at least one (cluster, weight) entry")
        out: list[WeightedCluster] = []
        seen: set[str] = set()
        for i, entry in enumerate(wb._entries, 1):
            if not isinstance(entry, tuple | list) or len(entry) != 2:
                self.error(
                    loc, f"weighted() entry {i} must be a (cluster, weight) pair, got {entry!r}"
                )
                continue
            name = self.cluster_ref(entry[0], loc)
            weight = 1
            if _is_int(entry[1]) and cast(int, entry[1]) >= 1:
                weight = cast(int, entry[1])
            else:
                self.error(
                    loc,
                    f"weighted() weight for cluster {name!r} must be a positive integer,"
                    f" got {entry[1]!r}",
                )
            if name in seen:
                self.error(loc, f"weighted() names cluster {name!r} more than once")
            seen.add(name)
            out.append(WeightedCluster(name=name, weight=weight))
        return tuple(out)

    def redirect(self, rb: RedirectBuilder) -> RedirectAction:
        loc = rb._location
        code = 301
        if _is_int(rb._code) and rb._code in REDIRECT_CODES:
            code = rb._code
        else:
            expected = ", ".join(map(str, REDIRECT_CODES))
            self.error(loc, f"bad redirect code {rb._code!r} (expected {expected})")
        port = None
        if rb._port is not None:
            port = self.count(rb._port, "redirect port", loc, low=1, high=65535)
        path = self.optional_text(rb._path, "redirect path", loc)
        prefix_rewrite = self.optional_text(rb._prefix_rewrite, "redirect prefix_rewrite", loc)
        if path is not None and prefix_rewrite is not None:
            self.error(loc, "redirect() takes path= or prefix_rewrite=, not both")
        if path is not None and not path.startswith("/"):
            self.error(loc, f"redirect path {path!r} must start with '/'")
        scheme = self.optional_text(rb._scheme, "redirect scheme", loc)
        return RedirectAction(
            scheme=scheme.lower() if scheme else scheme,
            host=self.optional_text(rb._host, "redirect host", loc),
            port=port,
            path=path,
            prefix_rewrite=prefix_rewrite,
            code=code,
            strip_query=self.flag(rb._strip_query, "redirect strip_query", loc),
        )

    def direct_response(self, db: DirectResponseBuilder) -> DirectResponseAction:
        loc = db._location
        status = self.count(db._status, "direct_response status", loc, low=100, high=599)
        body = db._body
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, bytes):
            self.error(loc, f"direct_response body must be str or bytes, got {_kind(body)}")
            body = b""
        return DirectResponseAction(
            status=status,
            body=body,
            content_type=self.text(db._content_type, "direct_response content_type", loc),
        )

    # ------------------------------------------------------------------ matches

    def match(self, mb: MatchBuilder) -> RouteMatch:
        loc = mb._location
        kind = cast(PathKind, mb._kind)
        value = self.text(mb._value, f"{kind}()", loc)
        if kind == "regex":
            self.regex(value, "", loc)
        elif isinstance(mb._value, str) and not value.startswith("/"):
            self.error(loc, f"{kind} {value!r} must start with '/'")
        return RouteMatch(
            path_kind=kind,
            value=value,
            case_sensitive=mb._case_sensitive,
            headers=tuple(self.header(spec) for spec in mb._headers),
            query_parameters=tuple(self.query(spec) for spec in mb._queries),
            grpc=mb._grpc,
            runtime_fraction=self.runtime_fraction(mb._fraction),
        )

    def runtime_fraction(
        self, spec: tuple[object, object, object, Location | None] | None
    ) -> RuntimeFraction | None:
        if spec is None:
            return None
        numerator, denominator, key, loc = spec
        if denominator not in (100, 10_000, 1_000_000) or not _is_int(denominator):
            self.error(
                loc, f"bad runtime_fraction denominator {denominator!r} (100, 10000 or 1000000)"
            )
            denominator = 100
        high = denominator if isinstance(denominator, int) else 100
        num = self.count(numerator, "runtime_fraction numerator", loc, low=0, high=high)
        key_text = self.text(key, "runtime_fraction key", loc)
        return RuntimeFraction(numerator=num, denominator=high, runtime_key=key_text)

    def _string_match(
        self,
        what: str,
        given: tuple[tuple[str, object], ...],
        location: Location | None,
    ) -> tuple[StringMatchKind, str, bool]:
        """(kind, value, present) from the matcher kinds given to .header()/.query()."""
        if len(given) > 1:
            got = ", ".join(f"{k}=" for k, _ in given)
            self.error(location, f"{what}: give only one of {_MATCH_KINDS} (got {got})")
        if not given:
            return "present", "", True
        kind, value = given[0]
        if kind == "present":
            return "present", "", self.flag(value, f"{what}: present", location)
        text = self.text(value, f"{what}: {kind}=", location)
        if kind == "regex":
            self.regex(text, f" for {what}", location)
        return cast(StringMatchKind, kind), text, True

    def header(self, spec: HeaderSpec) -> HeaderMatcher:
        loc = spec.location
        name = self.name(spec.name, "header", loc).lower()
        kind, value, present = self._string_match(f"header {name!r}", spec.given, loc)
        invert = self.flag(spec.invert, f"header {name!r}: invert", loc)
        # present=False means "absent": Envoy's present_match false.
        return HeaderMatcher(name=name, kind=kind, value=value, invert=invert != (not present))

    def query(self, spec: QuerySpec) -> QueryParameterMatcher:
        loc = spec.location
        name = self.name(spec.name, "query parameter", loc)
        kind, value, present = self._string_match(f"query parameter {name!r}", spec.given, loc)
        if not present:
            self.error(loc, f"query parameter {name!r}: present=False is not supported")
        return QueryParameterMatcher(name=name, kind=kind, value=value)

    # ------------------------------------------------------------------ top level

    def admin(self, builders: list[AdminBuilder]) -> Admin | None:
        if not builders:
            return None
        first = builders[0]
        for extra in builders[1:]:
            self.error(
                extra._location, f"more than one admin (first defined{_at(first._location)})"
            )
        loc = first._location
        issues = len(self.issues)
        address = self.bind_address(first._address, "admin", loc)
        bad_address = len(self.issues) > issues
        token = first._token
        if token is not None and not (isinstance(token, str) and token.strip()):
            self.error(loc, "admin token must be a non-empty string (or None)")
            token = None
        if token is None and not bad_address and not _is_loopback(address.host):
            # Envoy's admin has no authentication; we refuse to expose it bare.
            self.error(
                loc,
                f"admin on {address} is reachable from other hosts: give it a token "
                "(admin(..., token=os.environ[...])) or bind it to 127.0.0.1",
            )
        return Admin(address=address, token=token, location=loc)

    def statsd(self, b: StatsdBuilder) -> StatsdSink:
        loc = b._location
        address = SocketAddress(host="127.0.0.1", port=8125)
        try:
            address = parse_endpoint_address(b._address, "statsd")
        except BadValue as exc:
            self.error(loc, str(exc))
        else:
            try:
                ipaddress.ip_address(address.host)
            except ValueError:
                # The sink sends from the stats flush: no DNS lookups there.
                self.error(loc, f"statsd address {b._address!r} must be an IP address and port")
        prefix = self.text(b._prefix, "statsd prefix", loc)
        if prefix and not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            self.error(loc, f"bad statsd prefix {prefix!r} (letters, digits, '_', '-', '.')")
        tags = self.flag(b._tags, "statsd tags", loc)
        return StatsdSink(address=address, prefix=prefix, tags=tags, location=loc)

    def runtime(self, builders: list[RuntimeBuilder]) -> tuple[tuple[str, RuntimeValue], ...]:
        values: dict[str, RuntimeValue] = {}
        for b in builders:
            loc = b._location
            raw = b._values
            if not isinstance(raw, tuple):
                self.error(loc, f"runtime() takes a dict of key: value, got {_kind(raw)}")
                continue
            for key, value in raw:
                if not isinstance(key, str) or not key:
                    self.error(loc, f"runtime key must be a non-empty string, got {key!r}")
                    continue
                if not isinstance(value, str | int | float | bool):
                    self.error(
                        loc,
                        f"runtime key {key!r}: value must be a string, number or bool, "
                        f"got {_kind(value)}",
                    )
                    continue
                if key in values:
                    self.error(loc, f"runtime key {key!r} is set twice")
                values[key] = value
        return tuple(sorted(values.items()))

    def overload(self, builders: list[OverloadBuilder]) -> OverloadManager | None:
        if not builders:
            return None
        first = builders[0]
        for extra in builders[1:]:
            self.error(
                extra._location, f"more than one overload (first defined{_at(first._location)})"
            )
        loc = first._location
        max_heap = None
        if first._max_heap is not None:
            try:
                max_heap = parse_size(first._max_heap, "overload max_heap")
            except BadValue as exc:
                self.error(loc, str(exc))
        max_cx = None
        if first._max_connections is not None:
            max_cx = self.count(
                first._max_connections, "overload max_connections", loc, low=1, high=10**9
            )
        if max_heap is None and max_cx is None:
            self.error(loc, "overload() needs a monitor: max_heap=... and/or max_connections=...")
        if not first._actions:
            self.error(
                loc,
                "overload() has no action: give a threshold for stop_accepting_requests, "
                "disable_http_keepalive or stop_accepting_connections",
            )
        actions: list[tuple[OverloadActionName, float]] = []
        for name, value in first._actions:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                self.error(loc, f"bad {name} threshold {value!r} (expected a pressure in (0, 1])")
                continue
            actions.append((cast(OverloadActionName, name), float(value)))
        interval = self.duration(
            first._refresh_interval, "overload refresh_interval", loc, positive=True
        )
        return OverloadManager(
            refresh_interval=interval,
            max_heap_bytes=max_heap,
            max_active_downstream_connections=max_cx,
            actions=tuple(actions),
            location=loc,
        )

    def demo_services(self, builders: list[DemoServiceBuilder]) -> tuple[DemoService, ...]:
        out: list[DemoService] = []
        seen: dict[str, Location | None] = {}
        for db in builders:
            loc = db._location
            name = self.name(db._name, "demo_service", loc)
            if name in seen:
                self.error(loc, f"duplicate demo_service {name!r} (first defined{_at(seen[name])})")
            seen.setdefault(name, loc)
            address = self.bind_address(db._address, f"demo_service {name!r}", loc)
            out.append(DemoService(name=name, address=address, location=loc))
        return tuple(out)

    def address_clashes(
        self,
        listeners: tuple[Listener, ...],
        admin: Admin | None,
        demos: tuple[DemoService, ...],
    ) -> None:
        """Two sockets on one port with overlapping hosts (port 0 never clashes)."""
        binds: list[tuple[str, SocketAddress, Location | None]] = [
            (f"listener {lis.name!r}", lis.address, lis.location) for lis in listeners
        ]
        if admin is not None:
            binds.append(("admin", admin.address, admin.location))
        binds.extend((f"demo_service {d.name!r}", d.address, d.location) for d in demos)
        for j, (what, addr, loc) in enumerate(binds):
            if addr.port == 0:
                continue
            for other, other_addr, other_loc in binds[:j]:
                if other_addr.port == addr.port and (
                    other_addr.host == addr.host
                    or {other_addr.host, addr.host} & _WILDCARD_ADDRESSES
                ):
                    self.error(
                        loc,
                        f"{what} address {addr} clashes with {other}"
                        f" ({other_addr}{_at(other_loc)})",
                    )
                    break
