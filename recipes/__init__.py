"""trioproxy.recipes: ready-made meshes for common topologies.

Each recipe returns a `trioproxy.dsl.MeshBuilder`, so a mesh file can use it
as is (`MESH = front_proxy(...)`) or extend it with `.add(...)`.
"""

from .front_proxy import front_proxy

__all__ = ["front_proxy"]
