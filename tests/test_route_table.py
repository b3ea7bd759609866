"""`RouteTable` as a pure function: config objects in, (vhost, route) out.

The tables follow Envoy (route_components.proto and its router code):

- virtual hosts: exact domain, then `*.suffix` (longest first), then
  `prefix.*` (longest first), then `*`; a wildcard never matches the empty
  string; host matching is case-insensitive. trioproxy ignores the port of
  the Host header (Envoy's `ignore_port_in_host_matching`).
- routes: tried in order, the first match wins; `prefix`, `path` and
  `regex` see the path without its query; `regex` must match all of it;
  `case_sensitive` does not apply to regexes.
- header matchers: a missing header only matches "absent"; several values
  are joined with ","; `invert` flips a value match.
- query matchers: not percent-decoded, first value of a repeated name.
"""

from __future__ import annotations

import pytest

from trioproxy.codec.stream import RequestHead
from trioproxy.config import (
    DirectResponseAction,
    HeaderMatcher,
    QueryParameterMatcher,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from trioproxy.http.route_table import RouteTable, host_without_port

OK = DirectResponseAction(status=200)


def req(
    path: str = "/",
    authority: str = "example.com",
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
) -> RequestHead:
    return RequestHead(
        method=method.encode(),
        path=path.encode("latin-1"),
        authority=authority.encode("latin-1"),
        headers=[(k.encode(), v.encode("latin-1")) for k, v in headers or []],
    )


def route(name: str, match: RouteMatch | None = None) -> Route:
    return Route(name=name, match=match or RouteMatch(), action=OK)


def vhost(name: str, *domains: str, routes: tuple[Route, ...] | None = None) -> VirtualHost:
    return VirtualHost(
        name=name, domains=domains, routes=routes if routes is not None else (route(name),)
    )


def _id(v: object) -> str | None:
    """Readable test ids for RouteMatch / header-list parameters."""
    if isinstance(v, RouteMatch):
        parts = [f"{v.path_kind}:{v.value}" + ("" if v.case_sensitive else "/i")]
        parts += [f"{'!' if h.invert else ''}{h.name}~{h.kind}:{h.value}" for h in v.headers]
        parts += [f"?{q.name}~{q.kind}:{q.value}" for q in v.query_parameters]
        return " ".join(parts)
    if isinstance(v, list):
        return ";".join(f"{k}={val}" for k, val in v) or "no-headers"
    if isinstance(v, RequestHead):
        return f"{v.method.decode()} {v.authority.decode()}{v.path.decode()}"
    return None


def matches(match: RouteMatch, request: RequestHead) -> bool:
    """Does a one-route table match `request`?"""
    table = RouteTable(RouteConfig(virtual_hosts=(vhost("vh", "*", routes=(route("r", match),)),)))
    vh, r = table.match(request)
    assert vh is not None
    return r is not None


# --------------------------------------------------------------------------- virtual hosts

# Listed shortest wildcard first, so that "longest first" must come from the
# table, not from the order of the config.
DOMAIN_VHOSTS = (
    vhost("catch-all", "*"),
    vhost("suffix-foo", "*.foo.com"),
    vhost("suffix-bar-dash", "*-bar.foo.com"),
    vhost("suffix-deep", "*.api.foo.com"),
    vhost("prefix-foo", "foo.*"),
    vhost("prefix-foo-dash", "foo-*"),
    vhost("prefix-foo-bar", "foo.bar.*"),
    vhost("exact-www", "www.foo.com", "foo.com"),
    vhost("exact-v6", "[::1]"),
)


@pytest.mark.parametrize("order", ["as-listed", "reversed"])
@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        # 1. exact, before any wildcard that also matches
        ("www.foo.com", "exact-www"),
        ("foo.com", "exact-www"),
        ("WWW.Foo.COM", "exact-www"),
        ("www.foo.com:8080", "exact-www"),
        ("www.foo.com:80", "exact-www"),
        ("[::1]:8080", "exact-v6"),
        ("[::1]", "exact-v6"),
        # 2. suffix wildcards, longest first; before prefix wildcards
        ("api.foo.com", "suffix-foo"),
        ("a.b.foo.com", "suffix-foo"),
        ("baz-bar.foo.com", "suffix-bar-dash"),
        ("x.api.foo.com", "suffix-deep"),
        ("X.API.FOO.COM:443", "suffix-deep"),
        ("foo.foo.com", "suffix-foo"),  # also matches foo.*: suffix wins
        # the wildcard never matches the empty string
        ("-bar.foo.com", "suffix-foo"),
        (".api.foo.com", "suffix-foo"),
        # 3. prefix wildcards, longest first
        ("foo.example.org", "prefix-foo"),
        ("foo.bar.example", "prefix-foo-bar"),
        ("foo-staging", "prefix-foo-dash"),
        ("Foo.Example.Org:9000", "prefix-foo"),
        ("foo.bar.", "prefix-foo"),  # "foo.bar.*" needs at least one character more
        # 4. "*"
        ("foo.", "catch-all"),
        ("other.net", "catch-all"),
        ("wwwxfoo.com", "catch-all"),
        ("127.0.0.1:10000", "catch-all"),
        ("", "catch-all"),
    ],
)
def test_virtual_host_precedence(authority: str, expected: str, order: str) -> None:
    vhosts = DOMAIN_VHOSTS if order == "as-listed" else DOMAIN_VHOSTS[::-1]
    table = RouteTable(RouteConfig(virtual_hosts=vhosts))
    vh = table.virtual_host(authority.encode())
    assert vh is not None
    assert vh.config.name == expected
    # The memo gives the same answer the second time.
    assert table.virtual_host(authority.encode()) is vh


@pytest.mark.parametrize(
    "authority",
    ["other.net", "foo.com.evil", "foo.co", "bar", "xbar.com", "", "[::2]:80"],
)
def test_no_virtual_host_without_catch_all(authority: str) -> None:
    table = RouteTable(
        RouteConfig(
            virtual_hosts=(
                vhost("a", "foo.com", "*.foo.com"),
                vhost("b", "bar.*"),
            )
        )
    )
    assert table.virtual_host(authority.encode()) is None
    assert table.match(req("/", authority)) == (None, None)


def test_empty_route_config_matches_nothing() -> None:
    table = RouteTable(RouteConfig())
    assert table.match(req("/")) == (None, None)


def test_domains_in_config_are_case_insensitive() -> None:
    table = RouteTable(
        RouteConfig(virtual_hosts=(vhost("a", "API.Example.COM"), vhost("b", "*.EXAMPLE.com")))
    )
    assert table.virtual_host(b"api.example.com").config.name == "a"  # type: ignore[union-attr]
    assert table.virtual_host(b"www.example.com").config.name == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM:8080", "example.com"),
        (b"[::1]:443", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"host:", "host:"),  # no digits: not a port
        (b"host:abc", "host:abc"),
        (b"", ""),
    ],
)
def test_host_without_port(authority: bytes, host: str) -> None:
    assert host_without_port(authority) == host


def test_vhost_memo_is_bounded() -> None:
    table = RouteTable(RouteConfig(virtual_hosts=(vhost("star", "*"), vhost("x", "*.example.com"))))
    for i in range(3000):
        vh = table.virtual_host(f"h{i}.example.com".encode())
        assert vh is not None and vh.config.name == "x"
    assert len(table._cache) == 1024
    # Past the bound, answers are still computed correctly.
    assert table.virtual_host(b"h2999.example.com").config.name == "x"  # type: ignore[union-attr]
    assert table.virtual_host(b"elsewhere").config.name == "star"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- path matching


def prefix(value: str, **kw: object) -> RouteMatch:
    return RouteMatch(path_kind="prefix", value=value, **kw)  # type: ignore[arg-type]


def exact(value: str, **kw: object) -> RouteMatch:
    return RouteMatch(path_kind="path", value=value, **kw)  # type: ignore[arg-type]


def regex(value: str, **kw: object) -> RouteMatch:
    return RouteMatch(path_kind="regex", value=value, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        # prefix: a plain string prefix of the path
        (prefix("/api"), "/api", True),
        (prefix("/api"), "/api/v1/users", True),
        (prefix("/api"), "/apix", True),  # not segment-aware (that is path_separated_prefix)
        (prefix("/api"), "/api?x=1", True),
        (prefix("/api"), "/ap", False),
        (prefix("/api"), "/API", False),
        (prefix("/api"), "/v1/api", False),
        (prefix("/api/"), "/api", False),
        # prefix sees the path without its query (Envoy's PathMatcher), so a
        # prefix running into the query never matches
        (prefix("/a"), "/?a=1", False),
        (prefix("/search?q"), "/search?q=1", False),
        # prefix "/" matches every origin-form path, but not "*" (OPTIONS *)
        (prefix("/"), "/", True),
        (prefix("/"), "/anything/at/all?x", True),
        (prefix("/"), "*", False),
        # case_sensitive=False
        (prefix("/API", case_sensitive=False), "/api/x", True),
        (prefix("/API", case_sensitive=False), "/Api", True),
        (prefix("/api", case_sensitive=False), "/APIs?Q=1", True),
        (prefix("/API", case_sensitive=False), "/ap", False),
        # path: the whole path, query ignored
        (exact("/exact"), "/exact", True),
        (exact("/exact"), "/exact?q=1", True),
        (exact("/exact"), "/exact?", True),
        (exact("/exact"), "/exact/", False),
        (exact("/exact"), "/exactly", False),
        (exact("/exact"), "/exac", False),
        (exact("/exact"), "/EXACT", False),
        (exact("/exact", case_sensitive=False), "/EXACT", True),
        (exact("/Exact", case_sensitive=False), "/eXaCt?x=Y", True),
        (exact("/exact", case_sensitive=False), "/exact/", False),
        # regex: must match the whole path, query removed
        (regex(r"/v[0-9]+/users"), "/v1/users", True),
        (regex(r"/v[0-9]+/users"), "/v12/users?page=2", True),
        (regex(r"/v[0-9]+/users"), "/v1/users/7", False),
        (regex(r"/v[0-9]+/users"), "/api/v1/users", False),
        (regex(r"/v[0-9]+/users"), "/vx/users", False),
        (regex(r"/a.*"), "/a?b=c", True),
        (regex(r"/a\?b"), "/a?b", False),  # the query is not part of what the regex sees
        (regex(r"/items/\d+"), "/items/42#frag", True),
        # case_sensitive does not apply to regexes (Envoy ignores it)
        (regex(r"/v1/users"), "/V1/USERS", False),
        (regex(r"/v1/users", case_sensitive=False), "/V1/USERS", False),
        (regex(r"(?i)/v1/users", case_sensitive=False), "/V1/USERS", True),
    ],
    ids=_id,
)
def test_path_match(match: RouteMatch, path: str, expected: bool) -> None:
    assert matches(match, req(path)) is expected


# --------------------------------------------------------------------------- headers


def hdr(name: str, kind: str = "exact", value: str = "", invert: bool = False) -> RouteMatch:
    return RouteMatch(
        headers=(HeaderMatcher(name=name, kind=kind, value=value, invert=invert),)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("match", "headers", "expected"),
    [
        # exact
        (hdr("x-env", "exact", "prod"), [("x-env", "prod")], True),
        (hdr("x-env", "exact", "prod"), [("x-env", "Prod")], False),
        (hdr("x-env", "exact", "prod"), [("x-env", "prod2")], False),
        (hdr("x-env", "exact", "prod"), [("x-other", "prod")], False),
        (hdr("x-env", "exact", "prod"), [], False),
        (hdr("x-env", "exact", ""), [("x-env", "")], True),
        # exact, inverted: a different value matches, a missing header does not
        (hdr("x-env", "exact", "prod", invert=True), [("x-env", "dev")], True),
        (hdr("x-env", "exact", "prod", invert=True), [("x-env", "prod")], False),
        (hdr("x-env", "exact", "prod", invert=True), [], False),
        # prefix / suffix / contains
        (hdr("x-version", "prefix", "v1"), [("x-version", "v1.2.3")], True),
        (hdr("x-version", "prefix", "v1"), [("x-version", "v2.1")], False),
        (hdr("x-version", "prefix", "v1", invert=True), [("x-version", "v2.1")], True),
        (hdr("user-agent", "suffix", "bot"), [("user-agent", "googlebot")], True),
        (hdr("user-agent", "suffix", "bot"), [("user-agent", "bot/1.0")], False),
        (hdr("user-agent", "contains", "Mobile"), [("user-agent", "X Mobile Y")], True),
        (hdr("user-agent", "contains", "Mobile"), [("user-agent", "X mobile Y")], False),
        (hdr("user-agent", "contains", "Mobile", invert=True), [], False),
        # regex: the whole value
        (hdr("x-id", "regex", r"[0-9]+"), [("x-id", "12345")], True),
        (hdr("x-id", "regex", r"[0-9]+"), [("x-id", "123a")], False),
        (hdr("x-id", "regex", r"[0-9]+"), [("x-id", "a123")], False),
        (hdr("x-id", "regex", r"[0-9]+", invert=True), [("x-id", "abc")], True),
        (hdr("x-id", "regex", r"[0-9]+", invert=True), [], False),
        # present, even with an empty value; inverted present is "absent"
        (hdr("x-canary", "present"), [("x-canary", "")], True),
        (hdr("x-canary", "present"), [("x-canary", "1")], True),
        (hdr("x-canary", "present"), [], False),
        (hdr("x-canary", "present", invert=True), [], True),
        (hdr("x-canary", "present", invert=True), [("x-other", "1")], True),
        (hdr("x-canary", "present", invert=True), [("x-canary", "")], False),
        # several values of one header are matched joined by ","
        (hdr("x-tag", "exact", "a,b"), [("x-tag", "a"), ("x-tag", "b")], True),
        (hdr("x-tag", "exact", "a"), [("x-tag", "a"), ("x-tag", "b")], False),
        (hdr("x-tag", "regex", r"a,.*"), [("x-tag", "a"), ("x-n", "1"), ("x-tag", "b")], True),
        (hdr("x-tag", "suffix", "b"), [("x-tag", "a"), ("x-tag", "b")], True),
        # configured names are matched case-insensitively (request names are lower-case)
        (hdr("X-Env", "exact", "prod"), [("x-env", "prod")], True),
    ],
    ids=_id,
)
def test_header_match(match: RouteMatch, headers: list[tuple[str, str]], expected: bool) -> None:
    assert matches(match, req("/", headers=headers)) is expected


@pytest.mark.parametrize(
    ("match", "request_", "expected"),
    [
        (hdr(":method", "exact", "POST"), req("/", method="POST"), True),
        (hdr(":method", "exact", "POST"), req("/", method="GET"), False),
        (hdr(":method", "exact", "GET", invert=True), req("/", method="DELETE"), True),
        (hdr(":authority", "exact", "api.example.com"), req("/", "api.example.com"), True),
        (hdr(":authority", "suffix", ":8080"), req("/", "api.example.com:8080"), True),
        (hdr(":authority", "exact", "api.example.com"), req("/", "www.example.com"), False),
        (hdr("host", "prefix", "api."), req("/", "api.example.com"), True),
        (hdr(":path", "regex", r"/x\?.*"), req("/x?y=1"), True),  # :path is the full path
        (hdr(":scheme", "exact", "http"), req("/"), True),
        (hdr(":scheme", "exact", "https"), req("/"), False),
    ],
    ids=_id,
)
def test_pseudo_header_match(match: RouteMatch, request_: RequestHead, expected: bool) -> None:
    assert matches(match, request_) is expected


def test_every_header_matcher_must_match() -> None:
    m = RouteMatch(
        path_kind="prefix",
        value="/api",
        headers=(
            HeaderMatcher(name="x-env", kind="exact", value="prod"),
            HeaderMatcher(name="x-canary", kind="present"),
        ),
    )
    both = [("x-env", "prod"), ("x-canary", "1")]
    assert matches(m, req("/api/x", headers=both))
    assert not matches(m, req("/api/x", headers=both[:1]))
    assert not matches(m, req("/api/x", headers=both[1:]))
    assert not matches(m, req("/other", headers=both))  # the path still has to match


# --------------------------------------------------------------------------- query parameters


def query(name: str, kind: str = "exact", value: str = "") -> RouteMatch:
    return RouteMatch(
        query_parameters=(QueryParameterMatcher(name=name, kind=kind, value=value),)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        (query("debug", "exact", "1"), "/?debug=1", True),
        (query("debug", "exact", "1"), "/x/y?a=b&debug=1&c=d", True),
        (query("debug", "exact", "1"), "/?debug=2", False),
        (query("debug", "exact", "1"), "/?debug=10", False),
        (query("debug", "exact", "1"), "/?debug", False),
        (query("debug", "exact", "1"), "/", False),
        (query("debug", "exact", "1"), "/debug=1", False),
        (query("debug", "exact", "1"), "/?Debug=1", False),  # names are case-sensitive
        (query("debug", "exact", ""), "/?debug", True),
        (query("debug", "exact", ""), "/?debug=", True),
        # only the first value of a repeated parameter counts
        (query("debug", "exact", "1"), "/?debug=1&debug=2", True),
        (query("debug", "exact", "1"), "/?debug=2&debug=1", False),
        # values are not percent-decoded, "+" is not a space
        (query("q", "exact", "a b"), "/?q=a%20b", False),
        (query("q", "exact", "a b"), "/?q=a+b", False),
        (query("q", "exact", "a%20b"), "/?q=a%20b", True),
        (query("q", "exact", "x=y"), "/?q=x=y", True),  # split on the first "="
        # present
        (query("debug", "present"), "/?debug", True),
        (query("debug", "present"), "/?debug=", True),
        (query("debug", "present"), "/?debug=anything", True),
        (query("debug", "present"), "/?debugx=1", False),
        (query("debug", "present"), "/?xdebug", False),
        (query("debug", "present"), "/", False),
        # prefix / suffix / contains / regex (whole value)
        (query("v", "prefix", "2."), "/?v=2.1", True),
        (query("v", "prefix", "2."), "/?v=12.1", False),
        (query("f", "suffix", ".json"), "/?f=a.json", True),
        (query("f", "contains", "tmp"), "/?f=/tmp/x", True),
        (query("n", "regex", r"[0-9]+"), "/?n=42", True),
        (query("n", "regex", r"[0-9]+"), "/?n=42a", False),
    ],
    ids=_id,
)
def test_query_parameter_match(match: RouteMatch, path: str, expected: bool) -> None:
    assert matches(match, req(path)) is expected


def test_every_query_matcher_must_match() -> None:
    m = RouteMatch(
        query_parameters=(
            QueryParameterMatcher(name="a", kind="exact", value="1"),
            QueryParameterMatcher(name="b", kind="present"),
        )
    )
    assert matches(m, req("/?a=1&b"))
    assert matches(m, req("/?b=0&a=1"))
    assert not matches(m, req("/?a=1"))
    assert not matches(m, req("/?b&a=2"))


# --------------------------------------------------------------------------- route order

ORDERED = (
    route("api", prefix("/api")),
    route("api-v2-shadowed", prefix("/api/v2")),  # after /api: never reached
    route("canary", RouteMatch(headers=(HeaderMatcher(name="x-canary", kind="present"),))),
    route("health", exact("/healthz")),
    route("static", regex(r"/static/.+\.(css|js)")),
    route(
        "debug",
        RouteMatch(query_parameters=(QueryParameterMatcher(name="debug", kind="present"),)),
    ),
    route("fallback", prefix("/")),
)


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/api/v2/users", [], "api"),
        ("/api", [("x-canary", "1")], "api"),
        ("/healthz", [("x-canary", "1")], "canary"),
        ("/healthz", [], "health"),
        ("/healthz?full=1", [], "health"),
        ("/healthz/", [], "fallback"),
        ("/static/app.js", [], "static"),
        ("/static/app.js?v=3", [], "static"),
        ("/static/app.png", [], "fallback"),
        ("/x?debug=", [], "debug"),
        ("/x?debug=1&y", [], "debug"),
        ("/", [], "fallback"),
    ],
    ids=_id,
)
def test_first_match_wins(path: str, headers: list[tuple[str, str]], expected: str) -> None:
    table = RouteTable(RouteConfig(virtual_hosts=(vhost("vh", "*", routes=ORDERED),)))
    vh, r = table.match(req(path, headers=headers))
    assert vh is not None and vh.config.name == "vh"
    assert r is not None and r.name == expected


def test_vhost_found_but_no_route() -> None:
    table = RouteTable(
        RouteConfig(
            virtual_hosts=(
                vhost("api", "api.example.com", routes=(route("v1", prefix("/v1")),)),
                vhost("rest", "*", routes=(route("any", prefix("/")),)),
            )
        )
    )
    vh, r = table.match(req("/v2", "api.example.com"))
    # The vhost is chosen by the Host alone; another vhost's routes are not tried.
    assert vh is not None and vh.config.name == "api"
    assert r is None
    vh, r = table.match(req("/v1/x", "API.example.com:443"))
    assert r is not None and r.name == "v1"
    vh, r = table.match(req("/v2", "www.example.com"))
    assert r is not None and r.name == "any"


def test_vhost_with_no_routes_matches_nothing() -> None:
    table = RouteTable(RouteConfig(virtual_hosts=(vhost("empty", "*", routes=()),)))
    vh, r = table.match(req("/"))
    assert vh is not None and r is None


def test_why_not_explains_the_first_failing_rule() -> None:
    m = RouteMatch(
        path_kind="prefix",
        value="/api",
        headers=(HeaderMatcher(name="x-env", kind="exact", value="prod"),),
        query_parameters=(QueryParameterMatcher(name="debug", kind="present"),),
    )
    table = RouteTable(RouteConfig(virtual_hosts=(vhost("vh", "*", routes=(route("r", m),)),)))
    cr = table.virtual_host(b"x").routes[0]  # type: ignore[union-attr]
    ok = req("/api?debug", headers=[("x-env", "prod")])
    assert cr.why_not(ok, "/api?debug") is None
    assert "path '/other'" in (cr.why_not(ok, "/other") or "")
    bad_header = req("/api?debug", headers=[("x-env", "dev")])
    assert "header 'x-env'" in (cr.why_not(bad_header, "/api?debug") or "")
    assert "query parameter 'debug'" in (cr.why_not(ok, "/api?x") or "")
