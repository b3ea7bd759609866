"""trioproxy.recipes: ready-made meshes for common topologies.

Each recipe returns a `trioproxy.dsl.MeshBuilder`, so a mesh file can use it
as is (`MESH = front_proxy(...)`) or extend it with `.add(...)`.
"""

from .canary import canary
from .front_proxy import front_proxy
from .sidecar import sidecar

__all__ = ["canary", "front_proxy", "sidecar"]
