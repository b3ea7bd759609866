"""A mesh file that raises while it is imported (through a helper function)."""

from trioproxy.dsl import listener, mesh, prefix


def backends() -> dict[str, str]:
    return {"one": "127.0.0.1:8081"}


def address(name: str) -> str:
    return backends()[name]  # E:raise


MESH = mesh(listener("ingress", ":8000").route(prefix("/"), address("two")))
