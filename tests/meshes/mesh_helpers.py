"""A helper module imported by sibling_import.py (not a mesh file itself)."""

from trioproxy.dsl import ClusterBuilder, cluster

BACKEND_PORT = 9100


def backend(name: str) -> ClusterBuilder:
    return cluster(name, f"127.0.0.1:{BACKEND_PORT}")
