"""trioproxy.dsl: describe a mesh in typed Python and compile it to the config graph.

A mesh file builds a `mesh(...)` from immutable builders and exposes it as
`MESH` (or from a `build()` function)::

    from trioproxy.dsl import admin, cluster, http, listener, mesh, prefix

    service1 = cluster("service1", "127.0.0.1:8081", "127.0.0.1:8082", lb="least_request")

    MESH = mesh(
        listener("ingress", ":8000")
        .chain(http(stat_prefix="ingress_http").access_log("-"))
        .route(prefix("/service/1"), service1, timeout="2s"),
        admin("127.0.0.1:8001"),
    )

Builders never raise for mistakes; `compile_mesh` (or `MeshBuilder.compile`,
or `load_mesh` for a file) reports every problem at once in a `MeshError`,
one `file:line: message` per issue.

This package is the authoring layer only: the runtime never imports it.
"""

from ._builders import (
    AdminBuilder,
    ClusterBuilder,
    DemoServiceBuilder,
    DirectResponseBuilder,
    EndpointBuilder,
    HashPolicyBuilder,
    HedgeBuilder,
    HttpBuilder,
    ListenerBuilder,
    MatchBuilder,
    MeshBuilder,
    MeshItem,
    OverloadBuilder,
    RedirectBuilder,
    RetryBuilder,
    RuntimeBuilder,
    StatsdBuilder,
    Target,
    VhostBuilder,
    WeightedBuilder,
    admin,
    and_filter,
    cluster,
    demo_service,
    direct_response,
    duration_filter,
    endpoint,
    grpc,
    hash_cookie,
    hash_header,
    hash_query,
    hash_source_ip,
    hedge,
    http,
    listener,
    mesh,
    not_health_check_filter,
    or_filter,
    overload,
    path,
    prefix,
    redirect,
    regex,
    response_flag_filter,
    retry,
    runtime,
    runtime_filter,
    statsd,
    status_code_filter,
    vhost,
    weighted,
)
from ._compile import compile_mesh
from ._errors import MeshError, MeshIssue
from ._load import load_mesh
from ._tls_builders import SanBuilder, TcpProxyBuilder, TlsBuilder, san, tcp_proxy, tls
from ._values import Duration

__all__ = [
    "AdminBuilder",
    "ClusterBuilder",
    "DemoServiceBuilder",
    "DirectResponseBuilder",
    "Duration",
    "EndpointBuilder",
    "HashPolicyBuilder",
    "HedgeBuilder",
    "HttpBuilder",
    "ListenerBuilder",
    "MatchBuilder",
    "MeshBuilder",
    "MeshError",
    "MeshIssue",
    "MeshItem",
    "OverloadBuilder",
    "RedirectBuilder",
    "RetryBuilder",
    "RuntimeBuilder",
    "SanBuilder",
    "StatsdBuilder",
    "Target",
    "TcpProxyBuilder",
    "TlsBuilder",
    "VhostBuilder",
    "WeightedBuilder",
    "admin",
    "and_filter",
    "cluster",
    "compile_mesh",
    "demo_service",
    "direct_response",
    "duration_filter",
    "endpoint",
    "grpc",
    "hash_cookie",
    "hash_header",
    "hash_query",
    "hash_source_ip",
    "hedge",
    "http",
    "listener",
    "load_mesh",
    "mesh",
    "not_health_check_filter",
    "or_filter",
    "overload",
    "path",
    "prefix",
    "redirect",
    "regex",
    "response_flag_filter",
    "retry",
    "runtime",
    "runtime_filter",
    "san",
    "statsd",
    "status_code_filter",
    "tcp_proxy",
    "tls",
    "vhost",
    "weighted",
]
