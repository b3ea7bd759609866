"""The DSL's builder functions and immutable builder classes.

Rules of this file:

- Builders are frozen, slotted attrs classes. Every method returns a new
  builder made with `attrs.evolve`; the receiver never changes, so fragments
  can be shared and extended by recipes and users alike.
- Builders never raise for user mistakes. They store the raw values they were
  given, each with the `Location` of the user's call (`caller_location()`),
  and `_compile` validates everything at once.
- Locations are excluded from equality: two builders written on different
  lines with the same arguments are equal, like the config nodes they make.
- Builder state lives in private attributes so that an IDE completing a mesh
  file offers only the DSL methods. `_compile` (same package) reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar, cast

import attrs

from trioproxy.config import HttpFilterConfig, Location, Mesh
from trioproxy.config.graph import (
    AccessLogFilter,
    AndFilter,
    ClientCertDetail,
    ClusterType,
    CodecType,
    ComparisonOp,
    DnsLookupFamily,
    DurationFilter,
    ForwardClientCertDetails,
    Http1Parser,
    LbPolicy,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    RuntimeFilter,
    StatusCodeFilter,
)

from ._errors import caller_location
from ._tls_builders import (
    ChainOptions,
    SanSpec,
    TcpProxyBuilder,
    TlsBuilder,
    UpstreamTlsSpec,
    chain_options,
)
from ._values import Duration

__all__ = [
    "AdminBuilder",
    "ClusterBuilder",
    "DemoServiceBuilder",
    "DirectResponseBuilder",
    "EndpointBuilder",
    "HashPolicyBuilder",
    "HttpBuilder",
    "ListenerBuilder",
    "MatchBuilder",
    "MeshBuilder",
    "MeshItem",
    "RedirectBuilder",
    "RuntimeBuilder",
    "StatsdBuilder",
    "Target",
    "VhostBuilder",
    "WeightedBuilder",
    "admin",
    "and_filter",
    "cluster",
    "demo_service",
    "direct_response",
    "duration_filter",
    "endpoint",
    "hash_cookie",
    "hash_header",
    "hash_query",
    "hash_source_ip",
    "http",
    "listener",
    "mesh",
    "not_health_check_filter",
    "or_filter",
    "path",
    "prefix",
    "redirect",
    "regex",
    "response_flag_filter",
    "runtime",
    "runtime_filter",
    "statsd",
    "status_code_filter",
    "vhost",
    "weighted",
]

T = TypeVar("T")


@attrs.frozen
class Given(Generic[T]):
    """A raw value set by a builder method, with the location of that call."""

    value: T
    location: Location | None = attrs.field(eq=False, repr=False)


# --------------------------------------------------------------------------- matches


@attrs.frozen(kw_only=True)
class HeaderSpec:
    """A `.header(...)` call: the raw name and every matcher kind given to it."""

    name: object
    given: tuple[tuple[str, object], ...]
    invert: object = False
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class QuerySpec:
    """A `.query(...)` call: the raw name and every matcher kind given to it."""

    name: object
    given: tuple[tuple[str, object], ...]
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


def _kinds(**kinds: object) -> tuple[tuple[str, object], ...]:
    return tuple((kind, value) for kind, value in kinds.items() if value is not None)


@attrs.frozen(kw_only=True)
class MatchBuilder:
    """What a route matches: a path rule plus optional header and query rules.

    Made by `prefix()`, `path()` or `regex()`.
    """

    _kind: str
    _value: object
    _headers: tuple[HeaderSpec, ...] = ()
    _queries: tuple[QuerySpec, ...] = ()
    _case_sensitive: bool = True
    _grpc: bool = False
    _fraction: tuple[object, object, object, Location | None] | None = None
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    def runtime_fraction(
        self, numerator: int, *, denominator: int = 100, key: str = ""
    ) -> MatchBuilder:
        """Match only `numerator/denominator` of the requests (denominator
        100, 10000 or 1000000), Envoy's `runtime_fraction`. With `key`, an
        integer under that runtime key (`runtime({...})`, or
        `POST /runtime_modify?key=N`) replaces the numerator at request time:
        a canary can be dialled up without a restart."""
        spec = (numerator, denominator, key, caller_location())
        return attrs.evolve(self, fraction=spec)

    def grpc(self) -> MatchBuilder:
        """Only gRPC requests (content-type application/grpc*), as Envoy's `grpc: {}`."""
        return attrs.evolve(self, grpc=True)

    def header(
        self,
        name: str,
        *,
        exact: str | None = None,
        prefix: str | None = None,
        suffix: str | None = None,
        contains: str | None = None,
        regex: str | None = None,
        present: bool | None = None,
        invert: bool = False,
    ) -> MatchBuilder:
        """Also require a request header. Give at most one matcher kind;
        none means the header must be present. `present=False` means absent.
        Names are case-insensitive (stored lower-case); pseudo-headers such
        as ":method" are allowed."""
        spec = HeaderSpec(
            name=name,
            given=_kinds(
                exact=exact,
                prefix=prefix,
                suffix=suffix,
                contains=contains,
                regex=regex,
                present=present,
            ),
            invert=invert,
            location=caller_location(),
        )
        return attrs.evolve(self, headers=(*self._headers, spec))

    def query(
        self,
        name: str,
        *,
        exact: str | None = None,
        prefix: str | None = None,
        suffix: str | None = None,
        contains: str | None = None,
        regex: str | None = None,
        present: bool | None = None,
    ) -> MatchBuilder:
        """Also require a query parameter. At most one matcher kind; none means present."""
        spec = QuerySpec(
            name=name,
            given=_kinds(
                exact=exact,
                prefix=prefix,
                suffix=suffix,
                contains=contains,
                regex=regex,
                present=present,
            ),
            location=caller_location(),
        )
        return attrs.evolve(self, queries=(*self._queries, spec))

    def case_insensitive(self) -> MatchBuilder:
        """Match the path without regard to case (Envoy: case_sensitive false)."""
        return attrs.evolve(self, case_sensitive=False)


def grpc(service: str | None = None) -> MatchBuilder:
    """Match gRPC requests: all of them, or those of one fully qualified
    service (`grpc("helloworld.Greeter")` is `prefix("/helloworld.Greeter/").grpc()`)."""
    value = "/" if service is None else f"/{service}/"
    return MatchBuilder(kind="prefix", value=value, grpc=True, location=caller_location())


def prefix(p: str) -> MatchBuilder:
    """Match paths starting with `p` (which must start with "/")."""
    return MatchBuilder(kind="prefix", value=p, location=caller_location())


def path(p: str) -> MatchBuilder:
    """Match exactly the path `p` (which must start with "/"); the query is ignored."""
    return MatchBuilder(kind="path", value=p, location=caller_location())


def regex(r: str) -> MatchBuilder:
    """Match paths that the Python regular expression `r` matches as a whole."""
    return MatchBuilder(kind="regex", value=r, location=caller_location())


# --------------------------------------------------------------------------- clusters


@attrs.frozen(kw_only=True)
class EndpointBuilder:
    """One upstream host of a cluster. Made by `endpoint()`."""

    _address: object
    _weight: object = 1
    _priority: object = 0
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def endpoint(address: str, weight: int = 1, priority: int = 0) -> EndpointBuilder:
    """An upstream host "host:port" (explicit host) with a load-balancing weight
    and a priority (0, the default, is preferred; traffic spills to 1, 2, ...
    as the hosts of better priorities become unhealthy, as in Envoy)."""
    return EndpointBuilder(
        address=address, weight=weight, priority=priority, location=caller_location()
    )


@attrs.frozen(kw_only=True)
class ClusterBuilder:
    """A named group of upstream endpoints. Made by `cluster()`.

    A route may name a cluster by string, or use the builder itself, in
    which case `mesh()` includes the cluster automatically.
    """

    _name: object
    _endpoints: tuple[object, ...] = ()
    _lb: Given[object] = Given("round_robin", None)
    _lb_options: Given[dict[str, object]] | None = None
    _panic_threshold: Given[object] | None = None
    _connect_timeout: Given[object] = Given(5.0, None)
    _protocol: Given[object] = Given("http1", None)
    _http1_parser: Given[object] = Given("httptools", None)
    _tls: Given[object] | None = None
    _outlier: Given[dict[str, object]] | None = None
    _health_check: Given[dict[str, object]] | None = None
    _breakers: Given[dict[str, object]] | None = None
    # Discovery: the `type=` given (None: static, or eds with `.eds_file()`),
    # the DNS options given to `cluster()`, the `.eds_file()` call.
    _type: Given[object] | None = None
    _dns: Given[dict[str, object]] | None = None
    _eds: Given[dict[str, object]] | None = None
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def name(self) -> str:
        """The cluster's name, as routes refer to it."""
        return str(self._name)

    def endpoint(self, address: str, weight: int = 1, priority: int = 0) -> ClusterBuilder:
        """Add an upstream host "host:port" with a load-balancing weight and a
        priority (0 is preferred; see `endpoint()`)."""
        ep = EndpointBuilder(
            address=address, weight=weight, priority=priority, location=caller_location()
        )
        return attrs.evolve(self, endpoints=(*self._endpoints, ep))

    def lb(
        self,
        policy: LbPolicy,
        *,
        choice_count: int | None = None,
        active_request_bias: float | None = None,
        minimum_ring_size: int | None = None,
        maximum_ring_size: int | None = None,
        table_size: int | None = None,
    ) -> ClusterBuilder:
        """Set the load-balancing policy and its options (Envoy's defaults):

        - "round_robin", "random";
        - "least_request": `choice_count` (2), `active_request_bias` (1.0);
        - "ring_hash": `minimum_ring_size` (1024), `maximum_ring_size` (8M);
        - "maglev": `table_size` (65537, must be prime).

        The hash policies hash a request by a route's `hash_policy=`.
        """
        here = caller_location()
        options: dict[str, object] = {
            k: v
            for k, v in (
                ("choice_count", choice_count),
                ("active_request_bias", active_request_bias),
                ("minimum_ring_size", minimum_ring_size),
                ("maximum_ring_size", maximum_ring_size),
                ("table_size", table_size),
            )
            if v is not None
        }
        return attrs.evolve(self, lb=Given(policy, here), lb_options=Given(options, here))

    def healthy_panic_threshold(self, percent: float) -> ClusterBuilder:
        """Below this share of healthy hosts (Envoy: 50 %) a priority level
        balances across all its hosts, healthy or not; 0 disables panic."""
        return attrs.evolve(self, panic_threshold=Given(percent, caller_location()))

    def connect_timeout(self, d: Duration) -> ClusterBuilder:
        """Set the upstream connect timeout (seconds or a string like "250ms")."""
        return attrs.evolve(self, connect_timeout=Given(d, caller_location()))

    def health_check(
        self,
        path: str = "/",
        *,
        host: str | None = None,
        expected_statuses: Sequence[int] = (200,),
        interval: Duration = 5.0,
        timeout: Duration = 1.0,
        unhealthy_threshold: int = 2,
        healthy_threshold: int = 1,
        interval_jitter: Duration = 0,
        no_traffic_interval: Duration = 60.0,
    ) -> ClusterBuilder:
        """Actively check each host with `GET path` (Envoy's HTTP health check):
        `unhealthy_threshold` failures in a row take a host out of the
        balancer, `healthy_threshold` successes bring it back. A cluster has
        one health check: a later `*health_check()` call replaces this one."""
        options: dict[str, object] = {
            "kind": "http",
            "path": path,
            "host": host,
            "expected_statuses": tuple(expected_statuses),
            "interval": interval,
            "timeout": timeout,
            "unhealthy_threshold": unhealthy_threshold,
            "healthy_threshold": healthy_threshold,
            "interval_jitter": interval_jitter,
            "no_traffic_interval": no_traffic_interval,
        }
        return attrs.evolve(self, health_check=Given(options, caller_location()))

    def tcp_health_check(
        self,
        send: bytes = b"",
        expect: bytes | Sequence[bytes] = (),
        *,
        interval: Duration = 5.0,
        timeout: Duration = 1.0,
        unhealthy_threshold: int = 2,
        healthy_threshold: int = 1,
        interval_jitter: Duration = 0,
        no_traffic_interval: Duration = 60.0,
    ) -> ClusterBuilder:
        """Actively check each host over TCP (Envoy's tcp_health_check): connect,
        write `send`, and expect every block of `expect` back, in order,
        within `timeout` (bytes, not Envoy's hex). With neither, a successful
        connect is healthy. Thresholds and intervals as in `health_check`."""
        options: dict[str, object] = {
            "kind": "tcp",
            "send": send,
            "expect": expect,
            "interval": interval,
            "timeout": timeout,
            "unhealthy_threshold": unhealthy_threshold,
            "healthy_threshold": healthy_threshold,
            "interval_jitter": interval_jitter,
            "no_traffic_interval": no_traffic_interval,
        }
        return attrs.evolve(self, health_check=Given(options, caller_location()))

    def grpc_health_check(
        self,
        service: str = "",
        *,
        authority: str | None = None,
        interval: Duration = 5.0,
        timeout: Duration = 1.0,
        unhealthy_threshold: int = 2,
        healthy_threshold: int = 1,
        interval_jitter: Duration = 0,
        no_traffic_interval: Duration = 60.0,
    ) -> ClusterBuilder:
        """Actively check each host with `grpc.health.v1.Health/Check` (Envoy's
        grpc_health_check) for `service` ("" asks about the whole server);
        healthy iff the answer is SERVING. `authority` defaults to the
        cluster name. Needs an HTTP/2 cluster (`.http2()` or `.auto_http()`).
        Thresholds and intervals as in `health_check`."""
        options: dict[str, object] = {
            "kind": "grpc",
            "service": service,
            "authority": authority,
            "interval": interval,
            "timeout": timeout,
            "unhealthy_threshold": unhealthy_threshold,
            "healthy_threshold": healthy_threshold,
            "interval_jitter": interval_jitter,
            "no_traffic_interval": no_traffic_interval,
        }
        return attrs.evolve(self, health_check=Given(options, caller_location()))

    def outlier_detection(
        self,
        *,
        consecutive_5xx: int = 5,
        consecutive_gateway_failure: int = 5,
        enforcing_consecutive_5xx: int = 100,
        enforcing_consecutive_gateway_failure: int = 0,
        interval: Duration = 10.0,
        base_ejection_time: Duration = 30.0,
        max_ejection_time: Duration = 300.0,
        max_ejection_percent: int = 10,
        max_ejection_time_jitter: Duration = 0,
        enforcing_success_rate: int = 100,
        success_rate_minimum_hosts: int = 5,
        success_rate_request_volume: int = 100,
        success_rate_stdev_factor: int = 1900,
        enforcing_failure_percentage: int = 0,
        failure_percentage_threshold: int = 85,
        failure_percentage_minimum_hosts: int = 5,
        failure_percentage_request_volume: int = 50,
    ) -> ClusterBuilder:
        """Eject misbehaving hosts (Envoy's outlier_detection, its defaults):
        `consecutive_5xx` 5xx answers in a row (or connect failures/resets);
        every `interval`, hosts whose success rate is below
        mean - (`success_rate_stdev_factor` / 1000) x stdev of the hosts with
        `success_rate_request_volume` requests (if there are
        `success_rate_minimum_hosts` of them); and, if
        `enforcing_failure_percentage` is set (0 by default, as in Envoy),
        hosts failing `failure_percentage_threshold` % of their requests.
        Each ejection lasts `base_ejection_time` x the host's multiplier
        (which grows per ejection and decays while the host stays in; at
        most `max_ejection_time`, plus up to `max_ejection_time_jitter`);
        at most `max_ejection_percent` of the hosts (always at least one)."""
        options: dict[str, object] = {
            "consecutive_5xx": consecutive_5xx,
            "consecutive_gateway_failure": consecutive_gateway_failure,
            "enforcing_consecutive_5xx": enforcing_consecutive_5xx,
            "enforcing_consecutive_gateway_failure": enforcing_consecutive_gateway_failure,
            "interval": interval,
            "base_ejection_time": base_ejection_time,
            "max_ejection_time": max_ejection_time,
            "max_ejection_percent": max_ejection_percent,
            "max_ejection_time_jitter": max_ejection_time_jitter,
            "enforcing_success_rate": enforcing_success_rate,
            "success_rate_minimum_hosts": success_rate_minimum_hosts,
            "success_rate_request_volume": success_rate_request_volume,
            "success_rate_stdev_factor": success_rate_stdev_factor,
            "enforcing_failure_percentage": enforcing_failure_percentage,
            "failure_percentage_threshold": failure_percentage_threshold,
            "failure_percentage_minimum_hosts": failure_percentage_minimum_hosts,
            "failure_percentage_request_volume": failure_percentage_request_volume,
        }
        return attrs.evolve(self, outlier=Given(options, caller_location()))

    def circuit_breakers(
        self,
        *,
        max_connections: int = 1024,
        max_pending_requests: int = 1024,
        max_requests: int = 1024,
        max_retries: int = 3,
        max_connections_per_host: int | None = None,
        retry_budget_percent: float | None = None,
        min_retry_concurrency: int = 3,
    ) -> ClusterBuilder:
        """Envoy's circuit breakers (its defaults). Past `max_connections`
        (open or being opened), a request waits as pending; past
        `max_pending_requests` or `max_requests`, it gets an immediate 503
        with flag UO and `x-envoy-overloaded: true`. `max_retries` caps
        concurrent retries, unless `retry_budget_percent` is set: then
        retries may be that % of active requests, at least
        `min_retry_concurrency` (Envoy's retry_budget; 20 % is its default)."""
        options: dict[str, object] = {
            "max_connections": max_connections,
            "max_pending_requests": max_pending_requests,
            "max_requests": max_requests,
            "max_retries": max_retries,
            "max_connections_per_host": max_connections_per_host,
            "budget_percent": retry_budget_percent,
            "min_retry_concurrency": min_retry_concurrency,
        }
        return attrs.evolve(self, breakers=Given(options, caller_location()))

    def http2(self) -> ClusterBuilder:
        """Speak HTTP/2 (h2c, prior knowledge) to this cluster's endpoints."""
        return attrs.evolve(self, protocol=Given("http2", caller_location()))

    def http1(self, *, parser: Http1Parser | None = None) -> ClusterBuilder:
        """Speak HTTP/1.1 to this cluster's endpoints (the default).

        `parser` picks who reads response heads: "httptools" (the default)
        or "h11" (as `http(http1_parser=...)` does for requests); None keeps
        the current choice.
        """
        here = caller_location()
        out = attrs.evolve(self, protocol=Given("http1", here))
        if parser is not None:
            out = attrs.evolve(out, http1_parser=Given(parser, here))
        return out

    def auto_http(self) -> ClusterBuilder:
        """Speak HTTP/2 or HTTP/1.1 per connection, as the upstream picks by
        TLS ALPN (Envoy's auto_config). Needs `.tls(...)`."""
        return attrs.evolve(self, protocol=Given("auto", caller_location()))

    def tls(
        self,
        sni: str | None = None,
        *,
        ca: str | None = None,
        san: Sequence[SanSpec] = (),
        verify_hostname: bool = True,
        cert: str | None = None,
        key: str | None = None,
        alpn: Sequence[str] | None = None,
        min_version: str = "1.2",
        max_version: str = "1.3",
        watch_interval: Duration = 5.0,
    ) -> ClusterBuilder:
        """Originate TLS to this cluster's endpoints.

        `sni` defaults to the endpoint's host when it is a DNS name. With `ca`
        the upstream's certificate is verified: against `san` matchers if
        given ("dns:api.internal", "uri:spiffe://...", or `san(...)`), else
        its name against the SNI (`verify_hostname`). Without `ca` nothing is
        verified (as in Envoy). `cert`/`key` present a client certificate
        (mTLS). `alpn` defaults to the cluster's protocol: "h2" for `.http2()`
        (which then must be negotiated), "h2,http/1.1" for `.auto_http()`,
        "http/1.1" otherwise. Relative paths are relative to the mesh file.
        """
        spec = UpstreamTlsSpec(
            sni=sni,
            ca=ca,
            san=tuple(san) if not isinstance(san, str) else (san,),
            verify_hostname=verify_hostname,
            cert=cert,
            key=key,
            alpn=None if alpn is None else (alpn,) if isinstance(alpn, str) else tuple(alpn),
            min_version=min_version,
            max_version=max_version,
            watch_interval=watch_interval,
            location=caller_location(),
        )
        return attrs.evolve(self, tls=Given(spec, spec.location))

    def eds_file(self, path: str, *, watch_interval: Duration = 1.0) -> ClusterBuilder:
        """Take the endpoints from an Envoy ClusterLoadAssignment file (JSON,
        or YAML for .yaml/.yml; Envoy's filesystem EDS), re-read whenever it
        changes (checked every `watch_interval`); a malformed file is
        rejected and the last good endpoints stay. The cluster's type is
        then "eds" and it lists no endpoints of its own. A relative path is
        relative to the mesh file."""
        options: dict[str, object] = {"path": path, "watch_interval": watch_interval}
        return attrs.evolve(self, eds=Given(options, caller_location()))


def cluster(
    name: str,
    *endpoints: str | EndpointBuilder,
    lb: LbPolicy = "round_robin",
    connect_timeout: Duration = 5.0,
    type: ClusterType | None = None,
    dns_refresh_rate: Duration | None = None,
    dns_failure_refresh_rate: Duration | tuple[Duration, Duration] | None = None,
    respect_dns_ttl: bool | None = None,
    dns_lookup_family: DnsLookupFamily | None = None,
    dns_resolvers: Sequence[str] | None = None,
) -> ClusterBuilder:
    """A cluster of upstream endpoints ("host:port" strings or `endpoint()`s).

    `lb` is "round_robin", "least_request", "random", "ring_hash" or
    "maglev" (options with `.lb(...)`); `connect_timeout` defaults to
    Envoy's 5 s.

    `type` is Envoy's discovery type: "static" (the default; endpoints are
    IP addresses), "strict_dns" (every address each endpoint's name resolves
    to is a host), "logical_dns" (one endpoint; new connections go to the
    first address it resolves to) or "eds" (see `.eds_file()`). DNS options,
    with Envoy's names and defaults: `dns_refresh_rate` (5 s),
    `dns_failure_refresh_rate` (a base, or (base, max), for a jittered
    exponential back-off after failed lookups; default: the refresh rate),
    `respect_dns_ttl` (False: True refreshes after the records' TTL),
    `dns_lookup_family` ("AUTO": IPv6 then IPv4, "V4_ONLY", "V6_ONLY",
    "V4_PREFERRED", "ALL") and `dns_resolvers` (nameservers "ip:port";
    default: the system's).
    """
    here = caller_location()
    eps = tuple(
        EndpointBuilder(address=ep, location=here) if isinstance(ep, str) else ep
        for ep in endpoints
    )
    dns_given: dict[str, object] = {
        k: v
        for k, v in (
            ("dns_refresh_rate", dns_refresh_rate),
            ("dns_failure_refresh_rate", dns_failure_refresh_rate),
            ("respect_dns_ttl", respect_dns_ttl),
            ("dns_lookup_family", dns_lookup_family),
            ("dns_resolvers", dns_resolvers),
        )
        if v is not None
    }
    return ClusterBuilder(
        name=name,
        endpoints=eps,
        lb=Given(lb, here),
        connect_timeout=Given(connect_timeout, here),
        type=None if type is None else Given(type, here),
        dns=Given(dns_given, here) if dns_given else None,
        location=here,
    )


# --------------------------------------------------------------------------- route targets


@attrs.frozen(kw_only=True)
class WeightedBuilder:
    """Split traffic over clusters by weight. Made by `weighted()`."""

    _entries: tuple[object, ...]
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def weighted(*entries: tuple[str | ClusterBuilder, int]) -> WeightedBuilder:
    """A route target sending each request to one of several clusters by weight,
    e.g. `weighted(("v1", 80), ("v2", 20))`. Weights are positive integers."""
    return WeightedBuilder(entries=entries, location=caller_location())


@attrs.frozen(kw_only=True)
class RetryBuilder:
    """A retry policy for a route's `retry=` option. Made by `retry()`."""

    _on: object
    _num_retries: object = 1
    _per_try_timeout: object = None
    _status_codes: object = ()
    _max_replay_bytes: object = 1024 * 1024
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def retry(
    on: str,
    *,
    num_retries: int = 1,
    per_try_timeout: Duration | None = None,
    status_codes: tuple[int, ...] = (),
    max_replay_bytes: int = 1024 * 1024,
) -> RetryBuilder:
    """Retry a route's failed tries (Envoy's retry_policy).

    `on` lists conditions, comma-separated: 5xx, gateway-error, reset,
    connect-failure, refused-stream, retriable-4xx, retriable-status-codes
    (with `status_codes`), and for gRPC cancelled, deadline-exceeded,
    resource-exhausted, unavailable, internal. `num_retries` is the number of
    retries after the first try (Envoy's default 1). `per_try_timeout` bounds
    each try (the route timeout still covers them all). Request bodies up to
    `max_replay_bytes` are kept for replay; a larger body is not retried.
    """
    return RetryBuilder(
        on=on,
        num_retries=num_retries,
        per_try_timeout=per_try_timeout,
        status_codes=status_codes,
        max_replay_bytes=max_replay_bytes,
        location=caller_location(),
    )


@attrs.frozen(kw_only=True)
class HedgeBuilder:
    """A hedge policy for a route's `hedge=` option. Made by `hedge()`."""

    _initial: object = 1
    _delay: object = None
    _on_per_try_timeout: object = False
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def hedge(
    *,
    initial: int = 1,
    delay: Duration | None = None,
    on_per_try_timeout: bool = False,
) -> HedgeBuilder:
    """Overlapping tries for a route (Envoy's hedge_policy, plus racing).

    `on_per_try_timeout` is Envoy's hedge_on_per_try_timeout: when a try's
    per-try timeout fires (the route's `retry(per_try_timeout=...)`, which it
    needs), the try goes on and a retry starts beside it; the first good
    response wins. `initial` tries race from the start: all at once, or with
    `delay` one more every `delay` while no response has arrived, on
    different hosts when possible. The losers are reset. The request body is
    buffered for it (up to the retry policy's `max_replay_bytes`, 1 MiB);
    a larger body gets one unhedged try.
    """
    return HedgeBuilder(
        initial=initial,
        delay=delay,
        on_per_try_timeout=on_per_try_timeout,
        location=caller_location(),
    )


@attrs.frozen(kw_only=True)
class HashPolicyBuilder:
    """One entry of a route's `hash_policy=`. Made by `hash_header()`,
    `hash_cookie()`, `hash_source_ip()` or `hash_query()`."""

    _kind: str
    _name: object = None
    _ttl: object = None
    _path: object = None
    _terminal: object = False
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def hash_header(name: str, *, terminal: bool = False) -> HashPolicyBuilder:
    """Hash a request header's value (all values, sorted, if repeated).
    `terminal` stops at this policy when it yields a hash."""
    return HashPolicyBuilder(
        kind="header", name=name, terminal=terminal, location=caller_location()
    )


def hash_cookie(
    name: str,
    *,
    ttl: Duration | None = None,
    path: str | None = None,
    terminal: bool = False,
) -> HashPolicyBuilder:
    """Hash a cookie's value. With `ttl`, a request without the cookie gets
    one: the proxy makes a value, hashes it and adds
    `Set-Cookie: name="value"; Max-Age=ttl; Path=path; HttpOnly` to the
    response (ttl 0: a session cookie without Max-Age), as Envoy does."""
    return HashPolicyBuilder(
        kind="cookie", name=name, ttl=ttl, path=path, terminal=terminal, location=caller_location()
    )


def hash_source_ip(*, terminal: bool = False) -> HashPolicyBuilder:
    """Hash the client connection's IP address."""
    return HashPolicyBuilder(kind="source_ip", terminal=terminal, location=caller_location())


def hash_query(name: str, *, terminal: bool = False) -> HashPolicyBuilder:
    """Hash a query parameter's first value (not percent-decoded)."""
    return HashPolicyBuilder(
        kind="query_parameter", name=name, terminal=terminal, location=caller_location()
    )


@attrs.frozen(kw_only=True)
class RedirectBuilder:
    """Answer with an HTTP redirect. Made by `redirect()`."""

    _scheme: object = None
    _host: object = None
    _port: object = None
    _path: object = None
    _prefix_rewrite: object = None
    _code: object = 301
    _strip_query: object = False
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def redirect(
    *,
    scheme: str | None = None,
    host: str | None = None,
    port: int | None = None,
    path: str | None = None,
    prefix_rewrite: str | None = None,
    code: int = 301,
    strip_query: bool = False,
) -> RedirectBuilder:
    """A route target answering with a redirect; unset parts keep the request's.

    `code` is one of 301, 302, 303, 307, 308. `path` and `prefix_rewrite`
    are mutually exclusive.
    """
    return RedirectBuilder(
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        prefix_rewrite=prefix_rewrite,
        code=code,
        strip_query=strip_query,
        location=caller_location(),
    )


@attrs.frozen(kw_only=True)
class DirectResponseBuilder:
    """Answer locally with a fixed response. Made by `direct_response()`."""

    _status: object
    _body: object = ""
    _content_type: object = "text/plain"
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def direct_response(
    status: int, body: str | bytes = "", content_type: str = "text/plain"
) -> DirectResponseBuilder:
    """A route target answering locally with `status` (100..599) and `body`
    (a str is sent as UTF-8)."""
    return DirectResponseBuilder(
        status=status, body=body, content_type=content_type, location=caller_location()
    )


Target = ClusterBuilder | str | WeightedBuilder | RedirectBuilder | DirectResponseBuilder
"""What a route does: forward to a cluster (builder or name), split by weight,
redirect, or answer directly."""


# --------------------------------------------------------------------------- vhosts, http


@attrs.frozen(kw_only=True)
class RouteSpec:
    """A `.route(...)` call, raw."""

    match: object
    target: object
    name: object = None
    timeout: object = None
    prefix_rewrite: object = None
    host_rewrite: object = None
    upgrades: object = None
    retry: object = None
    hedge: object = None
    hash_policy: object = None
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


def _route_spec(
    match: object,
    target: object,
    name: object,
    timeout: object,
    prefix_rewrite: object,
    host_rewrite: object,
    upgrades: object = None,
    retry: object = None,
    hedge: object = None,
    hash_policy: object = None,
) -> RouteSpec:
    if isinstance(hash_policy, list):
        hash_policy = tuple(hash_policy)  # builders hold tuples, never lists
    return RouteSpec(
        match=match,
        target=target,
        name=name,
        timeout=timeout,
        prefix_rewrite=prefix_rewrite,
        host_rewrite=host_rewrite,
        upgrades=upgrades,
        retry=retry,
        hedge=hedge,
        hash_policy=hash_policy,
        location=caller_location(),
    )


@attrs.frozen(kw_only=True)
class VhostBuilder:
    """A virtual host: a set of domains and the routes tried in order for them."""

    _name: object
    _domains: tuple[object, ...] = ("*",)
    _routes: tuple[RouteSpec, ...] = ()
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    def route(
        self,
        match: MatchBuilder,
        target: Target,
        *,
        name: str | None = None,
        timeout: Duration | None = None,
        prefix_rewrite: str | None = None,
        host_rewrite: str | None = None,
        upgrades: bool | None = None,
        retry: RetryBuilder | None = None,
        hedge: HedgeBuilder | None = None,
        hash_policy: Sequence[HashPolicyBuilder] | None = None,
    ) -> VhostBuilder:
        """Add a route; routes are tried in order and the first match wins.

        `timeout` (default 15 s, 0 = none), `prefix_rewrite`, `host_rewrite` and
        `upgrades` (WebSocket upgrades allowed, default True), `retry`
        (a `retry(...)` policy), `hedge` (a `hedge(...)` policy) and
        `hash_policy` (a list of `hash_header()`,
        `hash_cookie()`, `hash_source_ip()`, `hash_query()`, used by
        ring_hash and maglev clusters) apply only to
        routes forwarding to a cluster or `weighted()` clusters.
        `name` defaults to "<vhost>/<index>".
        """
        spec = _route_spec(
            match,
            target,
            name,
            timeout,
            prefix_rewrite,
            host_rewrite,
            upgrades,
            retry,
            hedge,
            hash_policy,
        )
        return attrs.evolve(self, routes=(*self._routes, spec))


def vhost(name: str, *domains: str) -> VhostBuilder:
    """A virtual host serving `domains` (default: every domain, "*").

    A domain may hold one wildcard "*" as its first or last character,
    e.g. "*.example.com" or "example.*".
    """
    return VhostBuilder(name=name, domains=domains or ("*",), location=caller_location())


DEFAULT_VHOST = "default"


@attrs.frozen(kw_only=True)
class AccessLogSpec:
    """An `.access_log(...)` call, raw."""

    path: object
    format: object
    json_format: object = None
    filter: object = None
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class TracingSpec:
    """An `http(...).tracing(...)` call, raw."""

    provider: object
    collector: object
    options: tuple[tuple[str, object], ...] = ()
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class HealthCheckFilterSpec:
    """An `http(...).health_check(...)` call, raw."""

    path: object
    pass_through: object
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class HttpBuilder:
    """An HTTP connection manager: a listener's filter chain. Made by `http()`."""

    _stat_prefix: object = None
    _codec: object = "auto"
    _server_name: object = "trioproxy"
    _request_headers_timeout: object = 10.0
    _idle_timeout: object = 3600.0
    _stream_idle_timeout: object = 300.0
    _request_timeout: object = 0
    _max_request_headers_kb: object = 60
    _max_headers_count: object = 100
    _http1_parser: object = "httptools"
    _generate_request_id: object = True
    _preserve_external_request_id: object = False
    _tracing: TracingSpec | None = None
    _use_remote_address: object = True
    _allow_connect: object = False
    _forward_client_cert: object = "sanitize_set"
    _client_cert_details: object = ("subject", "uri", "dns")
    _access_logs: tuple[AccessLogSpec, ...] = ()
    _filters: tuple[Given[object], ...] = ()
    _vhosts: tuple[Given[object], ...] = ()
    _h2_limits: tuple[tuple[str, object], ...] = ()
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    def http2_limits(
        self,
        *,
        max_outbound_frames: int = 10000,
        max_outbound_control_frames: int = 1000,
        max_consecutive_inbound_frames_with_empty_payload: int = 1,
        max_inbound_priority_frames_per_stream: int = 100,
        max_inbound_window_update_frames_per_data_frame_sent: int = 10,
        premature_reset_total_stream_count: int = 500,
        premature_reset_min_stream_lifetime: Duration = 1.0,
    ) -> HttpBuilder:
        """HTTP/2 flood limits, with Envoy's names and defaults
        (http2_protocol_options; the rapid-reset budget is Envoy's
        `overload.premature_reset_*` runtime keys, 0 streams disables it).
        Crossing one closes the connection with GOAWAY ENHANCE_YOUR_CALM;
        see docs/security.md."""
        limits = (
            ("max_outbound_frames", max_outbound_frames),
            ("max_outbound_control_frames", max_outbound_control_frames),
            (
                "max_consecutive_inbound_frames_with_empty_payload",
                max_consecutive_inbound_frames_with_empty_payload,
            ),
            ("max_inbound_priority_frames_per_stream", max_inbound_priority_frames_per_stream),
            (
                "max_inbound_window_update_frames_per_data_frame_sent",
                max_inbound_window_update_frames_per_data_frame_sent,
            ),
            ("premature_reset_total_stream_count", premature_reset_total_stream_count),
            ("premature_reset_min_stream_lifetime", premature_reset_min_stream_lifetime),
        )
        return attrs.evolve(self, h2_limits=limits)

    def access_log(
        self,
        path: str = "-",
        format: str | None = None,
        *,
        json_format: Mapping[str, object] | None = None,
        filter: AccessLogFilter | None = None,
    ) -> HttpBuilder:
        """Log each request to `path` ("-" is stdout, or "/dev/stderr", or a file)
        with an Envoy format string (default: Envoy's default format), or
        Envoy's `json_format` dictionary (one JSON object per line; a value
        that is one operator keeps its type, unset values are null). `filter`
        (`status_code_filter(...)`, `and_filter(...)`, ...) picks the requests
        logged. Format errors are compile errors at this call's line."""
        spec = AccessLogSpec(
            path=path,
            format=format,
            json_format=json_format,
            filter=filter,
            location=caller_location(),
        )
        return attrs.evolve(self, access_logs=(*self._access_logs, spec))

    def tracing(
        self,
        provider: str = "zipkin",
        collector: str | ClusterBuilder = "127.0.0.1:9411",
        *,
        service_name: str = "trioproxy",
        collector_path: str | None = None,
        random_sampling: float = 100.0,
        client_sampling: float = 100.0,
        overall_sampling: float = 100.0,
        propagation: str | Sequence[str] | None = None,
        shared_span_context: bool = True,
        max_queue_spans: int = 4096,
        min_flush_spans: int = 5,
        flush_interval: Duration = 5.0,
        collector_timeout: Duration = 5.0,
        operation_name: str = "ingress",
    ) -> HttpBuilder:
        """Trace requests (Envoy's HCM `tracing`) and report spans to a
        collector: `collector` is a cluster (`cluster(...)` or its name, as
        Envoy's `collector_cluster`) or an address "ip:port".

        `provider` is "zipkin" (Zipkin v2 JSON to `/api/v2/spans`, B3
        headers) or "opentelemetry" (OTLP/HTTP JSON to `/v1/traces`, W3C
        `traceparent`). `propagation` overrides the header formats, any of
        "w3c", "b3", "b3-single" (read in that order, all written).
        Sampling values are percentages (Envoy's, all 100 by default):
        `random_sampling`, `client_sampling` (requests with
        `x-client-trace-id`) and `overall_sampling`. Spans are sent in
        batches every `flush_interval` or at `min_flush_spans`; at most
        `max_queue_spans` wait, more are dropped and counted.
        """
        options = (
            ("service_name", service_name),
            ("collector_path", collector_path),
            ("random_sampling", random_sampling),
            ("client_sampling", client_sampling),
            ("overall_sampling", overall_sampling),
            ("propagation", propagation),
            ("shared_span_context", shared_span_context),
            ("max_queue_spans", max_queue_spans),
            ("min_flush_spans", min_flush_spans),
            ("flush_interval", flush_interval),
            ("collector_timeout", collector_timeout),
            ("operation_name", operation_name),
        )
        spec = TracingSpec(
            provider=provider, collector=collector, options=options, location=caller_location()
        )
        return attrs.evolve(self, tracing=spec)

    def filter(self, cfg: HttpFilterConfig) -> HttpBuilder:
        """Append an HTTP filter (its config object); filters run in order."""
        return attrs.evolve(self, filters=(*self._filters, Given(cfg, caller_location())))

    def vhost(self, vh: VhostBuilder) -> HttpBuilder:
        """Add a virtual host."""
        return attrs.evolve(self, vhosts=(*self._vhosts, Given(vh, caller_location())))

    def health_check(self, path: str = "/healthz", *, pass_through: bool = False) -> HttpBuilder:
        """Answer health checks for `path` here (Envoy's health_check filter,
        matching `:path` exactly): 200, or 503 after the admin's
        `POST /healthcheck/fail` (until `POST /healthcheck/ok`). With
        `pass_through`, healthy checks go on to the routes instead. It runs
        where it is added among the `.filter(...)`s."""
        spec = HealthCheckFilterSpec(
            path=path, pass_through=pass_through, location=caller_location()
        )
        return attrs.evolve(self, filters=(*self._filters, Given(spec, spec.location)))

    def route(
        self,
        match: MatchBuilder,
        target: Target,
        *,
        name: str | None = None,
        timeout: Duration | None = None,
        prefix_rewrite: str | None = None,
        host_rewrite: str | None = None,
        upgrades: bool | None = None,
        retry: RetryBuilder | None = None,
        hedge: HedgeBuilder | None = None,
        hash_policy: Sequence[HashPolicyBuilder] | None = None,
    ) -> HttpBuilder:
        """Add a route to the virtual host "default" (domains "*"), creating it
        if needed. See `VhostBuilder.route` for the options."""
        spec = _route_spec(
            match,
            target,
            name,
            timeout,
            prefix_rewrite,
            host_rewrite,
            upgrades,
            retry,
            hedge,
            hash_policy,
        )
        vhosts = list(self._vhosts)
        for i, given in enumerate(vhosts):
            vh = given.value
            if isinstance(vh, VhostBuilder) and vh._name == DEFAULT_VHOST:
                vhosts[i] = Given(attrs.evolve(vh, routes=(*vh._routes, spec)), given.location)
                break
        else:
            default = VhostBuilder(name=DEFAULT_VHOST, routes=(spec,), location=spec.location)
            vhosts.append(Given(default, spec.location))
        return attrs.evolve(self, vhosts=tuple(vhosts))


def http(
    stat_prefix: str | None = None,
    *,
    codec: CodecType = "auto",
    server_name: str = "trioproxy",
    request_headers_timeout: Duration = 10.0,
    idle_timeout: Duration = 3600.0,
    stream_idle_timeout: Duration = 300.0,
    request_timeout: Duration = 0,
    max_request_headers_kb: int = 60,
    max_headers_count: int = 100,
    http1_parser: Http1Parser = "httptools",
    generate_request_id: bool = True,
    preserve_external_request_id: bool = False,
    use_remote_address: bool = True,
    allow_connect: bool = False,
    forward_client_cert: ForwardClientCertDetails = "sanitize_set",
    client_cert_details: Sequence[ClientCertDetail] = ("subject", "uri", "dns"),
) -> HttpBuilder:
    """An HTTP connection manager filter chain.

    `stat_prefix` defaults to the listener's name; `codec` is "auto", "http1"
    or "http2". Durations are seconds or strings like "250ms"; 0 disables.
    Defaults follow Envoy except `request_headers_timeout` (10 s),
    `server_name` ("trioproxy") and `forward_client_cert`.

    `forward_client_cert` is Envoy's forward_client_cert_details for the
    x-forwarded-client-cert header: "sanitize", "forward_only",
    "append_forward", "sanitize_set" (our default: set for mTLS clients,
    removed otherwise) or "always_forward_only"; `client_cert_details`
    picks from "subject", "cert", "chain", "dns", "uri" (Hash and By are
    always included).

    `http1_parser` picks who reads HTTP/1.1 request heads: "httptools"
    (llhttp, the default) or "h11"; both give the same requests and the
    same errors (h11 stays the reference; see docs/decisions.md).

    `generate_request_id` adds an `x-request-id` (a UUID4) to requests
    without one; an external client's (not from loopback or a private
    address) is replaced unless `preserve_external_request_id`, as in Envoy.

    `allow_connect` accepts WebSocket over HTTP/2 (RFC 8441 extended
    CONNECT), bridged to an HTTP/1.1 upgrade towards the upstream.
    """
    return HttpBuilder(
        stat_prefix=stat_prefix,
        codec=codec,
        server_name=server_name,
        request_headers_timeout=request_headers_timeout,
        idle_timeout=idle_timeout,
        stream_idle_timeout=stream_idle_timeout,
        request_timeout=request_timeout,
        max_request_headers_kb=max_request_headers_kb,
        max_headers_count=max_headers_count,
        http1_parser=http1_parser,
        generate_request_id=generate_request_id,
        preserve_external_request_id=preserve_external_request_id,
        use_remote_address=use_remote_address,
        allow_connect=allow_connect,
        forward_client_cert=forward_client_cert,
        client_cert_details=(
            (client_cert_details,)
            if isinstance(client_cert_details, str)
            else tuple(client_cert_details)
        ),
        location=caller_location(),
    )


# --------------------------------------------------------------------------- listeners


@attrs.frozen(kw_only=True)
class ListenerBuilder:
    """A listening socket and its filter chains. Made by `listener()`."""

    _name: object
    _address: object
    _chains: tuple[Given[object], ...] = ()
    _stat_prefix: Given[object] | None = None
    # The TLS context and match of each chain, index for index with `_chains`.
    _chain_options: tuple[ChainOptions, ...] = ()
    _tls_inspector: Location | None = attrs.field(default=None, eq=False, repr=False)
    _inspect: bool = False
    _listener_filters_timeout: Given[object] | None = None
    _max_connections: Given[object] | None = None
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def name(self) -> str:
        """The listener's name."""
        return str(self._name)

    def chain(
        self,
        chain: HttpBuilder | TcpProxyBuilder,
        *,
        tls: TlsBuilder | None = None,
        server_names: Sequence[str] = (),
        alpn: Sequence[str] = (),
        source: Sequence[str] = (),
        transport: str | None = None,
        destination_port: int | None = None,
        name: str | None = None,
        handshake_timeout: Duration | None = None,
    ) -> ListenerBuilder:
        """Add a filter chain: `http(...)` or `tcp_proxy(...)`.

        `tls=tls(...)` terminates TLS on it. The rest is Envoy's
        filter_chain_match, most specific match wins: `server_names` (SNI,
        "*.example.com" wildcards), `alpn` (protocols the client offers),
        `source` (client CIDRs), `transport` ("tls" or "raw_buffer") and
        `destination_port`. Matching on SNI, ALPN or transport, or mixing TLS
        and plaintext chains, adds the tls_inspector listener filter.
        `handshake_timeout` bounds the TLS handshake (default 15 s).
        """
        here = caller_location()
        opts = chain_options(
            tls=tls,
            server_names=server_names,
            transport=transport,
            alpn=alpn,
            source=source,
            destination_port=destination_port,
            name=name,
            handshake_timeout=handshake_timeout,
            location=here,
        )
        return attrs.evolve(
            self,
            chains=(*self._chains, Given(chain, here)),
            chain_options=(*self._options(), opts),
        )

    def _options(self) -> tuple[ChainOptions, ...]:
        """`_chain_options`, padded to one per chain."""
        missing = len(self._chains) - len(self._chain_options)
        return self._chain_options + (ChainOptions(),) * max(0, missing)

    def tls_inspector(self) -> ListenerBuilder:
        """Add Envoy's tls_inspector listener filter explicitly (it is added
        by itself when a chain matches on SNI, ALPN or transport)."""
        return attrs.evolve(self, inspect=True, tls_inspector=caller_location())

    def listener_filters_timeout(self, d: Duration) -> ListenerBuilder:
        """Time allowed to the listener filters, e.g. reading the ClientHello
        (Envoy: 15 s; 0 = no limit)."""
        return attrs.evolve(self, listener_filters_timeout=Given(d, caller_location()))

    def _with_last_chain(self, update: HttpBuilder) -> ListenerBuilder:
        return attrs.evolve(
            self, chains=(*self._chains[:-1], Given(update, self._chains[-1].location))
        )

    def _last_http(self) -> tuple[ListenerBuilder, HttpBuilder]:
        """The last chain, first adding `http()` if there is none usable."""
        if self._chains and isinstance(self._chains[-1].value, HttpBuilder):
            return self, self._chains[-1].value
        here = caller_location()
        implicit = HttpBuilder(location=here)
        return attrs.evolve(
            self,
            chains=(*self._chains, Given(implicit, here)),
            chain_options=(*self._options(), ChainOptions(location=here)),
        ), implicit

    def route(
        self,
        match: MatchBuilder,
        target: Target,
        *,
        name: str | None = None,
        timeout: Duration | None = None,
        prefix_rewrite: str | None = None,
        host_rewrite: str | None = None,
        upgrades: bool | None = None,
        retry: RetryBuilder | None = None,
        hedge: HedgeBuilder | None = None,
        hash_policy: Sequence[HashPolicyBuilder] | None = None,
    ) -> ListenerBuilder:
        """Add a route to the "default" virtual host of the last chain (adding
        `http()` first if the listener has no chain). See `VhostBuilder.route`."""
        this, last = self._last_http()
        updated = last.route(
            match,
            target,
            name=name,
            timeout=timeout,
            prefix_rewrite=prefix_rewrite,
            host_rewrite=host_rewrite,
            upgrades=upgrades,
            retry=retry,
            hedge=hedge,
            hash_policy=hash_policy,
        )
        return this._with_last_chain(updated)

    def vhost(self, vh: VhostBuilder) -> ListenerBuilder:
        """Add a virtual host to the last chain (adding `http()` first if needed)."""
        this, last = self._last_http()
        return this._with_last_chain(last.vhost(vh))

    def stat_prefix(self, s: str) -> ListenerBuilder:
        """Name the listener's stats `listener.<s>.*` instead of by address."""
        return attrs.evolve(self, stat_prefix=Given(s, caller_location()))

    def max_connections(self, n: int) -> ListenerBuilder:
        """Close connections past `n` open ones at accept, counted in
        `listener.<name>.downstream_cx_overflow` (default: no limit)."""
        return attrs.evolve(self, max_connections=Given(n, caller_location()))


def listener(name: str, address: str) -> ListenerBuilder:
    """A listener on `address`: ":8000" (all IPv4 interfaces), "127.0.0.1:8000",
    "[::1]:8000" or "localhost:8000". Port 0 picks a free port."""
    return ListenerBuilder(name=name, address=address, location=caller_location())


# --------------------------------------------------------------------------- top level


@attrs.frozen(kw_only=True)
class AdminBuilder:
    """The admin server's address (and token). Made by `admin()`."""

    _address: object
    _token: object = attrs.field(default=None, repr=False)
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def admin(address: str = "127.0.0.1:8001", *, token: str | None = None) -> AdminBuilder:
    """The admin server (/stats, /clusters, /config_dump, ...) on `address`.

    With `token`, every request must carry `Authorization: Bearer <token>`
    (else 401). Binding anywhere but loopback requires a token. Read it from
    the environment rather than writing it in the mesh file, e.g.
    `admin(":9901", token=os.environ["TRIOPROXY_ADMIN_TOKEN"])`.
    """
    return AdminBuilder(address=address, token=token, location=caller_location())


@attrs.frozen(kw_only=True)
class StatsdBuilder:
    """A StatsD stats sink. Made by `statsd()`."""

    _address: object
    _prefix: object = "envoy"
    _tags: object = False
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def statsd(
    address: str = "127.0.0.1:8125", *, prefix: str = "envoy", tags: bool = False
) -> StatsdBuilder:
    """Send stats over UDP to a StatsD server at `address` (an IP and port)
    every stats flush (5 s): counters as deltas, gauges, timers. `tags=True`
    sends DogStatsD tags (`|#envoy.cluster_name:x`) with Envoy's tag-extracted
    names instead of plain dotted names."""
    return StatsdBuilder(address=address, prefix=prefix, tags=tags, location=caller_location())


RuntimeScalar = str | int | float | bool


@attrs.frozen(kw_only=True)
class RuntimeBuilder:
    """Runtime keys for the static layer. Made by `runtime()`."""

    _values: object
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def runtime(values: Mapping[str, RuntimeScalar]) -> RuntimeBuilder:
    """Envoy's runtime static layer: feature flags and percentages read at
    request time (e.g. a route's `runtime_fraction` key). The admin's
    `POST /runtime_modify?key=value` overrides them without a restart."""
    frozen = tuple(values.items()) if isinstance(values, Mapping) else values
    return RuntimeBuilder(values=frozen, location=caller_location())


@attrs.frozen(kw_only=True)
class DemoServiceBuilder:
    """A built-in demo upstream. Made by `demo_service()`."""

    _name: object
    _address: object
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def demo_service(name: str, address: str) -> DemoServiceBuilder:
    """A small built-in HTTP upstream that the runtime starts on `address`;
    it answers every request with a greeting naming itself."""
    return DemoServiceBuilder(name=name, address=address, location=caller_location())


@attrs.frozen(kw_only=True)
class OverloadBuilder:
    """The overload manager. Made by `overload()`."""

    _max_heap: object
    _max_connections: object
    _actions: tuple[tuple[str, object], ...]
    _refresh_interval: object
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def overload(
    *,
    max_heap: int | str | None = None,
    max_connections: int | None = None,
    stop_accepting_requests: float | None = None,
    disable_http_keepalive: float | None = None,
    stop_accepting_connections: float | None = None,
    refresh_interval: Duration = 0.25,
) -> OverloadBuilder:
    """Envoy's overload manager.

    Monitors: `max_heap` (bytes or '512MiB'; the process's resident memory
    is measured against it) and `max_connections` (active downstream
    connections on all listeners). Each action is given the pressure
    (use / maximum, 0..1] at which it turns on:

    - `stop_accepting_requests`: new requests get 503 with flag `OM`;
    - `disable_http_keepalive`: HTTP/1.1 responses carry `connection: close`;
    - `stop_accepting_connections`: new connections are closed at accept.

    Readings are taken every `refresh_interval` (Envoy: 250 ms).
    """
    actions = tuple(
        (name, value)
        for name, value in (
            ("stop_accepting_requests", stop_accepting_requests),
            ("disable_http_keepalive", disable_http_keepalive),
            ("stop_accepting_connections", stop_accepting_connections),
        )
        if value is not None
    )
    return OverloadBuilder(
        max_heap=max_heap,
        max_connections=max_connections,
        actions=actions,
        refresh_interval=refresh_interval,
        location=caller_location(),
    )


MeshItem = (
    ListenerBuilder
    | ClusterBuilder
    | AdminBuilder
    | DemoServiceBuilder
    | StatsdBuilder
    | RuntimeBuilder
    | OverloadBuilder
)
"""What `mesh()` accepts, in any order."""


@attrs.frozen(kw_only=True)
class MeshBuilder:
    """A whole mesh, ready to compile. Made by `mesh()`."""

    _items: tuple[object, ...]
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    def add(self, *items: MeshItem) -> MeshBuilder:
        """A new mesh with `items` appended."""
        return attrs.evolve(self, items=(*self._items, *items))

    def compile(self, source: str = "") -> Mesh:
        """Validate and build the config graph.

        Raises:
            MeshError: listing every problem found, each with its `file:line`.
        """
        from ._compile import compile_mesh

        return compile_mesh(self, source)


def mesh(*items: MeshItem) -> MeshBuilder:
    """A mesh of listeners, clusters, an admin server and demo services.

    Clusters used as builder objects in routes are included automatically.
    """
    return MeshBuilder(items=items, location=caller_location())


# --------------------------------------------------------------------------- access-log filters
# Envoy's access-log filters, as plain config data; the compiler checks them.

_COMPARISONS = {"==": "EQ", ">=": "GE", "<=": "LE", "EQ": "EQ", "GE": "GE", "LE": "LE"}


def _op(op: str) -> ComparisonOp:
    return cast(ComparisonOp, _COMPARISONS.get(op, op))


def status_code_filter(op: str, value: int, *, runtime_key: str = "") -> StatusCodeFilter:
    """Log when the response code compares (`"=="`, `">="`, `"<="`) to `value`."""
    return StatusCodeFilter(op=_op(op), value=value, runtime_key=runtime_key)


def duration_filter(op: str, ms: int, *, runtime_key: str = "") -> DurationFilter:
    """Log when the total duration in milliseconds compares to `ms`."""
    return DurationFilter(op=_op(op), value=ms, runtime_key=runtime_key)


def not_health_check_filter() -> NotHealthCheckFilter:
    """Skip requests answered by the health_check filter."""
    return NotHealthCheckFilter()


def response_flag_filter(*flags: str) -> ResponseFlagFilter:
    """Log when any of `flags` (e.g. "UH", "UF") is set; any flag if none given."""
    return ResponseFlagFilter(flags=tuple(flags))


def runtime_filter(key: str, numerator: int = 0, denominator: int = 100) -> RuntimeFilter:
    """Log `numerator/denominator` of requests; an integer runtime value under
    `key` replaces the numerator (Envoy's runtime_filter, default 0%)."""
    return RuntimeFilter(runtime_key=key, numerator=numerator, denominator=denominator)


def and_filter(*filters: AccessLogFilter) -> AndFilter:
    """Log when every filter passes."""
    return AndFilter(filters=tuple(filters))


def or_filter(*filters: AccessLogFilter) -> OrFilter:
    """Log when any filter passes."""
    return OrFilter(filters=tuple(filters))
