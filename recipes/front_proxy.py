"""The front proxy: one edge listener routing `/service/<n>` to service clusters.

    from trioproxy.recipes import front_proxy

    MESH = front_proxy({"service1": "10.0.0.5:80", "service2": "10.0.0.6:80"})

With `demo=True` each service address also gets a built-in demo upstream,
which is how `examples/front_proxy.py` runs with no other set-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from trioproxy.dsl import (
    MeshBuilder,
    MeshItem,
    admin,
    cluster,
    demo_service,
    http,
    listener,
    mesh,
    prefix,
)

__all__ = ["front_proxy"]


def front_proxy(
    services: Mapping[str, str],
    *,
    address: str = ":8000",
    admin_address: str | None = "127.0.0.1:8001",
    stat_prefix: str = "ingress_http",
    access_log: str | None = "-",
    demo: bool = False,
) -> MeshBuilder:
    """A mesh routing `/<prefix>` for each service to a cluster of that name.

    Args:
        services: cluster name → upstream address. A name `serviceN` is routed
            at `/service/N` (Envoy's example); any other name at `/<name>`.
        address: the edge listener's address.
        admin_address: the admin port, or None for none.
        stat_prefix: the HTTP connection manager's stat prefix.
        access_log: access log path (`-` is stdout), or None for none.
        demo: also start a demo upstream on each service's address.
    """
    manager = http(stat_prefix=stat_prefix)
    if access_log is not None:
        manager = manager.access_log(access_log)
    edge = listener("ingress", address).chain(manager)
    items: list[MeshItem] = []
    for name, upstream in services.items():
        number = name.removeprefix("service")
        path = f"/service/{number}" if number.isdigit() else f"/{name}"
        edge = edge.route(prefix(path), cluster(name, upstream))
        if demo:
            label = f"service {number}" if number.isdigit() else name
            items.append(demo_service(label, upstream))
    if admin_address is not None:
        items.append(admin(admin_address))
    return mesh(edge, *items)
