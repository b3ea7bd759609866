"""A gRPC front: HTTP/1.1 or h2c clients in, HTTP/2 to the gRPC backend.

    trioproxy serve examples/grpc_mesh.py
    # a gRPC server on 127.0.0.1:50551, then point any gRPC client at
    # 127.0.0.1:10000 (h2c, plaintext), e.g.
    grpcurl -plaintext 127.0.0.1:10000 list
    curl localhost:8001/stats?filter=grpc   # per-method success/failure/total

Only gRPC requests (content-type application/grpc*) match the route; the
`grpc-timeout` a client sends becomes the request's deadline, and failures
the proxy answers itself come back as gRPC statuses (UNAVAILABLE,
DEADLINE_EXCEEDED) rather than HTTP errors.
"""

from trioproxy.dsl import admin, cluster, grpc, http, listener, mesh

grpc_backend = cluster("grpc_backend", "127.0.0.1:50551").http2()

MESH = mesh(
    listener("grpc", "127.0.0.1:10000")
    .chain(http(stat_prefix="grpc", codec="auto").access_log("-"))
    # Long-lived streaming calls: no route timeout; clients set grpc-timeout.
    .route(grpc(), grpc_backend, timeout=0),
    admin("127.0.0.1:8001"),
)
