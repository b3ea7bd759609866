"""The DSL's observability items: `statsd(...)`, `runtime({...})` and
`admin(..., token=...)`, with their compile errors and `file:line`s."""

from __future__ import annotations

import pickle

import pytest
from trioproxy.dsl import (
    MatchBuilder,
    MeshBuilder,
    MeshError,
    admin,
    direct_response,
    listener,
    mesh,
    prefix,
    runtime,
    statsd,
)

from trioproxy.config import RuntimeFraction, SocketAddress, StatsdSink
from trioproxy.config.dump import to_jsonable, to_tree


def ok() -> MeshBuilder:
    return mesh(listener("l", ":0").route(prefix("/"), direct_response(200)))


def errors(m: MeshBuilder) -> list[str]:
    with pytest.raises(MeshError) as info:
        m.compile()
    return [i.message for i in info.value.issues]


# --------------------------------------------------------------------------- statsd


def test_statsd_defaults_are_envoys() -> None:
    built = ok().add(statsd()).compile()
    assert built.stats_sinks == (
        StatsdSink(address=SocketAddress(host="127.0.0.1", port=8125), prefix="envoy", tags=False),
    )
    assert built.stats_flush_interval == 5.0
    s = ok().add(statsd("[::1]:9125", prefix="edge", tags=True)).compile().stats_sinks[0]
    assert (s.address, s.prefix, s.tags) == (SocketAddress(host="::1", port=9125), "edge", True)


def test_statsd_errors() -> None:
    assert errors(ok().add(statsd("statsd.internal:8125"))) == [
        "statsd address 'statsd.internal:8125' must be an IP address and port"
    ]
    assert errors(ok().add(statsd("127.0.0.1"))) != []
    assert errors(ok().add(statsd(prefix="my prefix"))) == [
        "bad statsd prefix 'my prefix' (letters, digits, '_', '-', '.')"
    ]
    assert errors(ok().add(statsd(tags="yes"))) == [  # type: ignore[arg-type]
        "statsd tags must be True or False, got 'yes'"
    ]


def test_statsd_error_points_at_the_call() -> None:
    sink = statsd("nowhere:1")
    line = sink._location.line  # type: ignore[union-attr]
    with pytest.raises(MeshError) as info:
        ok().add(sink).compile()
    assert f"test_dsl_observability.py:{line}: " in str(info.value)


# --------------------------------------------------------------------------- runtime


def test_runtime_static_layer() -> None:
    built = (
        ok()
        .add(runtime({"upstream.use_retry": 50, "flag": True}), runtime({"name": "x", "f": 0.5}))
        .compile()
    )
    assert built.runtime == (("f", 0.5), ("flag", True), ("name", "x"), ("upstream.use_retry", 50))
    assert pickle.loads(pickle.dumps(built)) == built
    assert hash(built)


def test_runtime_errors() -> None:
    assert errors(ok().add(runtime({"a": 1}), runtime({"a": 2}))) == [
        "runtime key 'a' is set twice"
    ]
    assert errors(ok().add(runtime({"a": [1]}))) == [  # type: ignore[dict-item]
        "runtime key 'a': value must be a string, number or bool, got list"
    ]
    assert errors(ok().add(runtime({"": 1}))) == ["runtime key must be a non-empty string, got ''"]
    assert errors(ok().add(runtime(["a"]))) == [  # type: ignore[arg-type]
        "runtime() takes a dict of key: value, got list"
    ]


# --------------------------------------------------------------------------- admin token


def test_admin_on_loopback_needs_no_token() -> None:
    for address in ("127.0.0.1:8001", "localhost:0", "[::1]:8001"):
        built = ok().add(admin(address)).compile()
        assert built.admin is not None and built.admin.token is None


def test_admin_elsewhere_needs_a_token() -> None:
    a = admin(":9901")
    assert errors(ok().add(a)) == [
        "admin on 0.0.0.0:9901 is reachable from other hosts: give it a token "
        "(admin(..., token=os.environ[...])) or bind it to 127.0.0.1"
    ]
    with pytest.raises(MeshError) as info:
        ok().add(a).compile()
    assert f":{a._location.line}: admin on 0.0.0.0:9901" in str(info.value)  # type: ignore[union-attr]
    assert errors(ok().add(admin("10.0.0.1:9901", token=""))) == [
        "admin token must be a non-empty string (or None)",
        "admin on 10.0.0.1:9901 is reachable from other hosts: give it a token "
        "(admin(..., token=os.environ[...])) or bind it to 127.0.0.1",
    ]


def test_admin_token_is_never_printed() -> None:
    built = ok().add(admin(":9901", token="s3cret-token")).compile()
    assert built.admin is not None and built.admin.token == "s3cret-token"
    assert "s3cret" not in repr(built)
    assert "s3cret" not in repr(admin(":9901", token="s3cret-token"))
    dumped = to_jsonable(built)
    assert dumped["admin"] == {"address": {"host": "0.0.0.0", "port": 9901}, "token": "[redacted]"}
    assert "s3cret" not in to_tree(built)


def test_runtime_fraction_is_plain_data() -> None:
    f = RuntimeFraction(numerator=5, runtime_key="routing.canary")
    assert f.denominator == 100
    assert pickle.loads(pickle.dumps(f)) == f


def test_runtime_fraction_in_the_dsl() -> None:
    def with_match(m: MatchBuilder) -> MeshBuilder:
        return mesh(listener("l", ":0").route(m, direct_response(200)))

    built = with_match(prefix("/").runtime_fraction(5, key="routing.canary")).compile()
    route = built.listeners[0].filter_chains[0].filters[0].route_config.virtual_hosts[0].routes[0]  # type: ignore[attr-defined]
    assert route.match.runtime_fraction == RuntimeFraction(
        numerator=5, denominator=100, runtime_key="routing.canary"
    )
    m = prefix("/").runtime_fraction(5, denominator=1_000_000)
    assert (
        with_match(m)
        .compile()
        .listeners[0]
        .filter_chains[0]
        .filters[0]
        .route_config.virtual_hosts[0]  # type: ignore[attr-defined]
        .routes[0]
        .match.runtime_fraction.denominator
        == 1_000_000
    )
    assert errors(with_match(prefix("/").runtime_fraction(5, denominator=1000))) == [
        "bad runtime_fraction denominator 1000 (100, 10000 or 1000000)"
    ]
    assert errors(with_match(prefix("/").runtime_fraction(101))) == [
        "bad runtime_fraction numerator 101 (expected an integer 0..100)"
    ]


def test_show_prints_sinks_runtime_and_whether_admin_has_a_token() -> None:
    built = (
        ok()
        .add(admin(":9901", token="s3cret"), statsd(tags=True), runtime({"a.b": 5, "c": "x"}))
        .compile()
    )
    tree = to_tree(built)
    assert "  admin 0.0.0.0:9901 (token)\n" in tree
    assert "  statsd 127.0.0.1:8125 prefix 'envoy', tags\n" in tree
    assert "  runtime\n    a.b = 5\n    c = 'x'\n" in tree
    assert "s3cret" not in tree
