"""Render a config graph for tools (`to_jsonable`) and for people (`to_tree`).

Both are pure functions of a `Mesh`; they back `trioproxy show [--json]` and
the admin `/config_dump`. Locations are left out: they say where a node was
written, not what it is. This module imports only `trioproxy.config`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from trioproxy.config.graph import (
    CircuitBreakers,
    Cluster,
    CookieHashPolicy,
    DirectResponseAction,
    FilterChain,
    GrpcHealthCheck,
    HashPolicy,
    HeaderHashPolicy,
    HeaderMatcher,
    HealthCheck,
    HealthChecker,
    HttpConnectionManager,
    HttpFilterConfig,
    Listener,
    ListenerFilterConfig,
    Location,
    Mesh,
    NetworkFilterConfig,
    QueryParameterHashPolicy,
    QueryParameterMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteMatch,
    TcpHealthCheck,
    VirtualHost,
)

__all__ = ["to_jsonable", "to_tree"]

# Values whose concrete class is not fixed by the field that holds them; the
# JSON form names the class in "@type", like Envoy's config_dump.
_POLYMORPHIC = (
    HttpFilterConfig,
    NetworkFilterConfig,
    ListenerFilterConfig,
    RouteAction,
    RedirectAction,
    DirectResponseAction,
    HealthChecker,
    HashPolicy,
)


def to_jsonable(mesh: Mesh) -> dict[str, object]:
    """The graph as JSON-able data: dicts, lists, str, int, float, bool, None.

    Tuples become lists, bytes are decoded as UTF-8 (undecodable bytes are
    replaced), `Location`s are omitted, and filter configs, route actions
    and health checkers carry their class name under "@type". A TCP health
    check's payloads are shown as Envoy shows them: `{"text": "<hex>"}`.
    """
    out = _jsonable(mesh)
    assert isinstance(out, dict)
    return out


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    cls = type(value)
    if attrs.has(cls):
        out: dict[str, object] = {}
        if isinstance(value, _POLYMORPHIC):
            out["@type"] = cls.__name__ if cls.__module__ == Mesh.__module__ else _name(cls)
        for field in attrs.fields(cls):
            item = getattr(value, field.name)
            if isinstance(item, Location) or field.name == "location":
                continue
            if field.metadata.get("secret") and item is not None:
                out[field.name] = "[redacted]"
                continue
            out[field.name] = _jsonable(item)
        if isinstance(value, TcpHealthCheck):
            out["send"] = {"text": value.send.hex()}
            out["receive"] = [{"text": b.hex()} for b in value.receive]
        return out
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        items = [_jsonable(v) for v in value]
        if isinstance(value, frozenset | set):
            items.sort(key=repr)
        return items
    return repr(value)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- tree


def to_tree(mesh: Mesh) -> str:
    """An indented, human-readable outline of the graph.

    listeners -> filter chains -> vhosts -> routes -> action; clusters with
    their lb policy and endpoints; the admin address; stats sinks; runtime
    keys; demo services.
    """
    lines: list[str] = [f"mesh {mesh.source}" if mesh.source else "mesh"]
    lines.append("  listeners" if mesh.listeners else "  listeners: none")
    for lis in mesh.listeners:
        lines.extend(_listener(lis, "    "))
    lines.append("  clusters" if mesh.clusters else "  clusters: none")
    for c in mesh.clusters:
        lines.extend(_cluster(c, "    "))
    if mesh.admin is None:
        lines.append("  admin: none")
    else:
        # The token itself is never printed.
        lines.append(f"  admin {mesh.admin.address}{' (token)' if mesh.admin.token else ''}")
    for sink in mesh.stats_sinks:
        tags = ", tags" if sink.tags else ""
        lines.append(f"  statsd {sink.address} prefix {sink.prefix!r}{tags}")
    if mesh.runtime:
        lines.append("  runtime")
        lines.extend(f"    {key} = {value!r}" for key, value in mesh.runtime)
    if mesh.demo_services:
        lines.append("  demo_services")
        lines.extend(f"    demo_service {d.name} {d.address}" for d in mesh.demo_services)
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    """15.0 -> "15s", 0.25 -> "250ms", 0 -> "off"."""
    if value == 0:
        return "off"
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _listener(lis: Listener, ind: str) -> list[str]:
    stat = f" stat_prefix={lis.stat_prefix}" if lis.stat_prefix else ""
    lines = [f"{ind}listener {lis.name} {lis.address}{stat}"]
    if not lis.filter_chains:
        lines.append(f"{ind}  (no filter chains)")
    if lis.listener_filters:
        names = ", ".join(type(f).__name__ for f in lis.listener_filters)
        lines.append(f"{ind}  listener_filters {names}")
    for i, chain in enumerate(lis.filter_chains):
        lines.append(f"{ind}  chain {chain.name or i}{_chain_extra(chain)}")
        for flt in chain.filters:
            if isinstance(flt, HttpConnectionManager):
                lines.extend(_hcm(flt, ind + "    "))
            else:
                lines.append(f"{ind}    {_describe(flt)}")
    return lines


def _chain_extra(chain: FilterChain) -> str:
    """` match ... tls ...` for a chain with a match or TLS; "" otherwise."""
    m = chain.match
    parts = []
    for label, value in (
        ("server_names", ",".join(m.server_names)),
        ("transport", m.transport_protocol),
        ("alpn", ",".join(m.application_protocols)),
        ("source", ",".join(m.source_prefix_ranges)),
        ("destination_port", "" if m.destination_port is None else str(m.destination_port)),
    ):
        if value:
            parts.append(f"{label}={value}")
    if chain.tls is not None:
        t = chain.tls
        certs = ",".join(c.cert_chain_file for c in t.certificates)
        tls = f"tls cert={certs} alpn={','.join(t.alpn_protocols) or '-'}"
        if t.validation is not None and t.validation.trusted_ca_file:
            tls += f" client_ca={t.validation.trusted_ca_file}"
            tls += " (required)" if t.require_client_certificate else ""
        parts.append(tls)
    return (" " + " ".join(parts)) if parts else ""


def _hcm(hcm: HttpConnectionManager, ind: str) -> list[str]:
    lines = [
        f"{ind}http stat_prefix={hcm.stat_prefix} codec={hcm.codec}"
        f" idle_timeout={_seconds(hcm.idle_timeout)}"
        f" stream_idle_timeout={_seconds(hcm.stream_idle_timeout)}"
        f" request_timeout={_seconds(hcm.request_timeout)}"
    ]
    for log in hcm.access_logs:
        lines.append(f"{ind}  access_log {log.path}")
    t = hcm.tracing
    if t is not None:
        lines.append(
            f"{ind}  tracing {t.provider} -> {t.collector or 'cluster ' + str(t.collector_cluster)}"
            f"{t.collector_path}"
            f" propagation={','.join(t.propagation)} random_sampling={t.random_sampling:g}%"
        )
    for flt in hcm.http_filters:
        lines.append(f"{ind}  filter {_describe(flt)}")
    for vh in hcm.route_config.virtual_hosts:
        lines.extend(_vhost(vh, ind + "  "))
    return lines


def _vhost(vh: VirtualHost, ind: str) -> list[str]:
    lines = [f"{ind}vhost {vh.name} domains={','.join(vh.domains)}"]
    if not vh.routes:
        lines.append(f"{ind}  (no routes)")
    lines.extend(_route(r, ind + "  ") for r in vh.routes)
    return lines


def _route(route: Route, ind: str) -> str:
    return f"{ind}route {route.name}: {_match(route.match)} -> {_action(route.action)}"


def _match(m: RouteMatch) -> str:
    parts = [f"{m.path_kind} {m.value}"]
    if not m.case_sensitive:
        parts.append("(case-insensitive)")
    parts.extend(f"header {_string_match(h)}" for h in m.headers)
    parts.extend(f"query {_string_match(q)}" for q in m.query_parameters)
    return " ".join(parts)


def _string_match(m: HeaderMatcher | QueryParameterMatcher) -> str:
    invert = isinstance(m, HeaderMatcher) and m.invert
    text = f"{m.name} present" if m.kind == "present" else f"{m.name} {m.kind} {m.value!r}"
    return f"not({text})" if invert else text


def _action(action: object) -> str:
    if isinstance(action, RouteAction):
        if action.weighted_clusters:
            target = "weighted " + " ".join(
                f"{w.name}:{w.weight}" for w in action.weighted_clusters
            )
        else:
            target = f"cluster {action.cluster}"
        extra = [f"timeout={_seconds(action.timeout)}"]
        if action.prefix_rewrite is not None:
            extra.append(f"prefix_rewrite={action.prefix_rewrite}")
        if action.host_rewrite is not None:
            extra.append(f"host_rewrite={action.host_rewrite}")
        h = action.hedge_policy
        if h is not None:
            delay = (
                ""
                if h.additional_request_delay is None
                else f",delay={_seconds(h.additional_request_delay)}"
            )
            on_timeout = ",on_per_try_timeout" if h.hedge_on_per_try_timeout else ""
            extra.append(f"hedge=initial={h.initial_requests}{delay}{on_timeout}")
        if action.hash_policy:
            extra.append("hash_policy=" + ",".join(_hash_policy(p) for p in action.hash_policy))
        return f"{target} " + " ".join(extra)
    if isinstance(action, RedirectAction):
        parts = [f"redirect {action.code}"]
        for name in ("scheme", "host", "port", "path", "prefix_rewrite"):
            value = getattr(action, name)
            if value is not None:
                parts.append(f"{name}={value}")
        if action.strip_query:
            parts.append("strip_query")
        return " ".join(parts)
    if isinstance(action, DirectResponseAction):
        return f"direct_response {action.status} ({len(action.body)} bytes, {action.content_type})"
    return _describe(action)


def _hash_policy(p: HashPolicy) -> str:
    """header:x-user, cookie:session(ttl=3600s,path=/), source_ip, query:u (!: terminal)."""
    kind = {
        HeaderHashPolicy: "header",
        CookieHashPolicy: "cookie",
        QueryParameterHashPolicy: "query",
    }.get(type(p))
    text = "source_ip" if kind is None else f"{kind}:{getattr(p, 'name', '')}"
    if isinstance(p, CookieHashPolicy) and p.ttl is not None:
        text += f"(ttl={p.ttl}s" + (f",path={p.path})" if p.path else ")")
    return text + ("!" if p.terminal else "")


def _lb_extra(c: Cluster) -> str:
    """The cluster's balancing options that differ from Envoy's defaults."""
    defaults = Cluster(name=c.name)
    names = {
        "least_request": ("choice_count", "active_request_bias"),
        "ring_hash": ("minimum_ring_size", "maximum_ring_size"),
        "maglev": ("maglev_table_size",),
    }.get(c.lb_policy, ())
    parts = [
        f"{n}={getattr(c, n):g}"
        for n in (*names, "healthy_panic_threshold")
        if getattr(c, n) != getattr(defaults, n)
    ]
    return "".join(" " + p for p in parts)


def _cluster(c: Cluster, ind: str) -> list[str]:
    lines = [
        f"{ind}cluster {c.name} lb={c.lb_policy}{_lb_extra(c)}"
        f" connect_timeout={_seconds(c.connect_timeout)}"
    ]
    if c.dns is not None:
        d = c.dns
        failure = (
            f" failure_refresh={_seconds(d.failure_refresh_base)}"
            if d.failure_refresh_base is not None
            else ""
        )
        resolvers = ",".join(str(r) for r in d.resolvers) or "system"
        lines.append(
            f"{ind}  {c.type} refresh={_seconds(d.refresh_rate)}{failure}"
            f" respect_ttl={d.respect_dns_ttl} family={d.lookup_family} resolvers={resolvers}"
        )
    if c.eds_file is not None:
        lines.append(
            f"{ind}  eds file={c.eds_file.path} watch={_seconds(c.eds_file.watch_interval)}"
        )
    if c.tls is not None:
        v = c.tls.validation
        ca = v.trusted_ca_file if v is not None and v.trusted_ca_file else "none (unverified)"
        lines.append(
            f"{ind}  tls sni={c.tls.sni or '(endpoint host)'} ca={ca}"
            f" alpn={','.join(c.tls.alpn_protocols) or '-'}"
        )
    if c.health_check is not None:
        lines.append(f"{ind}  {_health_check(c.health_check)}")
    if c.circuit_breakers != CircuitBreakers():
        cb, default = c.circuit_breakers, CircuitBreakers()
        changed = [
            f"{f.name}={getattr(cb, f.name)}"
            for f in attrs.fields(CircuitBreakers)
            if getattr(cb, f.name) != getattr(default, f.name)
        ]
        lines.append(f"{ind}  circuit_breakers " + " ".join(changed))
    od = c.outlier_detection
    if od is not None:
        lines.append(
            f"{ind}  outlier_detection consecutive_5xx={od.consecutive_5xx}"
            f" interval={_seconds(od.interval)}"
            f" base_ejection_time={_seconds(od.base_ejection_time)}"
            f" max_ejection_percent={od.max_ejection_percent}"
            f" success_rate={od.enforcing_success_rate}%"
            f" failure_percentage={od.enforcing_failure_percentage}%"
        )
    if not c.endpoints and c.eds_file is None:
        lines.append(f"{ind}  (no endpoints)")
    lines.extend(
        f"{ind}  endpoint {e.address} weight={e.weight}"
        + (f" priority={e.priority}" if e.priority else "")
        for e in c.endpoints
    )
    return lines


def _health_check(hc: HealthCheck) -> str:
    ch = hc.checker
    if isinstance(ch, TcpHealthCheck):
        receive = ",".join(b.hex() for b in ch.receive)
        kind = f"tcp send={ch.send.hex() or '-'} receive={receive or '-'}"
    elif isinstance(ch, GrpcHealthCheck):
        kind = f"grpc service={ch.service_name or '-'} authority={ch.authority or '(cluster)'}"
    elif ch is None:
        codes = ",".join(
            str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}" for lo, hi in hc.expected_statuses
        )
        kind = f"http path={hc.path} expected={codes}"
    else:
        kind = _describe(ch)
    return (
        f"health_check {kind} interval={_seconds(hc.interval)} timeout={_seconds(hc.timeout)}"
        f" unhealthy={hc.unhealthy_threshold} healthy={hc.healthy_threshold}"
    )


def _describe(value: object) -> str:
    """One line for a value this module has no special form for (e.g. a filter)."""
    cls = type(value)
    if not attrs.has(cls):
        return repr(value)
    fields = ", ".join(
        f"{f.name}={getattr(value, f.name)!r}"
        for f in attrs.fields(cls)
        if f.name != "location" and f.repr
    )
    return f"{cls.__name__}({fields})"
