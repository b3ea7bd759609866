"""Envoy's ClusterLoadAssignment (EDS) read from file contents. Pure: no I/O.

`parse_load_assignment(data, path, cluster)` turns the bytes of a JSON or
YAML file (YAML when the name ends in .yaml/.yml) into the cluster's
endpoints, or raises `EdsError` naming the file and the problem. The shape
is Envoy's (proto field names)::

    cluster_name: svc
    endpoints:
    - priority: 0                 # optional, 0 is preferred
      locality: {zone: a}         # optional, accepted and ignored
      lb_endpoints:
      - endpoint:
          address:
            socket_address: {address: 127.0.0.2, port_value: 8080}
        load_balancing_weight: 2  # optional, 1..
        health_status: HEALTHY    # optional

A DiscoveryResponse wrapper (`resources: [<ClusterLoadAssignment>]`, as
Envoy's filesystem subscriptions write) is accepted too. `cluster_name` must
be the cluster's name. Addresses must be IP literals (Envoy's EDS takes no
DNS names) and ports 1..65535. Unknown fields are errors, as protobuf's JSON
parser makes them in Envoy, except Envoy fields we accept and ignore
(`metadata`, `hostname`, `health_check_config`, `policy`, locality
weights). `health_status` UNHEALTHY, DRAINING and TIMEOUT take the host out
of the balancer (Envoy's failed_eds_health); UNKNOWN, HEALTHY and DEGRADED
keep it in (degraded hosts are not tracked separately).
"""

from __future__ import annotations

import importlib
import ipaddress
import json
from typing import Any, Final

from trioproxy.config import Endpoint, SocketAddress

__all__ = ["EDS_UNHEALTHY", "EdsError", "parse_load_assignment"]

# Envoy's HealthStatus values and the ones that fail a host.
_HEALTH: Final = ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED")
EDS_UNHEALTHY: Final = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})
# Envoy's priorities are bounded by the levels configured; the DSL's limit.
_MAX_PRIORITY: Final = 127
_MAX_WEIGHT: Final = 2**32 - 1  # Envoy: load_balancing_weight is a uint32 >= 1

_TOP: Final = frozenset({"cluster_name", "endpoints", "policy", "named_endpoints", "@type"})
_GROUP: Final = frozenset(
    {"locality", "lb_endpoints", "load_balancing_weight", "priority", "metadata", "proximity"}
)
_LB_ENDPOINT: Final = frozenset({"endpoint", "health_status", "load_balancing_weight", "metadata"})
_ENDPOINT: Final = frozenset({"address", "health_check_config", "hostname", "additional_addresses"})


class EdsError(ValueError):
    """A file that is not a valid ClusterLoadAssignment (message names the file)."""


def _fields(obj: object, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}")
    return obj


def _int(value: object, where: str, low: int, high: int) -> int:
    # JSON integers (protobuf's JSON also allows them as strings).
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"bad {where} {value!r} (expected an integer {low}..{high})")
    return value


def _address(obj: object, where: str) -> SocketAddress:
    ep = _fields(obj, _ENDPOINT, where)
    addr = _fields(ep.get("address"), frozenset({"socket_address"}), f"{where}.address")
    sa = _fields(
        addr.get("socket_address"),
        frozenset({"address", "port_value", "protocol", "ipv4_compat"}),
        f"{where}.address.socket_address",
    )
    host = sa.get("address")
    try:
        ip = ipaddress.ip_address(host) if isinstance(host, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValueError(f"bad address {host!r} in {where} (expected an IP address)")
    port = _int(sa.get("port_value"), f"port_value in {where}", 1, 65535)
    return SocketAddress(host=str(ip), port=port)


def _load(data: bytes, path: str) -> object:
    if path.endswith((".yaml", ".yml")):
        # PyYAML ships no type stubs: used through its one function.
        yaml: Any = importlib.import_module("yaml")
        return yaml.safe_load(data)
    return json.loads(data)


def parse_load_assignment(data: bytes, path: str, cluster: str) -> tuple[Endpoint, ...]:
    """The endpoints of cluster `cluster` from the contents of file `path`.

    Raises:
        EdsError: the file cannot be parsed or is not a valid assignment.
    """
    try:
        doc = _load(data, path)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError
        raise EdsError(f"{path}: not valid {_kind(path)}: {exc}") from None
    try:
        return _assignment(doc, cluster)
    except ValueError as exc:
        raise EdsError(f"{path}: {exc}") from None


def _kind(path: str) -> str:
    return "YAML" if path.endswith((".yaml", ".yml")) else "JSON"


def _assignment(doc: object, cluster: str) -> tuple[Endpoint, ...]:
    if isinstance(doc, dict) and "resources" in doc:
        resources = doc["resources"]
        if not isinstance(resources, list) or len(resources) != 1:
            raise ValueError("resources must hold exactly one ClusterLoadAssignment")
        doc = resources[0]
    top = _fields(doc, _TOP, "the ClusterLoadAssignment")
    name = top.get("cluster_name")
    if name != cluster:
        raise ValueError(f"cluster_name {name!r} is not this cluster's name {cluster!r}")
    groups = top.get("endpoints", [])
    if not isinstance(groups, list):
        raise ValueError("endpoints must be a list")
    out: list[Endpoint] = []
    seen: set[SocketAddress] = set()
    for i, raw_group in enumerate(groups):
        where = f"endpoints[{i}]"
        group = _fields(raw_group, _GROUP, where)
        priority = _int(group.get("priority", 0), f"priority of {where}", 0, _MAX_PRIORITY)
        if "load_balancing_weight" in group:
            _int(
                group["load_balancing_weight"], f"load_balancing_weight of {where}", 1, _MAX_WEIGHT
            )
        lb_endpoints = group.get("lb_endpoints", [])
        if not isinstance(lb_endpoints, list):
            raise ValueError(f"{where}.lb_endpoints must be a list")
        for j, raw_lb in enumerate(lb_endpoints):
            lwhere = f"{where}.lb_endpoints[{j}]"
            lb = _fields(raw_lb, _LB_ENDPOINT, lwhere)
            address = _address(lb.get("endpoint"), f"{lwhere}.endpoint")
            weight = _int(
                lb.get("load_balancing_weight", 1),
                f"load_balancing_weight of {lwhere}",
                1,
                _MAX_WEIGHT,
            )
            health = lb.get("health_status", "UNKNOWN")
            if health not in _HEALTH:
                raise ValueError(
                    f"bad health_status {health!r} in {lwhere}"
                    f" (expected one of {', '.join(_HEALTH)})"
                )
            if address in seen:
                raise ValueError(f"{address} is listed twice ({lwhere})")
            seen.add(address)
            hostname = lb["endpoint"].get("hostname", "")
            if not isinstance(hostname, str):
                raise ValueError(f"hostname in {lwhere} must be a string")
            out.append(
                Endpoint(
                    address=address,
                    weight=weight,
                    priority=priority,
                    health_status=health,
                    hostname=hostname,
                )
            )
    return tuple(out)
