"""Network (L4) and listener filter interfaces, and the registries that map config
types to them.

A network filter is one module under `filters/network/` with a config class
(a subclass of `config.NetworkFilterConfig`) and a `NetworkFilter` subclass
registered with `@network_filter(ConfigClass)`; a listener filter likewise
with `config.ListenerFilterConfig` and `@listener_filter(ConfigClass)`. The
runtime builds filters from the registries; there is no if/elif over kinds.

- A listener filter runs once per accepted connection, before a filter
  chain is chosen, inside the listener's `listener_filters_timeout` scope.
  It may read from the connection (the tls_inspector peeks at the
  ClientHello) and returns the stream the rest of the connection uses
  (e.g. one that replays the peeked bytes), filling in `DownstreamConnection`
  fields used for chain matching.
- A network filter is the terminal filter of a filter chain (the HTTP
  connection manager, the TCP proxy): `serve()` owns the connection until
  it ends. One instance per filter chain serves every connection of it.

Nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from trioproxy.config import (
    AccessLog,
    FilterChain,
    ListenerFilterConfig,
    NetworkFilterConfig,
)

if TYPE_CHECKING:
    from trioproxy.config import HttpConnectionManager
    from trioproxy.http.route_table import RuntimeFractions
    from trioproxy.http.router import Router
    from trioproxy.net.network import Network
    from trioproxy.net.overload import OverloadState
    from trioproxy.net.tls import DownstreamTlsInfo
    from trioproxy.observe.stats import StatsStore
    from trioproxy.observe.tracing.tracer import Tracer
    from trioproxy.upstream.cluster_manager import ClusterManager

__all__ = [
    "LISTENER_FILTERS",
    "NETWORK_FILTERS",
    "DownstreamConnection",
    "FilterContext",
    "ListenerFilter",
    "NetworkFilter",
    "listener_filter",
    "network_filter",
]


@attrs.define(kw_only=True)
class DownstreamConnection:
    """What is known about one downstream connection, filled in as it goes."""

    remote: str  # "host:port" of the client
    local: str  # "host:port" we accepted on
    # Set by the tls_inspector: "tls" or "raw_buffer" ("" if not inspected).
    transport_protocol: str = ""
    # From the ClientHello (tls_inspector): the requested server name and
    # the client's ALPN offer.
    server_name: str = ""
    requested_alpn: tuple[str, ...] = ()
    # Set after a TLS handshake on this chain.
    tls: DownstreamTlsInfo | None = None

    @property
    def remote_ip(self) -> str:
        return self.remote.rsplit(":", 1)[0].strip("[]")

    @property
    def remote_port(self) -> int:
        return int(self.remote.rsplit(":", 1)[1])

    @property
    def local_ip(self) -> str:
        return self.local.rsplit(":", 1)[0].strip("[]")

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1])


class FilterContext(Protocol):
    """Server resources a filter may use (the runtime's `Server` provides them)."""

    stats: StatsStore
    clusters: ClusterManager
    router: Router
    network: Network
    overload: OverloadState

    def access_loggers(self, configs: Sequence[AccessLog]) -> list[Any]:
        """Loggers (with `.log(StreamInfo)`) for access-log configs."""
        ...

    def tracer(self, config: HttpConnectionManager) -> Tracer | None:
        """The tracer for an HCM's `tracing` (None: not traced)."""
        ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def runtime(self) -> RuntimeFractions:
        """Envoy's runtime (static + admin layers), read at request time."""
        ...


class NetworkFilter:
    """Base of terminal network filters; one instance per filter chain."""

    async def serve(self, stream: trio.abc.Stream, conn: DownstreamConnection) -> None:
        """Own `stream` until the connection ends (the caller closes it after)."""
        raise NotImplementedError


class ListenerFilter:
    """Base of listener filters; one instance per listener."""

    async def on_accept(
        self, stream: trio.abc.Stream, conn: DownstreamConnection
    ) -> trio.abc.Stream | None:
        """The stream to carry on with, or None to close the connection."""
        return stream


NetworkFilterFactory = Callable[[Any, FilterContext, FilterChain, str], NetworkFilter]
"""(config, server context, the filter chain, listener stat prefix "listener.<addr>.")."""
ListenerFilterFactory = Callable[[Any, FilterContext, str], ListenerFilter]
"""(config, server context, listener stat prefix "listener.<addr>.")."""

NETWORK_FILTERS: dict[type[NetworkFilterConfig], NetworkFilterFactory] = {}
LISTENER_FILTERS: dict[type[ListenerFilterConfig], ListenerFilterFactory] = {}

N = TypeVar("N", bound=type[NetworkFilter])
L = TypeVar("L", bound=type[ListenerFilter])


def network_filter(config_type: type[NetworkFilterConfig]) -> Callable[[N], N]:
    """Register `cls(config, ctx, chain, listener_prefix)` for configs of `config_type`."""

    def deco(cls: N) -> N:
        NETWORK_FILTERS[config_type] = cls
        return cls

    return deco


def listener_filter(config_type: type[ListenerFilterConfig]) -> Callable[[L], L]:
    """Register `cls(config, ctx, listener_prefix)` for configs of `config_type`."""

    def deco(cls: L) -> L:
        LISTENER_FILTERS[config_type] = cls
        return cls

    return deco
