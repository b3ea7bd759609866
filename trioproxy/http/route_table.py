"""Route tables: a `config.RouteConfig` compiled once into dispatch structures.

Virtual-host selection follows Envoy (RC, VirtualHost.domains):
  1. exact domain (a dict lookup),
  2. suffix wildcards `*.foo.com` / `*-bar.foo.com`, longest first,
  3. prefix wildcards `foo.*` / `foo-*`, longest first,
  4. `*`.
Matching is case-insensitive and ignores the port; a wildcard never matches
the empty string.

Within a virtual host, routes are tried in order and the first match wins.
Path matching follows Envoy (its `PathMatcher`): `prefix`, `path` and `regex`
all compare against the `:path` with the query string (and any fragment)
removed; `regex` must match that whole path. `case_sensitive` applies to
`prefix` and `path` only; Envoy ignores it for regexes. Regexes are compiled
here, once.

Header matchers follow Envoy's `HeaderUtility::matchHeaders`: several values
of one header are joined with "," before matching; a missing header matches
only "absent" (`present` inverted), never an inverted value matcher.
Query-parameter matchers follow `ConfigUtility::QueryParameterMatcher`: the
query is split on "&" and "=" without percent-decoding, and only the first
value of a repeated parameter counts.

A route with Envoy's `runtime_fraction` matches only that share of the
requests that reach it (after every other check passed), asking the runtime
each time, so a changed runtime key applies to the next request.

This module does no I/O and keeps no per-request state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from trioproxy.codec.stream import RequestHead, ResponseHead
from trioproxy.config import (
    HeaderMatcher,
    QueryParameterMatcher,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)

__all__ = [
    "CompiledRoute",
    "CompiledVirtualHost",
    "RouteTable",
    "RuntimeFractions",
    "header_matcher",
    "host_without_port",
]


def host_without_port(authority: bytes) -> str:
    a = authority.decode("latin-1").lower()
    if a.startswith("["):  # [v6]:port
        end = a.find("]")
        return a[: end + 1] if end >= 0 else a
    colon = a.rfind(":")
    if colon >= 0 and a[colon + 1 :].isdigit():
        return a[:colon]
    return a


def _string_matcher(kind: str, value: str, *, case_sensitive: bool = True) -> Callable[[str], bool]:
    if kind == "exact":
        return (lambda s: s == value) if case_sensitive else (lambda s: s.lower() == value.lower())
    if kind == "prefix":
        return lambda s: s.startswith(value)
    if kind == "suffix":
        return lambda s: s.endswith(value)
    if kind == "contains":
        return lambda s: value in s
    if kind == "regex":
        rx = re.compile(value)
        return lambda s: rx.fullmatch(s) is not None
    if kind == "present":
        return lambda s: True
    raise ValueError(f"unknown string match kind {kind!r}")


def _path_only(path: str) -> str:
    """The path without its query string and fragment (Envoy's removeQueryAndFragment)."""
    end = len(path)
    for sep in ("?", "#"):
        i = path.find(sep)
        if 0 <= i < end:
            end = i
    return path[:end]


def _query_params(path: str) -> dict[str, str]:
    """The query parameters of `path`, first value of each name, not decoded.

    Envoy's `QueryParamsMulti::parseQueryString`: split on "&", then on the
    first "="; a name without "=" has the value "".
    """
    _, sep, query = path.partition("?")
    params: dict[str, str] = {}
    if not sep:
        return params
    query = query.partition("#")[0]
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.setdefault(name, value)
    return params


def _header_value(req: RequestHead | ResponseHead, name: bytes) -> bytes | None:
    """Every value of header `name` joined with "," (Envoy matches the joined string)."""
    if name[:1] == b":" or name == b"host":
        return req.get(name)
    values = [v for k, v in req.headers if k == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b",".join(values)


def header_matcher(m: HeaderMatcher) -> Callable[[RequestHead | ResponseHead], bool]:
    """Envoy's HeaderMatcher compiled to a test of a request or response head."""
    name = m.name.lower().encode("latin-1")
    test = _string_matcher(m.kind, m.value)
    invert = m.invert
    # Envoy: a missing header matches only an inverted present matcher
    # ("absent"); an inverted value matcher needs the header to be there.
    when_missing = invert and m.kind == "present"

    def match(req: RequestHead | ResponseHead) -> bool:
        raw = _header_value(req, name)
        if raw is None:
            return when_missing
        return test(raw.decode("latin-1")) != invert

    return match


def _query_matcher(m: QueryParameterMatcher) -> Callable[[dict[str, str]], bool]:
    test = _string_matcher(m.kind, m.value)
    name = m.name

    def match(params: dict[str, str]) -> bool:
        v = params.get(name)
        return v is not None and test(v)

    return match


def _is_grpc(req: RequestHead) -> bool:
    ct = req.get(b"content-type")
    return ct is not None and ct.startswith(b"application/grpc")


class RuntimeFractions(Protocol):
    """What route matching asks the runtime (`trioproxy.runtime.layers.Runtime`)."""

    def fraction_enabled(self, key: str, numerator: int, denominator: int = 100) -> bool: ...


class CompiledRoute:
    __slots__ = ("_fraction", "_headers", "_path", "_query", "route")

    def __init__(self, route: Route, runtime: RuntimeFractions | None = None) -> None:
        self.route = route
        m: RouteMatch = route.match
        self._fraction: Callable[[], bool] | None = None
        f = m.runtime_fraction
        if f is not None:
            if runtime is None:
                raise ValueError(f"route {route.name!r} has a runtime_fraction but no runtime")
            key, num, den, enabled = f.runtime_key, f.numerator, f.denominator, runtime
            self._fraction = lambda: enabled.fraction_enabled(key, num, den)
        self._path = self._path_matcher(m)
        grpc_only: tuple[Callable[[RequestHead], bool], ...] = (_is_grpc,) if m.grpc else ()
        self._headers = grpc_only + tuple(header_matcher(h) for h in m.headers)
        self._query = tuple(_query_matcher(q) for q in m.query_parameters)

    @staticmethod
    def _path_matcher(m: RouteMatch) -> Callable[[str], bool]:
        """A test of the path without its query (see `_path_only`)."""
        value = m.value
        if m.path_kind == "prefix":
            if m.case_sensitive:
                return lambda p: p.startswith(value)
            low = value.lower()
            return lambda p: p.lower().startswith(low)
        if m.path_kind == "path":
            if m.case_sensitive:
                return lambda p: p == value
            low = value.lower()
            return lambda p: p.lower() == low
        # Envoy ignores case_sensitive for safe_regex: the regex decides.
        rx = re.compile(value)
        return lambda p: rx.fullmatch(p) is not None

    def matches(self, req: RequestHead, path: str, path_only: str | None = None) -> bool:
        """Does `req` match? `path` is the whole `:path`; `path_only` is
        `_path_only(path)` when the caller computed it once for all routes."""
        if not self._path(_path_only(path) if path_only is None else path_only):
            return False
        for h in self._headers:
            if not h(req):
                return False
        if self._query:
            params = _query_params(path)
            for q in self._query:
                if not q(params):
                    return False
        if self._fraction is not None:
            return self._fraction()
        return True

    def why_not(self, req: RequestHead, path: str) -> str | None:
        """Why this route does not match (for `explain`), or None if it does."""
        if not self._path(_path_only(path)):
            m = self.route.match
            return f"path {path!r} does not match {m.path_kind} {m.value!r}"
        if self.route.match.grpc and not _is_grpc(req):
            return "not a gRPC request (content-type is not application/grpc*)"
        checks = self._headers[1:] if self.route.match.grpc else self._headers
        for h, cfg in zip(checks, self.route.match.headers, strict=True):
            if not h(req):
                return f"header {cfg.name!r} does not match ({cfg.kind} {cfg.value!r})"
        if self._query:
            params = _query_params(path)
            for q, qcfg in zip(self._query, self.route.match.query_parameters, strict=True):
                if not q(params):
                    return f"query parameter {qcfg.name!r} does not match"
        f = self.route.match.runtime_fraction
        if f is not None:
            key = f" (runtime key {f.runtime_key!r})" if f.runtime_key else ""
            return f"matches only a runtime fraction, {f.numerator}/{f.denominator}{key}"
        return None


class CompiledVirtualHost:
    __slots__ = ("config", "routes")

    def __init__(self, vh: VirtualHost, runtime: RuntimeFractions | None = None) -> None:
        self.config = vh
        self.routes = tuple(CompiledRoute(r, runtime) for r in vh.routes)

    def match(self, req: RequestHead) -> Route | None:
        path = req.path.decode("latin-1")
        path_only = _path_only(path)
        for r in self.routes:
            if r.matches(req, path, path_only):
                return r.route
        return None


class RouteTable:
    def __init__(self, config: RouteConfig, runtime: RuntimeFractions | None = None) -> None:
        self.exact: dict[str, CompiledVirtualHost] = {}
        suffixes: list[tuple[str, CompiledVirtualHost]] = []
        prefixes: list[tuple[str, CompiledVirtualHost]] = []
        self.default: CompiledVirtualHost | None = None
        for vh in config.virtual_hosts:
            cvh = CompiledVirtualHost(vh, runtime)
            for d in vh.domains:
                d = d.lower()
                if d == "*":
                    self.default = cvh
                elif d.startswith("*"):
                    suffixes.append((d[1:], cvh))
                elif d.endswith("*"):
                    prefixes.append((d[:-1], cvh))
                else:
                    self.exact[d] = cvh
        # Longest wildcard wins within a class.
        suffixes.sort(key=lambda t: len(t[0]), reverse=True)
        prefixes.sort(key=lambda t: len(t[0]), reverse=True)
        self.suffixes = tuple(suffixes)
        self.prefixes = tuple(prefixes)
        self._cache: dict[bytes, CompiledVirtualHost | None] = {}

    def virtual_host(self, authority: bytes) -> CompiledVirtualHost | None:
        try:
            return self._cache[authority]
        except KeyError:
            pass
        vh = self._find(host_without_port(authority))
        # Bounded memo of authority -> vhost; hostile Host headers cannot grow it
        # past 1024 entries.
        if len(self._cache) < 1024:
            self._cache[authority] = vh
        return vh

    def _find(self, host: str) -> CompiledVirtualHost | None:
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        for suffix, cvh in self.suffixes:
            if len(host) > len(suffix) and host.endswith(suffix):
                return cvh
        for prefix, cvh in self.prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return cvh
        return self.default

    def match(self, req: RequestHead) -> tuple[CompiledVirtualHost | None, Route | None]:
        vh = self.virtual_host(req.authority)
        if vh is None:
            return None, None
        return vh, vh.match(req)
