"""The service-mesh sidecar: one inbound listener in front of the local app,
one outbound listener the app calls its dependencies through.

    from trioproxy.recipes import sidecar

    MESH = sidecar(
        app="127.0.0.1:8080",
        services={"users": "10.0.0.7:80", "billing": "10.0.0.8:80"},
    )

- inbound (`:15006` by default): every request goes to the local app
  (cluster `local_app`);
- outbound (`127.0.0.1:15001`): the app sends `Host: users` (or
  `users:<port>`) and the request goes to the `users` cluster; an unknown
  host gets 404 (Envoy's NR);
- every outbound route retries connect failures and resets once, and each
  service cluster has outlier detection, so one bad instance of a dependency
  does not fail the app's requests.
"""

from __future__ import annotations

from collections.abc import Mapping

from trioproxy.dsl import (
    MeshBuilder,
    MeshItem,
    admin,
    cluster,
    http,
    listener,
    mesh,
    prefix,
    retry,
    vhost,
)

__all__ = ["sidecar"]


def sidecar(
    app: str,
    services: Mapping[str, str | tuple[str, ...]],
    *,
    inbound: str = ":15006",
    outbound: str = "127.0.0.1:15001",
    admin_address: str | None = "127.0.0.1:15000",
    access_log: str | None = None,
) -> MeshBuilder:
    """A sidecar mesh for one app.

    Args:
        app: the local app's address ("127.0.0.1:8080").
        services: dependency name → address (or a tuple of addresses); the
            app reaches each as `http://<name>/` through `outbound`.
        inbound: where other services reach this app.
        outbound: where this app reaches its dependencies.
        admin_address: the admin port, or None for none.
        access_log: access log path for both listeners (`-` is stdout), or None.
    """
    inbound_http = http(stat_prefix="inbound")
    outbound_http = http(stat_prefix="outbound")
    if access_log is not None:
        inbound_http = inbound_http.access_log(access_log)
        outbound_http = outbound_http.access_log(access_log)
    local = cluster("local_app", app)
    inbound_listener = listener("inbound", inbound).chain(inbound_http).route(prefix("/"), local)
    for name, addresses in services.items():
        hosts = (addresses,) if isinstance(addresses, str) else tuple(addresses)
        dependency = cluster(name, *hosts).outlier_detection()
        outbound_http = outbound_http.vhost(
            vhost(name, name, f"{name}:*").route(
                prefix("/"), dependency, retry=retry(on="connect-failure,reset", num_retries=1)
            )
        )
    items: list[MeshItem] = [inbound_listener, listener("outbound", outbound).chain(outbound_http)]
    if admin_address is not None:
        items.append(admin(admin_address))
    return mesh(*items)
