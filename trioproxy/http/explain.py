"""Explain a request: which listener, filter chain, virtual host, route and
cluster (or redirect / direct response) and HTTP filters it would take, and
why each route tried before the match did not match.

A pure function over the config graph; route matching is the route table's
own (`CompiledRoute.why_not`), so the explanation cannot drift from what the
proxy does. Served by the admin's `GET /explain` (JSON) and by
`trioproxy explain MESH.py URL` (text, `to_text`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trioproxy.codec.stream import RequestHead
from trioproxy.config import (
    DirectResponseAction,
    FilterChain,
    HttpConnectionManager,
    Listener,
    Mesh,
    RedirectAction,
    RouteAction,
)
from trioproxy.http.route_table import RouteTable, RuntimeFractions

__all__ = ["explain", "to_text"]


class _NoFraction:
    """Runtime for explaining: `why_not` reports fractions without rolling."""

    def fraction_enabled(self, key: str, numerator: int, denominator: int = 100) -> bool:
        return False


def _chain_for(listener: Listener, host: str) -> tuple[int, FilterChain] | None:
    """The first HTTP chain whose match could take a plain request for `host`
    (server_names are compared with `host`, as SNI would be)."""
    for i, chain in enumerate(listener.filter_chains):
        if not any(isinstance(f, HttpConnectionManager) for f in chain.filters):
            continue
        names = chain.match.server_names
        if names and not any(
            n == host or (n.startswith("*.") and host.endswith(n[1:])) for n in names
        ):
            continue
        return i, chain
    return None


def _action(action: Any) -> dict[str, Any]:
    if isinstance(action, RouteAction):
        if action.cluster is not None:
            return {"kind": "cluster", "cluster": action.cluster}
        return {
            "kind": "weighted_clusters",
            "clusters": {w.name: w.weight for w in action.weighted_clusters},
        }
    if isinstance(action, RedirectAction):
        return {"kind": "redirect", "code": action.code}
    if isinstance(action, DirectResponseAction):
        return {"kind": "direct_response", "status": action.status}
    return {"kind": type(action).__name__}


def explain(
    mesh: Mesh,
    *,
    host: str,
    path: str = "/",
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    listener: str | None = None,
    runtime: RuntimeFractions | None = None,
) -> dict[str, Any]:
    """What the proxy would do with this request, as JSON-ready data.

    `listener` picks a listener by name (default: the first with an HTTP
    chain). The result has `listener`, `filter_chain`, `http_filters`,
    `virtual_host`, `route`, `action` and `tried` (routes before the match,
    each with `reason`); `error` says where matching stopped, if it did.
    """
    out: dict[str, Any] = {
        "request": {"host": host, "path": path, "method": method, "headers": dict(headers)}
    }
    candidates = [lc for lc in mesh.listeners if listener is None or lc.name == listener]
    if not candidates:
        out["error"] = f"no listener named {listener!r}"
        return out
    found = None
    for lc in candidates:
        chosen = _chain_for(lc, host.split(":")[0].lower())
        if chosen is not None:
            found = (lc, *chosen)
            break
    if found is None:
        out["error"] = "no HTTP filter chain would take the request"
        return out
    lc, index, chain = found
    hcm = next(f for f in chain.filters if isinstance(f, HttpConnectionManager))
    out["listener"] = lc.name
    out["filter_chain"] = index
    out["stat_prefix"] = hcm.stat_prefix
    out["http_filters"] = [type(f).__name__ for f in hcm.http_filters] + ["router"]
    req = RequestHead(
        method=method.upper().encode("latin-1"),
        path=path.encode("latin-1"),
        authority=host.encode("latin-1"),
        headers=[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    )
    table = RouteTable(hcm.route_config, runtime if runtime is not None else _NoFraction())
    vh = table.virtual_host(req.authority)
    if vh is None:
        out["error"] = f"no virtual host matches host {host!r} (404, flag NR)"
        return out
    out["virtual_host"] = vh.config.name
    tried: list[dict[str, str]] = []
    out["tried"] = tried
    for r in vh.routes:
        reason = r.why_not(req, path)
        if reason is None:
            out["route"] = r.route.name
            out["action"] = _action(r.route.action)
            return out
        tried.append({"route": r.route.name, "reason": reason})
    out["error"] = "no route matches (404, flag NR)"
    return out


def to_text(result: dict[str, Any]) -> str:
    """The explanation for people (the CLI's output)."""
    rq = result["request"]
    lines = [f"request: {rq['method']} {rq['host']}{rq['path']}"]
    for k, v in rq["headers"].items():
        lines.append(f"  header {k}: {v}")
    if "listener" in result:
        lines.append(f"listener: {result['listener']} (filter chain #{result['filter_chain']})")
        lines.append(f"http filters: {', '.join(result['http_filters'])}")
    if "virtual_host" in result:
        lines.append(f"virtual host: {result['virtual_host']}")
    for t in result.get("tried", ()):
        lines.append(f"  route {t['route']}: no: {t['reason']}")
    if "route" in result:
        a = result["action"]
        kind = a["kind"]
        if kind == "cluster":
            detail = f"cluster {a['cluster']}"
        elif kind == "weighted_clusters":
            detail = f"weighted clusters {a['clusters']}"
        elif kind == "redirect":
            detail = f"redirect ({a['code']})"
        elif kind == "direct_response":
            detail = f"direct response {a['status']}"
        else:
            detail = str(kind)
        lines.append(f"route: {result['route']} -> {detail}")
    if "error" in result:
        lines.append(f"no match: {result['error']}")
    return "\n".join(lines) + "\n"
