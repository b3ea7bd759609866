"""A mesh file exposing a build() function instead of MESH."""

from trioproxy.dsl import MeshBuilder, cluster, listener, mesh, prefix


def build() -> MeshBuilder:
    backend = cluster("backend", "127.0.0.1:9000")
    return mesh(listener("ingress", ":0").route(prefix("/"), backend))
