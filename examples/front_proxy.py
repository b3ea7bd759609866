"""Envoy's classic front-proxy example, as a trioproxy mesh.

    trioproxy serve examples/front_proxy.py
    curl localhost:8000/service/1   # Hello from behind trioproxy (service 1)! hostname: ...
    curl localhost:8000/service/2
    curl localhost:8001/stats       # the admin port

The two upstream services are small demo servers that trioproxy starts itself
(`demo_service`), so nothing else needs to run. Ctrl-C stops everything.
"""

from trioproxy.dsl import admin, cluster, demo_service, http, listener, mesh, prefix

service1 = cluster("service1", "127.0.0.1:8081")
service2 = cluster("service2", "127.0.0.1:8082")

MESH = mesh(
    listener("ingress", ":8000")
    .chain(http(stat_prefix="ingress_http").access_log("-"))
    .route(prefix("/service/1"), service1)
    .route(prefix("/service/2"), service2),
    admin("127.0.0.1:8001"),
    demo_service("service 1", "127.0.0.1:8081"),
    demo_service("service 2", "127.0.0.1:8082"),
)
