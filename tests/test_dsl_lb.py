"""The DSL's load-balancing surface: `.lb(...)` options, endpoint priorities,
`.healthy_panic_threshold()`, and routes' `hash_policy=` — what each compiles
to, and the `file:line` errors for bad values."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trioproxy.dsl import (
    ClusterBuilder,
    MeshError,
    cluster,
    direct_response,
    endpoint,
    hash_cookie,
    hash_header,
    hash_query,
    hash_source_ip,
    listener,
    mesh,
    prefix,
    redirect,
)

from trioproxy.config import (
    CookieHashPolicy,
    Endpoint,
    HeaderHashPolicy,
    QueryParameterHashPolicy,
    RouteAction,
    SocketAddress,
    SourceIpHashPolicy,
)

HERE = __file__


def one_cluster(c: ClusterBuilder) -> object:
    return mesh(listener("l", ":0").route(prefix("/"), c)).compile().clusters[0]


def errors(build: object) -> list[tuple[int, str]]:
    """(line, message) of every issue; each must point into this file."""
    with pytest.raises(MeshError) as info:
        build.compile()  # type: ignore[attr-defined]
    out = []
    for issue in info.value.issues:
        assert issue.location is not None and issue.location.file == HERE, issue
        out.append((issue.location.line, issue.message))
    return out


# --------------------------------------------------------------------------- clusters


def test_ring_hash_with_options() -> None:
    c = one_cluster(
        cluster("c", "127.0.0.1:1").lb("ring_hash", minimum_ring_size=64, maximum_ring_size=4096)
    )
    assert c.lb_policy == "ring_hash"  # type: ignore[attr-defined]
    assert (c.minimum_ring_size, c.maximum_ring_size) == (64, 4096)  # type: ignore[attr-defined]


def test_defaults_are_envoys() -> None:
    c = one_cluster(cluster("c", "127.0.0.1:1", lb="maglev"))
    assert c.maglev_table_size == 65537  # type: ignore[attr-defined]
    assert c.minimum_ring_size == 1024  # type: ignore[attr-defined]
    assert c.maximum_ring_size == 8 * 1024 * 1024  # type: ignore[attr-defined]
    assert c.healthy_panic_threshold == 50.0  # type: ignore[attr-defined]
    assert c.active_request_bias == 1.0  # type: ignore[attr-defined]


def test_maglev_least_request_and_panic_options() -> None:
    c = one_cluster(cluster("c", "127.0.0.1:1").lb("maglev", table_size=251))
    assert c.maglev_table_size == 251  # type: ignore[attr-defined]
    c = one_cluster(
        cluster("c", "127.0.0.1:1")
        .lb("least_request", choice_count=3, active_request_bias=0.5)
        .healthy_panic_threshold(0)
    )
    assert (c.choice_count, c.active_request_bias) == (3, 0.5)  # type: ignore[attr-defined]
    assert c.healthy_panic_threshold == 0.0  # type: ignore[attr-defined]


def test_endpoint_priorities() -> None:
    c = one_cluster(
        cluster("c", "127.0.0.1:1", endpoint("127.0.0.1:2", priority=1)).endpoint(
            "127.0.0.1:3", weight=2, priority=2
        )
    )
    assert c.endpoints == (  # type: ignore[attr-defined]
        Endpoint(address=SocketAddress(host="127.0.0.1", port=1)),
        Endpoint(address=SocketAddress(host="127.0.0.1", port=2), priority=1),
        Endpoint(address=SocketAddress(host="127.0.0.1", port=3), weight=2, priority=2),
    )


def test_cluster_errors_point_at_the_call() -> None:
    start = sys._getframe().f_lineno
    m = mesh(
        listener("l", ":0").route(prefix("/"), direct_response(200)),
        cluster("a").lb("maglev", table_size=65536),  # start + 3
        cluster("b").lb("round_robin", minimum_ring_size=10),  # start + 4
        cluster("c", endpoint("127.0.0.1:1", priority=-1)),  # start + 5
        cluster("d").healthy_panic_threshold(101),  # start + 6
        cluster("e").lb("ring_hash", minimum_ring_size=4096, maximum_ring_size=1024),  # + 7
        cluster("f").lb("least_request", active_request_bias=-1),  # start + 8
    )
    got = [(line - start, msg) for line, msg in errors(m)]
    assert got == [
        (3, "table_size of cluster 'a' must be a prime number (Envoy), got 65536"),
        (4, "minimum_ring_size of cluster 'b' applies to lb policy 'ring_hash', not 'round_robin'"),
        (
            5,
            "bad priority -1 for endpoint 127.0.0.1:1 of cluster 'c' (expected an integer 0..127)",
        ),
        (6, "bad healthy_panic_threshold 101 of cluster 'd' (expected a percentage 0..100)"),
        (7, "cluster 'e': minimum_ring_size 4096 exceeds maximum_ring_size 1024"),
        (8, "bad active_request_bias of cluster 'f' -1 (expected a number 0..100)"),
    ]


# --------------------------------------------------------------------------- hash policy


def _action(**route: object) -> RouteAction:
    c = cluster("c", "127.0.0.1:1", lb="ring_hash")
    built = mesh(listener("l", ":0").route(prefix("/"), c, **route)).compile()  # type: ignore[arg-type]
    (chain,) = built.listeners[0].filter_chains
    action = chain.filters[0].route_config.virtual_hosts[0].routes[0].action  # type: ignore[attr-defined]
    assert isinstance(action, RouteAction)
    return action


def test_hash_policy_compiles_in_order() -> None:
    action = _action(
        hash_policy=[
            hash_header("X-User"),
            hash_cookie("session", ttl="1h", path="/"),
            hash_source_ip(),
            hash_query("user", terminal=True),
        ]
    )
    assert action.hash_policy == (
        HeaderHashPolicy(name="x-user"),
        CookieHashPolicy(name="session", ttl=3600, path="/"),
        SourceIpHashPolicy(),
        QueryParameterHashPolicy(name="user", terminal=True),
    )


def test_no_hash_policy_by_default_and_session_cookie() -> None:
    assert _action().hash_policy == ()
    (p,) = _action(hash_policy=[hash_cookie("s", ttl=0)]).hash_policy
    assert p == CookieHashPolicy(name="s", ttl=0)


def test_hash_policy_errors_point_at_the_call() -> None:
    start = sys._getframe().f_lineno
    c = cluster("c", "127.0.0.1:1", lb="ring_hash")
    m = mesh(
        listener("l", ":0")
        .route(prefix("/a"), c, hash_policy=[hash_cookie("bad name")])  # start + 4
        .route(prefix("/b"), c, hash_policy=[hash_cookie("s", path="nope")])  # start + 5
        .route(prefix("/c"), c, hash_policy=[hash_header("")])  # start + 6
        .route(prefix("/d"), c, hash_policy=["x-user"])  # type: ignore[list-item]  # start + 7
        .route(prefix("/e"), redirect(path="/"), hash_policy=[hash_source_ip()])  # start + 8
        .route(prefix("/f"), c, hash_policy=[hash_cookie("s", ttl="soon")]),  # start + 9
    )
    got = [(line - start, msg) for line, msg in errors(m)]
    assert [line for line, _ in got] == [4, 5, 6, 7, 8, 9]
    assert got[0][1] == "bad cookie name 'bad name' in hash_cookie()"
    assert got[1][1] == "bad cookie path 'nope' in hash_cookie() (must start with '/')"
    assert "hash_header name must be a non-empty string" in got[2][1]
    assert "a hash_policy entry must be hash_header(...)" in got[3][1]
    assert (
        got[4][1]
        == "route option hash_policy= needs a cluster or weighted() target, not redirect()"
    )
    assert "ttl of hash_cookie('s')" in got[5][1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-3, 300), st.integers(-2, 200)), min_size=1, max_size=5),
)
def test_endpoint_weights_and_priorities_compile_or_fail_with_a_line(
    eps: list[tuple[int, int]],
) -> None:
    builders = [
        endpoint(f"127.0.0.1:{i + 1}", weight=w, priority=p) for i, (w, p) in enumerate(eps)
    ]
    m = mesh(listener("l", ":0").route(prefix("/"), cluster("c", *builders)))
    valid = all(w >= 1 and 0 <= p <= 127 for w, p in eps)
    if valid:
        c = m.compile().clusters[0]
        assert [(e.weight, e.priority) for e in c.endpoints] == eps
    else:
        bad = [i for i, (w, p) in enumerate(eps) if not (w >= 1 and 0 <= p <= 127)]
        got = errors(m)
        assert len(got) == len(bad)
        assert all(f"127.0.0.1:{i + 1}" in msg for i, (_, msg) in zip(bad, got, strict=True))
