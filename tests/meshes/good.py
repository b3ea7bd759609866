"""A valid mesh using most of the DSL; tests compare it with a hand-built graph."""

from trioproxy.dsl import (
    admin,
    cluster,
    demo_service,
    direct_response,
    endpoint,
    http,
    listener,
    mesh,
    path,
    prefix,
    redirect,
    vhost,
    weighted,
)

service1 = cluster("service1", "127.0.0.1:8081", "127.0.0.1:8082", lb="least_request")
service2 = cluster("service2", endpoint("localhost:8083", weight=3)).connect_timeout("250ms")

MESH = mesh(
    listener("ingress", ":8000")
    .chain(http(stat_prefix="ingress_http").access_log("-"))
    .route(prefix("/service/1"), service1)
    .route(prefix("/service/2"), "service2", timeout="2s", prefix_rewrite="/")
    .route(path("/health"), direct_response(200, "ok\n"))
    .vhost(
        vhost("canary", "canary.example.com", "*.canary.example.com").route(
            prefix("/").header("x-canary", present=True),
            weighted((service1, 90), ("service2", 10)),
            name="canary-split",
        )
    ),
    listener("redirector", "127.0.0.1:8080").route(
        prefix("/"), redirect(scheme="https", port=8443, code=308)
    ),
    service2,
    admin("127.0.0.1:8001"),
    demo_service("hello", "127.0.0.1:8081"),
)
