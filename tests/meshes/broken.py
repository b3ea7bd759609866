"""A mesh with many mistakes; tests/test_dsl_compile.py expects every one.

Each line that causes an issue ends with a `# E:<tag>` marker that the test
uses to find its line number.
"""

from trioproxy.dsl import (
    admin,
    cluster,
    direct_response,
    listener,
    mesh,
    prefix,
    redirect,
    regex,
    vhost,
)

service1 = cluster("service1", "127.0.0.1:8081").lb("least_requests")  # type: ignore[arg-type]  # E:lb
service2 = cluster("service2", "127.0.0.1:8082", connect_timeout="5 s")  # E:duration

MESH = mesh(
    listener("ingress", ":8000")
    .route(prefix("/one"), "servce1")  # E:unknown
    .route(regex("/two/(["), service2)  # E:regex
    .route(prefix("/three"), redirect(code=304))  # E:code
    .route(prefix("/four"), direct_response(200), timeout=3)  # E:option
    .vhost(vhost("api", "api.*.example.com")),  # E:wildcard
    listener("ingress", "127.0.0.1:8000"),  # E:dup
    listener("bad", "1.2.3.4"),  # E:address
    service1,
    admin(),
    admin("127.0.0.1:9901"),  # E:admin
)
