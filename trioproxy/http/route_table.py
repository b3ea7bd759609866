"""Route tables: a `config.RouteConfig` compiled once into dispatch structures.

Virtual-host selection follows Envoy (RC, VirtualHost.domains):
  1. exact domain (a dict lookup),
  2. suffix wildcards `*.foo.com` / `*-bar.foo.com`, longest first,
  3. prefix wildcards `foo.*` / `foo-*`, longest first,
  4. `*`.
Matching is case-insensitive and ignores the port; a wildcard never matches
the empty string.

Within a virtual host, routes are tried in order and the first match wins.
Path matching follows Envoy: `prefix` compares against the whole `:path`
(query included); `path` and `regex` compare against the path without the
query; `regex` must match the whole path. Regexes are compiled here, once.

This module does no I/O and keeps no per-request state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from trioproxy.codec.stream import RequestHead
from trioproxy.config import (
    HeaderMatcher,
    QueryParameterMatcher,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)

__all__ = ["CompiledRoute", "CompiledVirtualHost", "RouteTable", "host_without_port"]


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


def _header_matcher(m: HeaderMatcher) -> Callable[[RequestHead], bool]:
    name = m.name.lower().encode("latin-1")
    test = _string_matcher(m.kind, m.value)
    invert = m.invert

    def match(req: RequestHead) -> bool:
        raw = req.get(name)
        if raw is None:
            return invert
        return test(raw.decode("latin-1")) != invert

    return match


def _query_matcher(m: QueryParameterMatcher) -> Callable[[dict[str, str]], bool]:
    test = _string_matcher(m.kind, m.value)
    name = m.name

    def match(params: dict[str, str]) -> bool:
        v = params.get(name)
        return v is not None and test(v)

    return match


class CompiledRoute:
    __slots__ = ("_headers", "_path", "_query", "route")

    def __init__(self, route: Route) -> None:
        self.route = route
        m: RouteMatch = route.match
        self._path = self._path_matcher(m)
        self._headers = tuple(_header_matcher(h) for h in m.headers)
        self._query = tuple(_query_matcher(q) for q in m.query_parameters)

    @staticmethod
    def _path_matcher(m: RouteMatch) -> Callable[[str], bool]:
        value = m.value
        if m.path_kind == "prefix":
            if value == "/":
                return lambda p: True
            if m.case_sensitive:
                return lambda p: p.startswith(value)
            low = value.lower()
            return lambda p: p.lower().startswith(low)
        if m.path_kind == "path":
            if m.case_sensitive:
                return lambda p: p.partition("?")[0] == value
            low = value.lower()
            return lambda p: p.partition("?")[0].lower() == low
        rx = re.compile(value, 0 if m.case_sensitive else re.IGNORECASE)
        return lambda p: rx.fullmatch(p.partition("?")[0]) is not None

    def matches(self, req: RequestHead, path: str) -> bool:
        if not self._path(path):
            return False
        for h in self._headers:
            if not h(req):
                return False
        if self._query:
            params = dict(parse_qsl(path.partition("?")[2], keep_blank_values=True))
            for q in self._query:
                if not q(params):
                    return False
        return True

    def why_not(self, req: RequestHead, path: str) -> str | None:
        """Why this route does not match (for `explain`), or None if it does."""
        if not self._path(path):
            return f"path {path!r} does not match {self.route.match.path_kind} {self.route.match.value!r}"
        for h, cfg in zip(self._headers, self.route.match.headers, strict=True):
            if not h(req):
                return f"header {cfg.name!r} does not match ({cfg.kind} {cfg.value!r})"
        if self._query:
            params = dict(parse_qsl(path.partition("?")[2], keep_blank_values=True))
            for q, qcfg in zip(self._query, self.route.match.query_parameters, strict=True):
                if not q(params):
                    return f"query parameter {qcfg.name!r} does not match"
        return None


class CompiledVirtualHost:
    __slots__ = ("config", "routes")

    def __init__(self, vh: VirtualHost) -> None:
        self.config = vh
        self.routes = tuple(CompiledRoute(r) for r in vh.routes)

    def match(self, req: RequestHead) -> Route | None:
        path = req.path.decode("latin-1")
        for r in self.routes:
            if r.matches(req, path):
                return r.route
        return None


class RouteTable:
    def __init__(self, config: RouteConfig) -> None:
        self.exact: dict[str, CompiledVirtualHost] = {}
        suffixes: list[tuple[str, CompiledVirtualHost]] = []
        prefixes: list[tuple[str, CompiledVirtualHost]] = []
        self.default: CompiledVirtualHost | None = None
        for vh in config.virtual_hosts:
            cvh = CompiledVirtualHost(vh)
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
