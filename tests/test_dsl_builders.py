"""DSL builders: immutability, equality, location capture, and the value parsers.

Compile-time validation lives in test_dsl_compile.py; this file checks what
builders record and the pure parsers in `trioproxy.dsl._values`.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import attrs
import pytest
from trioproxy.dsl import (
    ClusterBuilder,
    HttpBuilder,
    ListenerBuilder,
    VhostBuilder,
    _errors,
    admin,
    cluster,
    demo_service,
    direct_response,
    endpoint,
    http,
    listener,
    mesh,
    prefix,
    redirect,
    vhost,
    weighted,
)
from trioproxy.dsl._values import (
    BadValue,
    parse_bind_address,
    parse_duration,
    parse_endpoint_address,
)

from trioproxy.config import FilterChain, HttpConnectionManager, Location, SocketAddress

HERE = __file__


def line() -> int:
    """The caller's line number."""
    return sys._getframe(1).f_lineno


# --------------------------------------------------------------------------- immutability

# (builder, method name, args): every method must return a new builder and leave
# the receiver equal to a snapshot taken before the call.
_BASE_LISTENER = listener("l", ":0")
_BASE_HTTP = http()
_BASE_CLUSTER = cluster("c", "127.0.0.1:1")
_BASE_MATCH = prefix("/")
_BASE_VHOST = vhost("v")
_BASE_MESH = mesh(_BASE_LISTENER)

METHOD_CALLS = [
    (_BASE_LISTENER, "chain", (http(),), {}),
    (_BASE_LISTENER, "route", (prefix("/"), "c"), {}),
    (_BASE_LISTENER, "vhost", (vhost("v"),), {}),
    (_BASE_LISTENER, "stat_prefix", ("s",), {}),
    (_BASE_HTTP, "access_log", (), {}),
    (_BASE_HTTP, "route", (prefix("/"), "c"), {}),
    (_BASE_HTTP, "vhost", (vhost("v"),), {}),
    (_BASE_HTTP, "filter", (object(),), {}),
    (_BASE_CLUSTER, "endpoint", ("127.0.0.1:2",), {}),
    (_BASE_CLUSTER, "lb", ("random",), {}),
    (_BASE_CLUSTER, "connect_timeout", ("1s",), {}),
    (_BASE_MATCH, "header", ("x-a",), {"exact": "1"}),
    (_BASE_MATCH, "query", ("q",), {"prefix": "a"}),
    (_BASE_MATCH, "case_insensitive", (), {}),
    (_BASE_VHOST, "route", (prefix("/"), "c"), {}),
    (_BASE_MESH, "add", (admin(),), {}),
]


@pytest.mark.parametrize(
    ("builder", "method", "args", "kwargs"),
    METHOD_CALLS,
    ids=[f"{type(b).__name__}.{m}" for b, m, _, _ in METHOD_CALLS],
)
def test_methods_return_new_builders(
    builder: object, method: str, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    snapshot = attrs.evolve(builder)  # type: ignore[misc]
    result = getattr(builder, method)(*args, **kwargs)
    assert result is not builder
    assert type(result) is type(builder)
    assert result != builder
    assert builder == snapshot


def test_builders_are_frozen() -> None:
    b = listener("l", ":0")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        b._name = "other"  # type: ignore[misc]


def test_shared_fragment_extends_independently() -> None:
    base = listener("l", ":0").chain(http())
    a = base.route(prefix("/a"), "c")
    b = base.route(prefix("/b"), "c")
    assert a != b
    assert base == listener("l", ":0").chain(http())


def test_equality_ignores_location() -> None:
    a = cluster("c", "127.0.0.1:1")
    b = cluster("c", "127.0.0.1:1")
    assert a._location != b._location
    assert a == b
    assert hash(a) == hash(b)
    assert cluster("c").endpoint("127.0.0.1:1") == a


def test_cluster_name_property() -> None:
    assert cluster("svc").name == "svc"
    assert listener("ingress", ":0").name == "ingress"


# --------------------------------------------------------------------------- structure


def _http_of(b: ListenerBuilder, index: int = -1) -> HttpBuilder:
    chain = b._chains[index].value
    assert isinstance(chain, HttpBuilder)
    return chain


def test_listener_route_adds_implicit_chain_and_default_vhost() -> None:
    b = listener("l", ":0").route(prefix("/a"), "c").route(prefix("/b"), "c")
    assert len(b._chains) == 1
    hb = _http_of(b)
    assert hb._stat_prefix is None  # the listener's name at compile time
    (vh,) = (g.value for g in hb._vhosts)
    assert isinstance(vh, VhostBuilder)
    assert vh._name == "default"
    assert vh._domains == ("*",)
    assert len(vh._routes) == 2


def test_listener_route_goes_to_last_chain() -> None:
    b = listener("l", ":0").chain(http("one")).chain(http("two")).route(prefix("/"), "c")
    assert len(b._chains) == 2
    assert _http_of(b, 0)._vhosts == ()
    assert len(_http_of(b, 1)._vhosts) == 1


def test_listener_vhost_adds_implicit_chain() -> None:
    b = listener("l", ":0").vhost(vhost("api", "api.example.com"))
    assert len(b._chains) == 1
    (g,) = _http_of(b)._vhosts
    assert g.value == vhost("api", "api.example.com")


def test_route_joins_explicit_default_vhost() -> None:
    hb = http().vhost(vhost("default", "*")).route(prefix("/"), "c")
    (g,) = hb._vhosts
    assert len(g.value._routes) == 1  # type: ignore[attr-defined]


def test_cluster_string_endpoints_become_endpoint_builders() -> None:
    c = cluster("c", "127.0.0.1:1", endpoint("127.0.0.1:2", weight=5))
    assert c._endpoints == (endpoint("127.0.0.1:1"), endpoint("127.0.0.1:2", weight=5))


def test_vhost_default_domains() -> None:
    assert vhost("v")._domains == ("*",)
    assert vhost("v", "a.com", "b.com")._domains == ("a.com", "b.com")


def test_weighted_accepts_builders() -> None:
    c = cluster("c", "127.0.0.1:1")
    w = weighted((c, 1), ("d", 2))
    assert w._entries == ((c, 1), ("d", 2))


def test_builders_never_raise_on_nonsense() -> None:
    # Wrong types and values are recorded; compile reports them.
    listener(42, None).route("nope", 3.5, timeout=[1])  # type: ignore[arg-type]
    cluster(None, 7, lb=None)  # type: ignore[arg-type]
    redirect(code="x")  # type: ignore[arg-type]
    direct_response("x")  # type: ignore[arg-type]
    demo_service("", "")
    mesh(1, "two")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- locations


def test_location_is_the_callers_line() -> None:
    first = line() + 1
    b = listener("l", ":0")
    assert b._location == Location(file=HERE, line=first)


def test_chained_calls_record_their_own_lines() -> None:
    start = line() + 1
    b = (
        listener("l", ":0")  # start + 1
        .chain(http())  # start + 2
        .route(  # start + 3
            prefix("/"),  # start + 4
            "c",
        )
        .stat_prefix("s")  # start + 7
    )
    assert b._location == Location(file=HERE, line=start + 1)
    assert b._chains[0].location == Location(file=HERE, line=start + 2)
    vh = _http_of(b)._vhosts[0].value
    (route,) = vh._routes  # type: ignore[attr-defined]
    assert route.location == Location(file=HERE, line=start + 3)
    assert route.match._location == Location(file=HERE, line=start + 4)
    assert b._stat_prefix is not None
    assert b._stat_prefix.location == Location(file=HERE, line=start + 7)


def test_implicit_chain_points_at_route_call() -> None:
    start = line() + 1
    b = listener("l", ":0").route(prefix("/"), "c")
    assert b._chains[0].location == Location(file=HERE, line=start)
    assert _http_of(b)._location == Location(file=HERE, line=start)


def test_cluster_options_point_at_method_call() -> None:
    start = line() + 1
    c = cluster("c").lb("random").connect_timeout(1)
    assert c._lb.location == Location(file=HERE, line=start)
    assert c._connect_timeout.location == Location(file=HERE, line=start)


def test_recipe_frames_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder called inside a recipe module points at the recipe's caller."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "fake_recipe.py").write_text(
        textwrap.dedent(
            """
            from trioproxy.dsl import cluster

            def backend(name):
                return cluster(name, "127.0.0.1:1")
            """
        )
    )
    monkeypatch.setattr(_errors, "_SKIP_PREFIXES", (*_errors._SKIP_PREFIXES, f"{recipes}/"))
    monkeypatch.syspath_prepend(str(recipes))
    import fake_recipe  # type: ignore[import-not-found]

    try:
        here = line() + 1
        c: ClusterBuilder = fake_recipe.backend("svc")
        assert c._location == Location(file=HERE, line=here)
    finally:
        del sys.modules["fake_recipe"]


def test_dsl_frames_are_skipped_by_default() -> None:
    assert any(p.rstrip("/").endswith("dsl") for p in _errors._SKIP_PREFIXES)
    assert any(p.rstrip("/").endswith("recipes") for p in _errors._SKIP_PREFIXES)


# --------------------------------------------------------------------------- durations

DURATIONS = [
    (0, 0.0),
    (3, 3.0),
    (2.5, 2.5),
    ("0", 0.0),
    ("2.5", 2.5),
    ("250ms", 0.25),
    ("2s", 2.0),
    ("1.5s", 1.5),
    (".5s", 0.5),
    ("1m", 60.0),
    ("1h", 3600.0),
    ("1m30s", 90.0),
    ("1h0m1s", 3601.0),
]


@pytest.mark.parametrize(("raw", "seconds"), DURATIONS)
def test_parse_duration(raw: object, seconds: float) -> None:
    assert parse_duration(raw, "t") == pytest.approx(seconds)


BAD_DURATIONS = [-1, -0.5, "-1s", "", "s", "2x", "5 s", " 5s", "1d", "ms", True, None, [1]]


@pytest.mark.parametrize("raw", BAD_DURATIONS, ids=repr)
def test_parse_duration_rejects(raw: object) -> None:
    with pytest.raises(BadValue) as info:
        parse_duration(raw, "route timeout")
    assert str(info.value) == (
        f"bad duration {raw!r} for route timeout"
        " (expected seconds >= 0 or a string like '250ms', '2s', '1m')"
    )


def test_parse_duration_rejects_non_finite() -> None:
    for raw in (float("inf"), float("nan")):
        with pytest.raises(BadValue):
            parse_duration(raw, "t")


# --------------------------------------------------------------------------- addresses

BIND_ADDRESSES = [
    (":8000", "0.0.0.0", 8000),
    ("127.0.0.1:8000", "127.0.0.1", 8000),
    ("0.0.0.0:80", "0.0.0.0", 80),
    ("[::1]:8000", "::1", 8000),
    ("[::]:8000", "::", 8000),
    ("[0:0::1]:1", "::1", 1),
    ("localhost:8000", "127.0.0.1", 8000),
    (":0", "0.0.0.0", 0),
    ("127.0.0.1:65535", "127.0.0.1", 65535),
]


@pytest.mark.parametrize(("raw", "host", "port"), BIND_ADDRESSES)
def test_parse_bind_address(raw: str, host: str, port: int) -> None:
    assert parse_bind_address(raw, "listener 'l'") == SocketAddress(host=host, port=port)


_BIND_HINT = "expected 'host:port', ':port' or '[ipv6]:port' with an IP address or localhost"
BAD_BIND_ADDRESSES = [
    "8000",
    "",
    "127.0.0.1",
    "example.com:80",
    "::1:8000",
    "[::1]8000",
    "[127.0.0.1]:80",
    "[::1:80",
    "1.2.3.999:80",
    "01.2.3.4:80",
    " :80",
    ":80 ",
    None,
    8000,
]


@pytest.mark.parametrize("raw", BAD_BIND_ADDRESSES, ids=repr)
def test_parse_bind_address_rejects(raw: object) -> None:
    with pytest.raises(BadValue) as info:
        parse_bind_address(raw, "listener 'l'")
    assert str(info.value) == f"bad address {raw!r} for listener 'l' ({_BIND_HINT})"


BAD_PORTS = [
    ("127.0.0.1:65536", "65536"),
    (":99999", "99999"),
    (":", ""),
    (":http", "http"),
    (":-1", "-1"),
    ("[::1]:", ""),
    (":８０", "８０"),
]


@pytest.mark.parametrize(("raw", "port"), BAD_PORTS)
def test_parse_bind_address_bad_port(raw: str, port: str) -> None:
    with pytest.raises(BadValue) as info:
        parse_bind_address(raw, "listener 'l'")
    assert str(info.value) == (
        f"bad port {port!r} in address {raw!r} for listener 'l' (expected 0..65535)"
    )


ENDPOINTS = [
    ("127.0.0.1:80", "127.0.0.1", 80),
    ("[::1]:80", "::1", 80),
    ("localhost:80", "127.0.0.1", 80),
    ("service1:8080", "service1", 8080),
    ("Backend.Example.COM.:443", "backend.example.com", 443),
]


@pytest.mark.parametrize(("raw", "host", "port"), ENDPOINTS)
def test_parse_endpoint_address(raw: str, host: str, port: int) -> None:
    assert parse_endpoint_address(raw, "e") == SocketAddress(host=host, port=port)


@pytest.mark.parametrize(
    "raw", [":8000", "8000", "-bad-:80", "a..b:80", "1.2.3.999:80", "[x]:80", "under_score:80"]
)
def test_parse_endpoint_address_rejects(raw: str) -> None:
    with pytest.raises(BadValue) as info:
        parse_endpoint_address(raw, "an endpoint of cluster 'c'")
    assert str(info.value) == (
        f"bad address {raw!r} for an endpoint of cluster 'c'"
        " (expected 'host:port' or '[ipv6]:port' with an explicit host)"
    )


def test_parse_endpoint_address_port_zero() -> None:
    with pytest.raises(BadValue) as info:
        parse_endpoint_address("127.0.0.1:0", "e")
    assert str(info.value) == "bad port '0' in address '127.0.0.1:0' for e (expected 1..65535)"


def test_compiled_chain_is_an_hcm() -> None:
    m = mesh(listener("l", ":0").route(prefix("/"), direct_response(204))).compile()
    (chain,) = m.listeners[0].filter_chains
    assert isinstance(chain, FilterChain)
    (hcm,) = chain.filters
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.stat_prefix == "l"
