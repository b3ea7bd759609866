"""A TLS edge: HTTPS with two certificates chosen by SNI, HTTP redirected to HTTPS.

    trioproxy serve examples/tls_edge.py

    # HTTPS on 127.0.0.1:8443: a.example.test and b.example.test, each with
    # its own certificate (chosen by SNI), HTTP/2 or HTTP/1.1 by ALPN.
    curl --cacert examples/certs/ca.pem --resolve a.example.test:8443:127.0.0.1 \\
        https://a.example.test:8443/service/1
    curl --http2 --cacert examples/certs/ca.pem --resolve b.example.test:8443:127.0.0.1 \\
        https://b.example.test:8443/service/2 -v      # "issuer: ... CN=trioproxy example CA"

    # HTTP on 127.0.0.1:8080 answers 301 with the https:// URL on port 8443.
    curl -i http://127.0.0.1:8080/service/1

    curl 127.0.0.1:8001/stats | grep ssl            # listener.127.0.0.1_8443.ssl.handshake ...

Routes are the front-proxy demo's: /service/1 and /service/2 go to two demo
services that trioproxy starts itself on 127.0.0.1:8081 and :8082 (so this
example and examples/front_proxy.py cannot run at the same time). The
certificates in examples/certs/ come from a throwaway test CA; regenerate
them with `python examples/certs/make_certs.py`. Relative certificate paths
are relative to this file.
"""

from trioproxy.dsl import (
    HttpBuilder,
    admin,
    cluster,
    demo_service,
    http,
    listener,
    mesh,
    prefix,
    redirect,
    tls,
)

service1 = cluster("service1", "127.0.0.1:8081")
service2 = cluster("service2", "127.0.0.1:8082")


def site(stat_prefix: str) -> HttpBuilder:
    """The front-proxy routes, as one HTTP connection manager per site."""
    return (
        http(stat_prefix=stat_prefix)
        .access_log("-")
        .route(prefix("/service/1"), service1)
        .route(prefix("/service/2"), service2)
    )


MESH = mesh(
    listener("https", "127.0.0.1:8443")
    .chain(
        site("a_https"),
        tls=tls("certs/a.example.test.pem", "certs/a.example.test.key"),
        server_names=["a.example.test"],
    )
    .chain(
        site("b_https"),
        tls=tls("certs/b.example.test.pem", "certs/b.example.test.key"),
        server_names=["b.example.test"],
    ),
    listener("http", "127.0.0.1:8080")
    .chain(http(stat_prefix="http_redirect"))
    .route(prefix("/"), redirect(scheme="https", port=8443)),
    admin("127.0.0.1:8001"),
    demo_service("service 1", "127.0.0.1:8081"),
    demo_service("service 2", "127.0.0.1:8082"),
)
