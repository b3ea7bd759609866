"""The config graph: frozen, slotted, keyword-only attrs classes. Pure data.

This module is the contract between the DSL (which builds and validates it)
and the runtime (which runs it). It imports nothing from the rest of
trioproxy and does no I/O. Every value is hashable and picklable so that a
reload can diff two graphs by equality and workers can receive one by pickle.

Names are references: a route names its cluster; the DSL compiler checks
every reference before a graph is ever built, so the runtime may assume the
graph is consistent.

`Location` fields record the user's `file:line` of the builder call that made
a node. They are excluded from equality so that moving a line in a mesh file
does not count as a change on reload.

Defaults follow Envoy (see ../shared/reference/envoy.md); every default that
differs is recorded in docs/decisions.md.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

__all__ = [
    "OVERLOAD_ACTIONS",
    "AccessLog",
    "AccessLogFilter",
    "Admin",
    "AndFilter",
    "CertificateValidation",
    "CircuitBreakers",
    "Cluster",
    "ComparisonOp",
    "CookieHashPolicy",
    "DemoService",
    "DirectResponseAction",
    "DnsDiscovery",
    "DownstreamTlsContext",
    "DurationFilter",
    "EdsFile",
    "Endpoint",
    "FilterChain",
    "FilterChainMatch",
    "GrpcHealthCheck",
    "HashPolicy",
    "HeaderHashPolicy",
    "HeaderMatcher",
    "HealthCheck",
    "HealthChecker",
    "HedgePolicy",
    "HttpConnectionManager",
    "HttpFilterConfig",
    "Listener",
    "ListenerFilterConfig",
    "Location",
    "Mesh",
    "NetworkFilterConfig",
    "NotHealthCheckFilter",
    "OrFilter",
    "OutlierDetection",
    "OverloadActionName",
    "OverloadManager",
    "QueryParameterHashPolicy",
    "QueryParameterMatcher",
    "RedirectAction",
    "ResponseFlagFilter",
    "RetryPolicy",
    "Route",
    "RouteAction",
    "RouteConfig",
    "RouteMatch",
    "RuntimeFilter",
    "RuntimeFraction",
    "RuntimeValue",
    "SanMatcher",
    "SocketAddress",
    "SourceIpHashPolicy",
    "StatsdSink",
    "StatusCodeFilter",
    "TcpHealthCheck",
    "TcpProxy",
    "TlsCertificate",
    "TlsInspector",
    "TracePropagation",
    "Tracing",
    "TracingProvider",
    "UpstreamTlsContext",
    "VirtualHost",
    "WeightedCluster",
]

# Envoy's default access-log format (docs: access_log/usage "Default format string").
DEFAULT_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

LbPolicy = Literal["round_robin", "least_request", "random", "ring_hash", "maglev"]
# The policies that balance on a request hash (a route's hash_policy).
HASH_LB_POLICIES: Final = frozenset({"ring_hash", "maglev"})
PathKind = Literal["prefix", "path", "regex"]
StringMatchKind = Literal["exact", "prefix", "suffix", "contains", "regex", "present"]
CodecType = Literal["auto", "http1", "http2"]
# Who reads HTTP/1.1 message heads (trioproxy.codec.http1.PARSERS).
Http1Parser = Literal["h11", "httptools"]
# "auto": HTTP/2 if the upstream's TLS ALPN says h2, else HTTP/1.1 (Envoy's auto_config).
UpstreamProtocol = Literal["http1", "http2", "auto"]
# Envoy's cluster discovery types (`type`); "eds" reads a ClusterLoadAssignment
# from a file (Envoy's filesystem EDS, `path_config_source`).
ClusterType = Literal["static", "strict_dns", "logical_dns", "eds"]
# Envoy's DnsLookupFamily values (AUTO: IPv6, falling back to IPv4).
DnsLookupFamily = Literal["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"]
TlsVersion = Literal["TLSv1_2", "TLSv1_3"]
# Envoy's SubjectAltNameMatcher san_type (DNS, URI, EMAIL, IP_ADDRESS), lower-case.
SanType = Literal["dns", "uri", "email", "ip"]
SanMatchKind = Literal["exact", "prefix", "suffix", "contains", "regex"]
TransportProtocol = Literal["", "tls", "raw_buffer"]
# Envoy's HttpConnectionManager.ForwardClientCertDetails, lower-case.
ForwardClientCertDetails = Literal[
    "sanitize", "forward_only", "append_forward", "sanitize_set", "always_forward_only"
]
# Envoy's SetCurrentClientCertDetails fields ("By" and "Hash" are always set).
ClientCertDetail = Literal["subject", "cert", "chain", "dns", "uri"]


@attrs.frozen(kw_only=True)
class Location:
    """Where in the user's mesh file a node was declared."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@attrs.frozen(kw_only=True)
class SocketAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def stat_name(self) -> str:
        """Envoy's listener stat name: `0.0.0.0_8000` (`:` becomes `_`)."""
        return f"{self.host}_{self.port}".replace(":", "_")


# --------------------------------------------------------------------------- tls


@attrs.frozen(kw_only=True)
class TlsCertificate:
    """A certificate chain and its private key, from PEM files (Envoy's
    TlsCertificate with `filename` data sources). Reloaded when the files change."""

    cert_chain_file: str
    private_key_file: str


@attrs.frozen(kw_only=True)
class SanMatcher:
    """Envoy's SubjectAltNameMatcher: a SAN type and a string matcher.

    A `dns` matcher of kind "exact" also accepts a wildcard SAN that covers
    the value (`*.example.com` matches "a.example.com"), as Envoy does.
    """

    san_type: SanType
    kind: SanMatchKind = "exact"
    value: str


@attrs.frozen(kw_only=True)
class CertificateValidation:
    """Envoy's CertificateValidationContext, files only.

    `trusted_ca_file` verifies the peer's chain; `match_subject_alt_names`
    then requires one of the peer's SANs to match one matcher.
    """

    trusted_ca_file: str | None = None
    match_subject_alt_names: tuple[SanMatcher, ...] = ()


@attrs.frozen(kw_only=True)
class DownstreamTlsContext:
    """TLS termination on a filter chain (Envoy's DownstreamTlsContext)."""

    certificates: tuple[TlsCertificate, ...]
    validation: CertificateValidation | None = None
    # Envoy: require_client_certificate false (a client certificate is then
    # requested and verified only if a CA is configured and one is sent).
    require_client_certificate: bool = False
    # Envoy: empty, no ALPN. The DSL fills in ("h2", "http/1.1") for an HTTP
    # chain with codec auto (docs/decisions.md).
    alpn_protocols: tuple[str, ...] = ()
    # Envoy: servers accept TLSv1_2 .. TLSv1_3.
    min_version: TlsVersion = "TLSv1_2"
    max_version: TlsVersion = "TLSv1_3"
    # Not an Envoy knob (Envoy watches files with inotify or takes them from
    # SDS): how often the files' mtimes are polled; 0 turns reloading off.
    watch_interval: float = 5.0


@attrs.frozen(kw_only=True)
class UpstreamTlsContext:
    """TLS origination to a cluster's endpoints (Envoy's UpstreamTlsContext)."""

    # None: the endpoint's host when it is a DNS name, else no SNI. (Envoy's
    # `auto_sni` takes the request's Host instead; docs/decisions.md.)
    sni: str | None = None
    # None: the peer is not verified (Envoy verifies only with a validation context).
    validation: CertificateValidation | None = None
    # With a CA and no SAN matchers, check the certificate against the SNI
    # (Envoy needs `auto_san_validation` for this; we default it on).
    verify_hostname: bool = True
    # A client certificate for mTLS to the upstream.
    certificate: TlsCertificate | None = None
    # Envoy: empty. The DSL fills in "h2" for HTTP/2 clusters, "h2,http/1.1"
    # for auto and "http/1.1" for HTTP/1.1 clusters.
    alpn_protocols: tuple[str, ...] = ()
    # Envoy: clients TLSv1_2 .. TLSv1_2; we allow TLSv1_3 (docs/decisions.md).
    min_version: TlsVersion = "TLSv1_2"
    max_version: TlsVersion = "TLSv1_3"
    watch_interval: float = 5.0


# --------------------------------------------------------------------------- clusters


@attrs.frozen(kw_only=True)
class Endpoint:
    address: SocketAddress
    weight: int = 1
    # Envoy's LocalityLbEndpoints priority: 0 is preferred; traffic spills to
    # 1, 2, ... as the better levels lose healthy hosts.
    priority: int = 0
    # Envoy's EDS health_status (UNKNOWN, HEALTHY, UNHEALTHY, DRAINING, TIMEOUT,
    # DEGRADED); UNHEALTHY, DRAINING and TIMEOUT keep the host out of the
    # balancer (failed_eds_health). Only EDS files set it.
    health_status: str = "UNKNOWN"
    # Envoy's Endpoint.hostname: the DNS name a host was resolved from (DNS
    # clusters) or the file's `hostname`; shown by /clusters.
    hostname: str = ""


@attrs.frozen(kw_only=True)
class DnsDiscovery:
    """How a strict_dns / logical_dns cluster resolves its endpoints' names
    (Envoy's cluster fields of the same names, with its defaults)."""

    # Envoy: dns_refresh_rate 5 s.
    refresh_rate: float = 5.0
    # Envoy: dns_failure_refresh_rate unset = refresh_rate; when set, a jittered
    # exponential back-off from `base` up to `max` (Envoy: 10 x base).
    failure_refresh_base: float | None = None
    failure_refresh_max: float | None = None
    # Envoy: respect_dns_ttl false; true refreshes after the records' TTL.
    respect_dns_ttl: bool = False
    # Envoy: dns_lookup_family AUTO.
    lookup_family: DnsLookupFamily = "AUTO"
    # Nameservers (numeric `ip:port`); empty: the system's (/etc/resolv.conf).
    resolvers: tuple[SocketAddress, ...] = ()
    # Not an Envoy knob (c-ares' own): how long one lookup may take in all.
    timeout: float = 5.0


@attrs.frozen(kw_only=True)
class EdsFile:
    """Endpoints from a ClusterLoadAssignment file (JSON or YAML), re-read
    when its mtime, inode or size change (checked every `watch_interval`)."""

    path: str
    watch_interval: float = 1.0


@attrs.frozen(kw_only=True)
class Cluster:
    name: str
    # Envoy's `type`: static endpoints, DNS names, or an EDS file.
    type: ClusterType = "static"
    # static / DNS types: the endpoints (DNS types: hosts are DNS names,
    # resolved by the cluster manager). eds: the initial endpoints (none).
    endpoints: tuple[Endpoint, ...] = ()
    dns: DnsDiscovery | None = None
    eds_file: EdsFile | None = None
    lb_policy: LbPolicy = "round_robin"
    # Envoy: HTTP/1.1 to upstreams unless the cluster's protocol options say h2.
    protocol: UpstreamProtocol = "http1"
    # Who reads HTTP/1.1 response heads from this cluster's hosts (as the
    # HCM's `http1_parser`).
    http1_parser: Http1Parser = "httptools"
    # Envoy: connect_timeout 5 s.
    connect_timeout: float = 5.0
    # Envoy: least_request choice_count 2, active_request_bias 1.0.
    choice_count: int = 2
    active_request_bias: float = 1.0
    # Envoy: ring_hash minimum_ring_size 1024, maximum_ring_size 8M.
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8 * 1024 * 1024
    # Envoy: maglev table_size 65537 (a prime).
    maglev_table_size: int = 65537
    # Envoy: common_lb_config.healthy_panic_threshold 50 %; 0 disables panic.
    healthy_panic_threshold: float = 50.0
    # Envoy: common_http_protocol_options.idle_timeout 1 h for upstream connections.
    idle_timeout: float = 3600.0
    # Not an Envoy knob: idle connections kept per host. Envoy keeps every idle
    # connection until idle_timeout; we cap file descriptors held per host.
    max_idle_per_host: int = 128
    # TLS to the endpoints (Envoy's transport_socket); None is plaintext.
    tls: UpstreamTlsContext | None = None
    circuit_breakers: CircuitBreakers = attrs.Factory(lambda: CircuitBreakers())
    # Active HTTP health checking (Envoy's health_checks[0]); None: off.
    health_check: HealthCheck | None = None
    # Passive health checking (Envoy's outlier_detection); None: off.
    outlier_detection: OutlierDetection | None = None
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class HealthChecker:
    """Base of the non-HTTP health checkers (Envoy's `health_checker` oneof).
    Probes register by type in `upstream.health_check`."""


@attrs.frozen(kw_only=True)
class TcpHealthCheck(HealthChecker):
    """Envoy's tcp_health_check: connect, write `send`, then read until every
    block of `receive` has been seen, in order (any chunking, other bytes in
    between allowed). Both empty: a successful connect is healthy."""

    send: bytes = b""
    receive: tuple[bytes, ...] = ()


@attrs.frozen(kw_only=True)
class GrpcHealthCheck(HealthChecker):
    """Envoy's grpc_health_check: `grpc.health.v1.Health/Check` over HTTP/2;
    healthy iff grpc-status 0 and the response's status is SERVING."""

    service_name: str = ""
    authority: str | None = None  # the :authority; default: the cluster name


@attrs.frozen(kw_only=True)
class HealthCheck:
    """Envoy's health check (interval and timeout are required there).

    `checker` None is the HTTP check (`path`, `host`, `expected_statuses`);
    a `TcpHealthCheck` or `GrpcHealthCheck` replaces it. The thresholds,
    intervals and stats are common to all three.
    """

    checker: HealthChecker | None = None
    path: str = "/"
    host: str | None = None  # the Host header; default: the cluster name
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)  # [start, end)
    interval: float = 5.0
    timeout: float = 1.0
    # Envoy: unhealthy_threshold and healthy_threshold are required; 2 and 1
    # are the values its examples use.
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    # Envoy: interval_jitter 0, no_traffic_interval 60 s.
    interval_jitter: float = 0.0
    no_traffic_interval: float = 60.0


@attrs.frozen(kw_only=True)
class OutlierDetection:
    """Envoy's outlier_detection, with its defaults.

    Kinds: consecutive 5xx, consecutive gateway failures (both inline),
    success rate and failure percentage (both evaluated every `interval`
    over the requests of that interval).
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    # Envoy: enforcing_consecutive_5xx 100 %, enforcing_consecutive_gateway_failure 0 %.
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    # Envoy: max_ejection_time_jitter 0 (a random 0..jitter added to each ejection).
    max_ejection_time_jitter: float = 0.0
    # Success rate (Envoy: enforcing 100 %, at least 5 hosts with at least 100
    # requests in the interval; threshold mean - (stdev_factor / 1000) * stdev).
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    # Failure percentage (Envoy: enforcing 0 %, so off unless set; 85 %, at
    # least 5 hosts with at least 50 requests in the interval).
    enforcing_failure_percentage: int = 0
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50


@attrs.frozen(kw_only=True)
class CircuitBreakers:
    """Envoy's circuit breaker thresholds (priority default), with its defaults."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    # Envoy's per_host_thresholds max_connections (unset: no per-host limit).
    max_connections_per_host: int | None = None
    # Retry budget (Envoy's retry_budget): when set, it replaces max_retries:
    # retries may be `budget_percent` of active requests, at least
    # `min_retry_concurrency`. Envoy's defaults once a budget exists: 20 %, 3.
    budget_percent: float | None = None
    min_retry_concurrency: int = 3


# --------------------------------------------------------------------------- routes


@attrs.frozen(kw_only=True)
class HeaderMatcher:
    """Envoy's HeaderMatcher. `kind` "present" ignores `value`."""

    name: str  # lower-case; pseudo-headers such as ":authority", ":method" allowed
    kind: StringMatchKind = "exact"
    value: str = ""
    invert: bool = False


@attrs.frozen(kw_only=True)
class QueryParameterMatcher:
    name: str
    kind: StringMatchKind = "exact"
    value: str = ""


@attrs.frozen(kw_only=True)
class RuntimeFraction:
    """Envoy's route `runtime_fraction`: match `numerator/denominator` of
    requests; the runtime key, when set, overrides the numerator."""

    numerator: int
    # Envoy's FractionalPercent denominators: HUNDRED, TEN_THOUSAND, MILLION.
    denominator: int = 100
    runtime_key: str = ""


@attrs.frozen(kw_only=True)
class RouteMatch:
    path_kind: PathKind = "prefix"
    value: str = "/"
    # Envoy: case_sensitive true.
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()
    # Envoy's `grpc: {}`: only requests whose content-type is application/grpc*.
    grpc: bool = False
    # Envoy's runtime_fraction: the route matches only that share of requests.
    runtime_fraction: RuntimeFraction | None = None


@attrs.frozen(kw_only=True)
class WeightedCluster:
    name: str
    weight: int


RETRY_ON: Final = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "refused-stream",
        "retriable-4xx",
        "retriable-status-codes",
        "retriable-headers",
        # gRPC (checked on the grpc-status of gRPC responses)
        "cancelled",
        "deadline-exceeded",
        "resource-exhausted",
        "unavailable",
        "internal",
    }
)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Envoy's route retry_policy (no retries unless a policy exists)."""

    retry_on: frozenset[str] = frozenset()
    # Envoy: num_retries 1 once a policy exists.
    num_retries: int = 1
    # Envoy: per_try_timeout defaults to the route timeout (0 here = none).
    per_try_timeout: float = 0.0
    retriable_status_codes: tuple[int, ...] = ()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    # Envoy: fully jittered exponential back-off, base 25 ms, max 10 x base.
    base_interval: float = 0.025
    max_interval: float = 0.25
    # Request bodies up to this many bytes are kept for replay (Envoy bounds
    # it by the connection buffer limit, 1 MiB); beyond it, no retry.
    max_replay_bytes: int = 1024 * 1024


@attrs.frozen(kw_only=True)
class HedgePolicy:
    """A route's hedge policy: more than one try in flight for one request.

    `hedge_on_per_try_timeout` is Envoy's: when a try's per-try timeout (of
    the route's retry policy) fires, that try is not cancelled; a retry
    starts beside it (within `num_retries`) and the first good response wins.
    `initial_requests` and `additional_request_delay` are request racing,
    which Envoy declares but never implemented: `initial_requests` tries
    start at once (delay None or 0) or one more every
    `additional_request_delay` seconds while no response has arrived.
    """

    # Envoy: initial_requests 1, hedge_on_per_try_timeout false.
    initial_requests: int = 1
    additional_request_delay: float | None = None
    hedge_on_per_try_timeout: bool = False


@attrs.frozen(kw_only=True)
class HashPolicy:
    """Base of Envoy's route hash_policy entries (for ring_hash and maglev).

    Hashes of the policies that yield one combine as
    `hash = rotl(hash, 1) ^ next`; a `terminal` policy that yields a hash
    ends the list. Kinds register by type at run time.
    """

    terminal: bool = False


@attrs.frozen(kw_only=True)
class HeaderHashPolicy(HashPolicy):
    name: str  # lower-case; every value of the header, sorted, is hashed


@attrs.frozen(kw_only=True)
class CookieHashPolicy(HashPolicy):
    """Hash a cookie's value. With `ttl` set and the cookie absent, the proxy
    makes a value, hashes it, and sets the cookie on the response
    (`Max-Age=ttl` unless ttl is 0, `Path=path` if set, HttpOnly)."""

    name: str
    ttl: int | None = None
    path: str | None = None


@attrs.frozen(kw_only=True)
class SourceIpHashPolicy(HashPolicy):
    """Hash the downstream connection's remote IP address (no port)."""


@attrs.frozen(kw_only=True)
class QueryParameterHashPolicy(HashPolicy):
    name: str  # the first value, not percent-decoded


@attrs.frozen(kw_only=True)
class RouteAction:
    """Forward to one cluster, or to one of `weighted_clusters` by weight."""

    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    # Envoy: route timeout 15 s, 0 disables; covers all retries.
    timeout: float = 15.0
    prefix_rewrite: str | None = None
    host_rewrite: str | None = None
    retry_policy: RetryPolicy | None = None
    hedge_policy: HedgePolicy | None = None
    # Envoy's per-route UpgradeConfig `enabled` (default true): upgrades the
    # connection manager allows (`upgrade_types`) may be tunnelled here.
    allow_upgrades: bool = True
    # Envoy's hash_policy: how ring_hash / maglev clusters hash a request
    # (ignored by the other policies, as in Envoy).
    hash_policy: tuple[HashPolicy, ...] = ()


@attrs.frozen(kw_only=True)
class RedirectAction:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    # Envoy: response_code 301.
    code: int = 301
    strip_query: bool = False


@attrs.frozen(kw_only=True)
class DirectResponseAction:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"


Action = RouteAction | RedirectAction | DirectResponseAction


@attrs.frozen(kw_only=True)
class Route:
    name: str
    match: RouteMatch
    action: Action
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...] = ("*",)
    routes: tuple[Route, ...] = ()
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class RouteConfig:
    virtual_hosts: tuple[VirtualHost, ...] = ()


# --------------------------------------------------------------------------- filters


@attrs.frozen(kw_only=True)
class HttpFilterConfig:
    """Base of every HTTP filter's config class. Filters register by type."""


@attrs.frozen(kw_only=True)
class NetworkFilterConfig:
    """Base of every network filter's config class. Filters register by type."""


@attrs.frozen(kw_only=True)
class AccessLog:
    """An access-log sink: `path` is "-" / "/dev/stdout", "/dev/stderr" or a file.

    `json_format`, when set, is Envoy's `json_format` dictionary as canonical
    JSON text (sorted keys; kept as text so the graph stays hashable) and
    replaces `format`. `filter` decides which requests are logged.
    """

    path: str = "-"
    format: str = DEFAULT_ACCESS_LOG_FORMAT
    json_format: str | None = None
    filter: AccessLogFilter | None = None
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


# Envoy's access-log filters (config.accesslog.v3.AccessLogFilter).
ComparisonOp = Literal["EQ", "GE", "LE"]


@attrs.frozen(kw_only=True)
class AccessLogFilter:
    """Base of the access-log filters."""


@attrs.frozen(kw_only=True)
class StatusCodeFilter(AccessLogFilter):
    """Envoy's status_code_filter: response code `op` `value` (0 if none was
    sent); an integer under `runtime_key` replaces `value`."""

    op: ComparisonOp
    value: int
    runtime_key: str = ""


@attrs.frozen(kw_only=True)
class DurationFilter(AccessLogFilter):
    """Envoy's duration_filter: total request duration in ms `op` `value`."""

    op: ComparisonOp
    value: int
    runtime_key: str = ""


@attrs.frozen(kw_only=True)
class NotHealthCheckFilter(AccessLogFilter):
    """Envoy's not_health_check_filter: skip requests the health_check filter answered."""


@attrs.frozen(kw_only=True)
class ResponseFlagFilter(AccessLogFilter):
    """Envoy's response_flag_filter: log if any of `flags` is set (any flag if empty)."""

    flags: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RuntimeFilter(AccessLogFilter):
    """Envoy's runtime_filter: log `numerator/denominator` of requests; an
    integer under `runtime_key` replaces the numerator (Envoy's default 0/100)."""

    runtime_key: str
    numerator: int = 0
    denominator: int = 100


@attrs.frozen(kw_only=True)
class AndFilter(AccessLogFilter):
    filters: tuple[AccessLogFilter, ...]


@attrs.frozen(kw_only=True)
class OrFilter(AccessLogFilter):
    filters: tuple[AccessLogFilter, ...]


TracingProvider = Literal["zipkin", "opentelemetry"]
# Header formats a trace context is read from and written to.
TracePropagation = Literal["w3c", "b3", "b3-single"]


@attrs.frozen(kw_only=True)
class Tracing:
    """Envoy's HCM `tracing` with its provider (Zipkin or OpenTelemetry).

    The collector is a cluster (Envoy's `collector_cluster`: reports go to
    one of its hosts, chosen by its balancer) or a plain address. Sampling
    values are percentages, as in Envoy.
    """

    provider: TracingProvider
    # Exactly one of the two (the compiler checks).
    collector: SocketAddress | None = None
    collector_cluster: str | None = None
    # Envoy: collector_endpoint "/api/v2/spans" (Zipkin JSON v2); OTLP/HTTP
    # "/v1/traces".
    collector_path: str = "/api/v2/spans"
    service_name: str = "trioproxy"
    # Envoy: random_sampling, client_sampling, overall_sampling all 100 %.
    random_sampling: float = 100.0
    client_sampling: float = 100.0
    overall_sampling: float = 100.0
    # Extracted in this order (the first format present wins), all injected.
    # Envoy: Zipkin speaks B3, OpenTelemetry W3C trace context.
    propagation: tuple[TracePropagation, ...] = ("b3",)
    # Envoy's Zipkin shared_span_context (default true): the server span
    # reuses the caller's span id and is reported with `shared: true`.
    shared_span_context: bool = True
    # Spans held for export at most; more are dropped and counted. Envoy has
    # no bound; 4096 spans is about 4 MiB (docs/decisions.md).
    max_queue_spans: int = 4096
    # Envoy's runtime keys tracing.zipkin.min_flush_spans (5) and
    # tracing.zipkin.flush_interval_ms (5 s).
    min_flush_spans: int = 5
    flush_interval: float = 5.0
    # Envoy's collector timeout for a report (5 s).
    collector_timeout: float = 5.0
    # Span name of the server span: Envoy's traffic_direction based name.
    operation_name: str = "ingress"
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class HttpConnectionManager(NetworkFilterConfig):
    stat_prefix: str
    route_config: RouteConfig
    codec: CodecType = "auto"
    http_filters: tuple[HttpFilterConfig, ...] = ()
    access_logs: tuple[AccessLog, ...] = ()
    # Envoy: max_request_headers_kb 60, max_headers_count 100.
    max_request_headers_kb: int = 60
    max_headers_count: int = 100
    # Who reads HTTP/1.1 request heads: llhttp (httptools) inside h11's state
    # machine, or h11 alone; the same events either way. Envoy has its own
    # parsers (http-parser, then balsa); see docs/decisions.md.
    http1_parser: Http1Parser = "httptools"
    # Envoy leaves request_headers_timeout disabled; we default to 10 s so a
    # slowloris client cannot hold a connection (docs/decisions.md).
    request_headers_timeout: float = 10.0
    # Envoy: connection idle_timeout 1 h; stream_idle_timeout 5 min;
    # request_timeout disabled (0).
    idle_timeout: float = 3600.0
    stream_idle_timeout: float = 300.0
    request_timeout: float = 0.0
    # Envoy: server_name "envoy"; ours is "trioproxy" (docs/decisions.md).
    server_name: str = "trioproxy"
    # Envoy: generate_request_id true.
    generate_request_id: bool = True
    # Envoy: preserve_external_request_id false: an external client's
    # x-request-id is replaced (internal: loopback or private addresses).
    preserve_external_request_id: bool = False
    # Envoy's HCM `tracing`; None: no tracing, no per-request cost.
    tracing: Tracing | None = None
    # Envoy: use_remote_address false; the front proxy examples set it true.
    use_remote_address: bool = True
    # Envoy: per_connection_buffer_limit_bytes 1 MiB; bounds a buffered body.
    buffer_limit_bytes: int = 1024 * 1024
    # Envoy's upgrade_configs; Envoy has none by default, we allow WebSocket
    # (docs/decisions.md). An upgrade not listed here is refused with 403.
    upgrade_types: tuple[str, ...] = ("websocket",)
    # Envoy's http2_protocol_options.allow_connect: accept RFC 8441 extended
    # CONNECT (WebSocket over HTTP/2), bridged to an HTTP/1.1 upgrade. Off.
    allow_connect: bool = False
    # HTTP/2 (Envoy 1.36 http2_protocol_options defaults; the foundation of
    # issue 3 asks for 1024 concurrent streams).
    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024
    # x-forwarded-client-cert (XFCC). Envoy's default is "sanitize" with no
    # details; ours sets the header for mTLS clients with Hash, Subject, URI
    # and DNS (docs/decisions.md). "By" and "Hash" are always included.
    forward_client_cert_details: ForwardClientCertDetails = "sanitize_set"
    set_current_client_cert_details: tuple[ClientCertDetail, ...] = ("subject", "uri", "dns")
    # HTTP/2 flood limits: Envoy's http2_protocol_options names and defaults
    # (docs/security.md). Frames queued for a client and not yet written,
    # all kinds / PING+SETTINGS acks and RST_STREAM; consecutive empty
    # HEADERS/CONTINUATION/DATA; PRIORITY per stream opened; WINDOW_UPDATE
    # per DATA frame sent. Crossing one: GOAWAY ENHANCE_YOUR_CALM, close.
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    # Rapid reset (CVE-2023-44487), Envoy's runtime keys
    # overload.premature_reset_total_stream_count (500) and
    # overload.premature_reset_min_stream_lifetime_seconds (1 s): a stream
    # the client resets within that time, before any response, is premature;
    # a connection with at least half its streams (of at least 500, or 250
    # premature ones before that) premature gets GOAWAY and is closed.
    # 0 disables.
    premature_reset_total_stream_count: int = 500
    premature_reset_min_stream_lifetime: float = 1.0
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class TcpProxy(NetworkFilterConfig):
    """Envoy's tcp_proxy: bytes both ways to a host of one cluster (or one of
    `weighted_clusters`, picked per connection by weight)."""

    stat_prefix: str
    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    # Envoy: idle_timeout 1 h (0 disables); max_connect_attempts 1.
    idle_timeout: float = 3600.0
    max_connect_attempts: int = 1
    access_logs: tuple[AccessLog, ...] = ()
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class FilterChainMatch:
    """Envoy's filter_chain_match. Empty fields match anything.

    Criteria are applied in Envoy's order (destination port, destination IP,
    server name, transport protocol, application protocols, source IP,
    source port); at each step the most specific matching chains are kept
    and the rest dropped, with no backtracking.
    """

    destination_port: int | None = None
    prefix_ranges: tuple[str, ...] = ()  # CIDRs such as "10.0.0.0/8"
    # Lower-case; "*.example.com" matches any name ending in ".example.com".
    server_names: tuple[str, ...] = ()
    transport_protocol: TransportProtocol = ""
    application_protocols: tuple[str, ...] = ()
    source_prefix_ranges: tuple[str, ...] = ()
    source_ports: tuple[int, ...] = ()

    @property
    def needs_inspection(self) -> bool:
        """True if matching needs the TLS ClientHello (SNI, ALPN or TLS-ness)."""
        return bool(self.server_names or self.transport_protocol or self.application_protocols)


@attrs.frozen(kw_only=True)
class FilterChain:
    filters: tuple[NetworkFilterConfig, ...]
    match: FilterChainMatch = FilterChainMatch()
    # TLS termination (Envoy's transport_socket); None is plaintext.
    tls: DownstreamTlsContext | None = None
    name: str = ""
    # Envoy's transport_socket_connect_timeout (unset there: no limit); we
    # bound the TLS handshake so a silent client cannot hold a connection.
    transport_socket_connect_timeout: float = 15.0
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class ListenerFilterConfig:
    """Base of every listener filter's config class. Filters register by type."""


@attrs.frozen(kw_only=True)
class TlsInspector(ListenerFilterConfig):
    """Envoy's tls_inspector: read (without consuming) the ClientHello to
    learn the SNI and ALPN used to choose a filter chain."""


@attrs.frozen(kw_only=True)
class Listener:
    name: str
    address: SocketAddress
    filter_chains: tuple[FilterChain, ...]
    # Envoy: stat names use the address unless stat_prefix is set.
    stat_prefix: str | None = None
    listener_filters: tuple[ListenerFilterConfig, ...] = ()
    # Envoy: listener_filters_timeout 15 s; the connection is closed on expiry.
    listener_filters_timeout: float = 15.0
    # Envoy: the connection_limit filter / listener max_connections; None = no limit.
    # Connections past it are closed at accept (`downstream_cx_overflow`).
    max_connections: int | None = None
    location: Location | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def stat_name(self) -> str:
        return self.stat_prefix or self.address.stat_name


# --------------------------------------------------------------------------- top level


OverloadActionName = Literal[
    "stop_accepting_requests", "disable_http_keepalive", "stop_accepting_connections"
]
OVERLOAD_ACTIONS: tuple[OverloadActionName, ...] = (
    "stop_accepting_requests",
    "disable_http_keepalive",
    "stop_accepting_connections",
)


@attrs.frozen(kw_only=True)
class OverloadManager:
    """Envoy's overload manager: resource monitors sampled every
    `refresh_interval`, and actions that turn on when a resource's pressure
    (its use over its maximum, 0..1) reaches the action's threshold.

    Monitors: `max_heap_bytes` (Envoy's fixed_heap; we measure the process's
    resident memory) and `max_active_downstream_connections` (Envoy's
    global_downstream_max_connections). `actions` maps an action name to
    its threshold; an action is active while any monitor is at or above it.
    """

    refresh_interval: float = 0.25  # Envoy's default refresh interval
    max_heap_bytes: int | None = None
    max_active_downstream_connections: int | None = None
    actions: tuple[tuple[OverloadActionName, float], ...] = ()
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Admin:
    address: SocketAddress
    # Requests must carry `Authorization: Bearer <token>` when set; required
    # to bind anywhere but loopback (Envoy's admin has no authentication).
    # Never printed: /config_dump and `show` redact fields marked secret.
    token: str | None = attrs.field(default=None, repr=False, metadata={"secret": True})
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class DemoService:
    """A small built-in HTTP upstream that the runtime starts beside the proxy.

    It answers every request with `Hello from behind trioproxy (<name>)! hostname: <h>`.
    It exists so that examples run with no other set-up.
    """

    name: str
    address: SocketAddress
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class StatsdSink:
    """Envoy's `envoy.stat_sinks.statsd` over UDP; `tags` adds DogStatsD
    tags (`|#k:v`, Envoy's dog_statsd sink) from Envoy's tag extraction."""

    address: SocketAddress
    # Envoy: prefix "envoy".
    prefix: str = "envoy"
    tags: bool = False
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


# A runtime value: Envoy's runtime holds strings, numbers and booleans.
RuntimeValue = str | int | float | bool


@attrs.frozen(kw_only=True)
class Mesh:
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    admin: Admin | None = None
    demo_services: tuple[DemoService, ...] = ()
    stats_sinks: tuple[StatsdSink, ...] = ()
    # Envoy: stats_flush_interval 5 s (sinks, interval histogram quantiles).
    stats_flush_interval: float = 5.0
    # Envoy's runtime static_layer: (key, value) pairs, sorted by key.
    runtime: tuple[tuple[str, RuntimeValue], ...] = ()
    overload: OverloadManager | None = None
    source: str = ""

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)
