"""A mesh file importing a module that sits next to it."""

from mesh_helpers import backend
from trioproxy.dsl import listener, mesh, prefix

MESH = mesh(listener("ingress", ":0").route(prefix("/"), backend("web")))
