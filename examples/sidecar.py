"""A service-mesh sidecar, from the `sidecar` recipe.

    trioproxy serve examples/sidecar.py
    curl localhost:15006/                       # inbound: reaches the local app
    curl -H 'Host: users' localhost:15001/      # outbound: the app calling "users"
    curl -H 'Host: billing' localhost:15001/    # ... and "billing"
    curl localhost:15000/clusters               # admin

The local app and its two dependencies are demo services started by
trioproxy itself; in a real deployment drop the `.add(...)` and point `app`
and `services` at real addresses.
"""

from trioproxy.dsl import demo_service
from trioproxy.recipes import sidecar

MESH = sidecar(
    app="127.0.0.1:8080",
    services={"users": "127.0.0.1:8091", "billing": ("127.0.0.1:8092", "127.0.0.1:8093")},
    access_log="-",
).add(
    demo_service("local app", "127.0.0.1:8080"),
    demo_service("users", "127.0.0.1:8091"),
    demo_service("billing 1", "127.0.0.1:8092"),
    demo_service("billing 2", "127.0.0.1:8093"),
)
