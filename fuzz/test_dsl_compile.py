"""Invariant: compiling any builder program returns a frozen, hashable,
picklable config graph, or raises MeshError listing every error with the
file:line of its builder call, never another exception.

Hypothesis writes random mesh programs with the public DSL (`trioproxy.dsl`):
clusters (endpoints, lb, connect timeout, protocol, health checks, outlier
detection), listeners with `http()` chains (codec, timeouts, limits, access
logs) or `tcp_proxy()`, routes (prefix/path/regex matches with header and
query rules; cluster, name, `weighted`, `redirect` and `direct_response`
targets; timeout, retry and rewrite options), vhosts and an admin server.
Each value is drawn valid or invalid; the strategy counts the invalid ones.

1. `compile` raises nothing but `MeshError`;
2. a program without an invalid value compiles; one with `k` invalid values
   raises `MeshError` with at least `k` issues (every error is reported, not
   only the first);
3. every issue points at a builder call in this file (`file:line`), and
   `str(error)` is one `file:line: message` line per issue;
4. a compiled graph is made of frozen attrs classes and tuples only, hashes,
   survives pickling, and everything the runtime compiles from it later (the
   access-log formats) compiles.
"""

from __future__ import annotations

import pickle
from typing import Any, get_args

import attrs
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.conftest import fuzz_settings, time_capped
from trioproxy import dsl
from trioproxy.codec.access_log_format import compile_format
from trioproxy.config import AccessLog, Mesh
from trioproxy.config.graph import CodecType, LbPolicy

THIS_FILE = __file__


class Program:
    """Counts the invalid values drawn while a program is built."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.defects = 0
        self.notes: list[str] = []

    def pick(self, what: str, good: list[Any], bad: list[Any]) -> Any:
        """A value for `what`: usually one of `good`, sometimes one of `bad`."""
        if bad and self.draw(st.integers(0, 7)) == 0:
            value = self.draw(st.sampled_from(bad))
            self.defects += 1
            self.notes.append(f"bad {what}: {value!r}")
            return value
        return self.draw(st.sampled_from(good))

    def maybe(self) -> bool:
        return bool(self.draw(st.booleans()))


DURATIONS = [0.25, "250ms", "1m30s", 5, "2s", 1]
BAD_DURATIONS = [-1, "soon", float("nan"), True, "5 s", float("inf")]
FORMATS = [None, "%RESPONSE_CODE%\n", "[%START_TIME%] %REQ(:PATH)% %%\n", "plain\n"]
BAD_FORMATS = ["%BOGUS%\n", "%REQ%", "100%", "%RESPONSE_CODE(x)%", "%START_TIME(%Q)%"]


def _cluster(p: Program, i: int) -> dsl.ClusterBuilder:
    name = p.pick("cluster name", [f"c{i}"], [i + 5, b"c%d" % i])  # distinct: no dedup
    eps = [
        p.pick(
            "endpoint",
            ["127.0.0.1:8080", "10.0.0.1:1", "svc.internal:80", "[::1]:9000", "localhost:81"],
            ["127.0.0.1", "host:0", "a b:80", 80, "[::1]:x", "1.2.3.4:70000", "::1:80"],
        )
        for _ in range(p.draw(st.integers(1, 2)))
    ]
    cb = dsl.cluster(
        name,
        *eps,
        lb=p.pick("lb", list(get_args(LbPolicy)), ["fastest", 3]),
        connect_timeout=p.pick("connect_timeout", DURATIONS, [*BAD_DURATIONS, 0]),
    )
    if p.maybe():
        cb = cb.endpoint(
            p.pick("endpoint", ["1.2.3.4:80"], ["1.2.3.4"]),
            weight=p.pick("weight", [1, 7], [0, -2, "3"]),
        )
    if p.maybe():
        cb = cb.http2() if p.maybe() else cb.http1()
    if p.maybe():
        cb = cb.health_check(
            p.pick("health check path", ["/healthz", "/"], ["healthz", ""]),
            expected_statuses=p.pick("expected statuses", [(200,), (200, 204)], [(99,), (600,)]),
            interval=p.pick("interval", DURATIONS, [*BAD_DURATIONS, 0]),
            unhealthy_threshold=p.pick("unhealthy_threshold", [1, 3], [0, -1, 2.5]),
        )
    if p.maybe():
        cb = cb.outlier_detection(
            consecutive_5xx=p.pick("consecutive_5xx", [1, 5], [0, "5"]),
            max_ejection_percent=p.pick("max_ejection_percent", [0, 10, 100], [101, -1]),
            base_ejection_time=p.pick("base_ejection_time", DURATIONS, BAD_DURATIONS),
        )
    return cb


def _match(p: Program) -> dsl.MatchBuilder:
    m = p.pick(
        "match",
        [dsl.prefix("/"), dsl.prefix("/a"), dsl.path("/x"), dsl.regex("^/r.*$"), dsl.grpc()],
        [dsl.prefix("a"), dsl.regex("("), dsl.path("x")],
    )
    if p.maybe():
        m = m.header(
            p.pick("header name", ["x-a", ":method"], [""]),
            exact=p.pick("header exact", ["1", None], []),
        )
    if p.maybe():
        kinds = p.pick("query matcher", [{"present": True}, {"exact": "v"}], [{"regex": "["}])
        m = m.query("q", **kinds)
    if p.maybe():
        m = m.case_insensitive()
    return m


def _target(p: Program, clusters: list[dsl.ClusterBuilder]) -> tuple[Any, bool]:
    """A route target, and whether it forwards (takes route options)."""
    kind = p.draw(st.sampled_from(["builder", "name", "weighted", "redirect", "direct"]))
    if kind == "builder":
        return p.draw(st.sampled_from(clusters)), True
    if kind == "name":
        return p.pick("cluster reference", [c.name for c in clusters], ["nope"]), True
    if kind == "weighted":
        chosen = p.draw(st.lists(st.sampled_from(clusters), min_size=1, unique_by=id))
        names = list(dict.fromkeys(c.name for c in chosen))
        entries = [(n, p.pick("weight", [1, 80], [0, "x"])) for n in names]
        return dsl.weighted(*entries), True
    if kind == "redirect":
        return dsl.redirect(
            code=p.pick("redirect code", [301, 302, 308], [200, 399]),
            path=p.pick("redirect path", [None, "/new"], ["new"]),
            port=p.pick("redirect port", [None, 8443], [0, 70000]),
        ), False
    return dsl.direct_response(
        p.pick("direct status", [200, 404, 503], [99, 600]), body=p.pick("body", ["ok", b"x"], [3])
    ), False


def _http(p: Program, clusters: list[dsl.ClusterBuilder]) -> dsl.HttpBuilder:
    hb = dsl.http(
        stat_prefix=p.pick("stat_prefix", [None, "ingress"], [""]),
        codec=p.pick("codec", list(get_args(CodecType)), ["h3", None]),
        idle_timeout=p.pick("idle_timeout", DURATIONS, BAD_DURATIONS),
        stream_idle_timeout=p.pick("stream_idle_timeout", DURATIONS, BAD_DURATIONS),
        max_request_headers_kb=p.pick("max_request_headers_kb", [1, 60, 8192], [0, 8193, "60"]),
        max_headers_count=p.pick("max_headers_count", [1, 100], [0, -5]),
        server_name=p.pick("server_name", ["edge", ""], [5]),
    )
    for _ in range(p.draw(st.integers(0, 2))):
        hb = hb.access_log(
            p.pick("access log path", ["-", "/dev/stderr"], [""]),
            format=p.pick("access log format", FORMATS, BAD_FORMATS),
        )
    for _ in range(p.draw(st.integers(1, 3))):
        target, forwards = _target(p, clusters)
        options: dict[str, Any] = {}
        if forwards and p.maybe():
            options["timeout"] = p.pick("route timeout", ["2s", 0, 30], BAD_DURATIONS)
            options["prefix_rewrite"] = p.pick("prefix_rewrite", [None, "/v2/"], [7])
            if p.maybe():
                options["retry"] = dsl.retry(
                    p.pick("retry on", ["5xx", "reset,connect-failure"], ["sometimes", ""]),
                    num_retries=p.pick("num_retries", [0, 2], [-1, 1.5]),
                    status_codes=p.pick("status codes", [(), (503,)], [(42,)]),
                )
        elif not forwards and p.draw(st.integers(0, 7)) == 0:
            options["timeout"] = "1s"  # not allowed with redirect/direct_response
            p.defects += 1
            p.notes.append("route option on a local target")
        hb = hb.route(_match(p), target, **options)
    return hb


@st.composite
def programs(draw: st.DrawFn) -> tuple[dsl.MeshBuilder, Program]:
    p = Program(draw)
    clusters = [_cluster(p, i) for i in range(draw(st.integers(1, 3)))]
    # Every cluster is a mesh item: one referenced only by name must be defined.
    items: list[Any] = list(clusters)
    for i in range(draw(st.integers(1, 2))):
        lb = dsl.listener(
            p.pick("listener name", [f"l{i}"], [""]),
            p.pick(
                "listener address",
                ["127.0.0.1:0", ":0", "[::1]:0", f"127.0.0.1:{18000 + i}"],
                ["127.0.0.1", "1.2.3.4.5:80", ":99999", "example.com:80", "[::1]"],
            ),
        )
        if draw(st.integers(0, 4)) == 0:
            lb = lb.chain(dsl.tcp_proxy(draw(st.sampled_from(clusters))))
        else:
            lb = lb.chain(_http(p, clusters))
        if p.maybe():
            lb = lb.stat_prefix(p.pick("listener stat_prefix", ["edge"], [""]))
        items.append(lb)
    if p.maybe():
        items.append(dsl.admin(p.pick("admin address", ["127.0.0.1:0"], ["nowhere", ":-1"])))
    if p.draw(st.integers(0, 9)) == 0:
        items.append(items[-1])  # the same listener name, or a second admin
        p.defects += 1
        p.notes.append("repeated item")
    return dsl.mesh(*items), p


def _walk(node: object, path: str = "mesh") -> None:
    """Every node is a frozen attrs instance, a tuple/frozenset or a scalar."""
    if attrs.has(type(node)):
        fields = attrs.fields(type(node))
        for a in fields:
            _walk(getattr(node, a.name), f"{path}.{a.name}")
        if fields:
            try:
                setattr(node, fields[0].name, None)
            except attrs.exceptions.FrozenInstanceError:
                pass
            else:
                raise AssertionError(f"{path} is mutable")
    elif isinstance(node, tuple | frozenset):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]")
    else:
        assert not isinstance(node, list | dict | set | bytearray), f"{path}: {type(node)}"


def _access_logs(node: object) -> list[AccessLog]:
    if isinstance(node, AccessLog):
        return [node]
    if attrs.has(type(node)):
        return [x for a in attrs.fields(type(node)) for x in _access_logs(getattr(node, a.name))]
    if isinstance(node, tuple):
        return [x for item in node for x in _access_logs(item)]
    return []


def _given(defects: int, *items: Any) -> tuple[dsl.MeshBuilder, Program]:
    """A hand-written program with `defects` invalid values, for `@example`."""
    p = Program(lambda strategy: None)  # type: ignore[arg-type,return-value]
    p.defects = defects
    return dsl.mesh(*items), p


@fuzz_settings(scale=5)
@given(program=programs())
# Regression: a bad access-log format compiled, and the server failed at start.
@example(
    program=_given(
        1,
        dsl.listener("l", ":0")
        .chain(dsl.http().access_log("-", format="%BOGUS%\n"))
        .route(dsl.prefix("/"), dsl.direct_response(200)),
    )
)
# Regression: an endpoint with a bad address had its bad weight left unreported.
@example(
    program=_given(
        2,
        dsl.cluster("c", dsl.endpoint("1.2.3.4", weight=0)),
        dsl.listener("l", ":0").route(dsl.prefix("/"), "c"),
    )
)
@time_capped
def test_random_programs(program: tuple[dsl.MeshBuilder, Program]) -> None:
    builder, p = program
    try:
        graph = builder.compile()
    except dsl.MeshError as exc:
        assert p.defects, f"a valid program was refused:\n{exc}"
        assert len(exc.issues) >= p.defects, (
            f"{p.defects} invalid values ({p.notes}) but {len(exc.issues)} issues:\n{exc}"
        )
        lines = str(exc).split("\n")
        assert len(lines) == len(exc.issues)
        for issue, line in zip(exc.issues, lines, strict=True):
            assert issue.location is not None, f"no location: {issue.message}"
            assert issue.location.file == THIS_FILE, issue.location
            assert issue.location.line >= 1
            assert line == f"{issue.location.file}:{issue.location.line}: {issue.message}"
        return
    assert not p.defects, f"compiled although {p.notes}"
    assert isinstance(graph, Mesh)
    _walk(graph)
    hash(graph)
    assert pickle.loads(pickle.dumps(graph)) == graph
    for log in _access_logs(graph):
        compile_format(log.format)
