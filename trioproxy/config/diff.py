"""`diff_meshes`: what a hot reload changes, by name. Pure; no I/O.

Listeners and clusters are matched by name. A listener whose only change is
in the route configs of its HTTP connection managers is not "changed": its
routes are (the reload swaps the route tables and keeps the sockets and
connections). Anything else that differs in a listener makes it changed
(rebound alongside with SO_REUSEPORT, the old one drained).
"""

from __future__ import annotations

import attrs

from trioproxy.config.graph import (
    Cluster,
    HttpConnectionManager,
    Listener,
    Mesh,
    RouteAction,
    RouteConfig,
)

__all__ = ["MeshDiff", "diff_meshes", "without_routes"]


@attrs.frozen(kw_only=True)
class MeshDiff:
    added_listeners: tuple[str, ...] = ()
    removed_listeners: tuple[str, ...] = ()
    changed_listeners: tuple[str, ...] = ()
    added_clusters: tuple[str, ...] = ()
    removed_clusters: tuple[str, ...] = ()
    changed_clusters: tuple[str, ...] = ()
    # Listeners (unchanged otherwise) whose route configs differ.
    route_listeners: tuple[str, ...] = ()
    # Readable lines ("~ route ingress/default/0: cluster a -> b").
    lines: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.lines


def without_routes(listener: Listener) -> Listener:
    """`listener` with every HCM's route config emptied (for comparison)."""
    chains = []
    for chain in listener.filter_chains:
        filters = tuple(
            attrs.evolve(f, route_config=RouteConfig())
            if isinstance(f, HttpConnectionManager)
            else f
            for f in chain.filters
        )
        chains.append(attrs.evolve(chain, filters=filters))
    return attrs.evolve(listener, filter_chains=tuple(chains))


def _route_configs(listener: Listener) -> list[RouteConfig]:
    return [
        f.route_config
        for chain in listener.filter_chains
        for f in chain.filters
        if isinstance(f, HttpConnectionManager)
    ]


def _target(action: object) -> str:
    if isinstance(action, RouteAction):
        if action.cluster is not None:
            return f"cluster {action.cluster}"
        return "weighted " + ",".join(f"{w.name}:{w.weight}" for w in action.weighted_clusters)
    return type(action).__name__


def _route_lines(listener: str, old: RouteConfig, new: RouteConfig) -> list[str]:
    lines: list[str] = []
    old_vh = {vh.name: vh for vh in old.virtual_hosts}
    new_vh = {vh.name: vh for vh in new.virtual_hosts}
    for name in old_vh.keys() - new_vh.keys():
        lines.append(f"- virtual_host {listener}/{name}")
    for name in new_vh.keys() - old_vh.keys():
        lines.append(f"+ virtual_host {listener}/{name}")
    for name in sorted(old_vh.keys() & new_vh.keys()):
        a, b = old_vh[name], new_vh[name]
        if a == b:
            continue
        if a.domains != b.domains:
            lines.append(f"~ virtual_host {listener}/{name}: domains {a.domains} -> {b.domains}")
        n = max(len(a.routes), len(b.routes))
        for i in range(n):
            where = f"{listener}/{name}/{i}"
            if i >= len(a.routes):
                lines.append(f"+ route {where}: {_target(b.routes[i].action)}")
            elif i >= len(b.routes):
                lines.append(f"- route {where}")
            elif a.routes[i] != b.routes[i]:
                ra, rb = a.routes[i], b.routes[i]
                what = []
                if ra.match != rb.match:
                    what.append("match")
                ta, tb = _target(ra.action), _target(rb.action)
                if ta != tb and ta.startswith("cluster ") and tb.startswith("cluster "):
                    what.append(f"{ta} -> {tb.removeprefix('cluster ')}")
                elif ta != tb:
                    what.append(f"{ta} -> {tb}")
                elif ra.action != rb.action:
                    what.append("action")
                if ra.name != rb.name:
                    what.append(f"name {ra.name} -> {rb.name}")
                lines.append(f"~ route {where}: {', '.join(what)}")
    return lines


def _cluster_change(a: Cluster, b: Cluster) -> str:
    fields = [
        f.name for f in attrs.fields(Cluster) if f.eq and getattr(a, f.name) != getattr(b, f.name)
    ]
    if fields == ["endpoints"]:
        ea = ", ".join(str(e.address) for e in a.endpoints)
        eb = ", ".join(str(e.address) for e in b.endpoints)
        return f"endpoints [{ea}] -> [{eb}]"
    return ", ".join(fields)


def diff_meshes(old: Mesh, new: Mesh) -> MeshDiff:
    """What reloading from `old` to `new` changes (names sorted)."""
    lines: list[str] = []
    ol = {lc.name: lc for lc in old.listeners}
    nl = {lc.name: lc for lc in new.listeners}
    oc = {c.name: c for c in old.clusters}
    nc = {c.name: c for c in new.clusters}
    added_l = sorted(nl.keys() - ol.keys())
    removed_l = sorted(ol.keys() - nl.keys())
    changed_l: list[str] = []
    route_l: list[str] = []
    for name in sorted(ol.keys() & nl.keys()):
        a, b = ol[name], nl[name]
        if a == b:
            continue
        if without_routes(a) != without_routes(b):
            changed_l.append(name)
            lines.append(f"~ listener {name}: {_listener_change(a, b)}")
            continue
        route_l.append(name)
        for ra, rb in zip(_route_configs(a), _route_configs(b), strict=True):
            lines.extend(_route_lines(name, ra, rb))
    added_c = sorted(nc.keys() - oc.keys())
    removed_c = sorted(oc.keys() - nc.keys())
    changed_c = sorted(n for n in oc.keys() & nc.keys() if oc[n] != nc[n])
    lines[:0] = [f"+ listener {n} ({nl[n].address})" for n in added_l] + [
        f"- listener {n}" for n in removed_l
    ]
    lines += [f"+ cluster {n}" for n in added_c]
    lines += [f"- cluster {n}" for n in removed_c]
    lines += [f"~ cluster {n}: {_cluster_change(oc[n], nc[n])}" for n in changed_c]
    return MeshDiff(
        added_listeners=tuple(added_l),
        removed_listeners=tuple(removed_l),
        changed_listeners=tuple(changed_l),
        added_clusters=tuple(added_c),
        removed_clusters=tuple(removed_c),
        changed_clusters=tuple(changed_c),
        route_listeners=tuple(route_l),
        lines=tuple(lines),
    )


def _listener_change(a: Listener, b: Listener) -> str:
    if a.address != b.address:
        return f"address {a.address} -> {b.address}"
    fields = [
        f.name
        for f in attrs.fields(Listener)
        if f.eq and getattr(without_routes(a), f.name) != getattr(without_routes(b), f.name)
    ]
    return ", ".join(fields)
