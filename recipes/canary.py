"""A canary release: a percentage of traffic to the new version.

    from trioproxy.recipes import canary

    MESH = canary("127.0.0.1:8081", "127.0.0.1:8082", percent=5)

Requests are split by weight between the `stable` and `canary` clusters
(Envoy's weighted clusters). A request with the header `x-canary: always`
always goes to the canary, and `x-canary: never` always to stable, so a
tester can pin a version. Raise `percent` and reload to roll forward.
"""

from __future__ import annotations

from trioproxy.dsl import (
    MeshBuilder,
    MeshItem,
    admin,
    cluster,
    http,
    listener,
    mesh,
    prefix,
    weighted,
)

__all__ = ["canary"]


def canary(
    stable: str,
    canary: str,
    percent: int,
    *,
    address: str = ":8000",
    admin_address: str | None = "127.0.0.1:8001",
    access_log: str | None = "-",
) -> MeshBuilder:
    """A mesh sending `percent` % of requests to `canary`, the rest to `stable`.

    Args:
        stable, canary: the two versions' addresses.
        percent: 0..100, the canary's share.
        address: the listener's address.
        admin_address: the admin port, or None for none.
        access_log: access log path (`-` is stdout), or None.
    """
    manager = http(stat_prefix="ingress_http")
    if access_log is not None:
        manager = manager.access_log(access_log)
    stable_cluster = cluster("stable", stable)
    canary_cluster = cluster("canary", canary)
    # weighted() takes positive weights: at 0 or 100 % one version takes all.
    if percent <= 0:
        target: object = stable_cluster
    elif percent >= 100:
        target = canary_cluster
    else:
        target = weighted((stable_cluster, 100 - percent), (canary_cluster, percent))
    edge = (
        listener("ingress", address)
        .chain(manager)
        .route(prefix("/").header("x-canary", exact="always"), canary_cluster)
        .route(prefix("/").header("x-canary", exact="never"), stable_cluster)
        .route(prefix("/"), target)  # type: ignore[arg-type]
    )
    items: list[MeshItem] = [edge]
    if admin_address is not None:
        items.append(admin(admin_address))
    return mesh(*items)
