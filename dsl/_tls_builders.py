"""Builders for TLS, filter-chain matching and the TCP proxy.

Same rules as `_builders`: frozen attrs classes that store raw values with
the `Location` of the user's call and never raise; `_compile_tls` checks
them. Certificate paths that are relative are resolved at compile time
against the directory of the mesh file that named them.

    listener("edge", "127.0.0.1:8443")
        .chain(http("a").route(prefix("/"), "a"),
               tls=tls("certs/a.pem", "certs/a.key"), server_names=["a.example.test"])
        .chain(tcp_proxy("legacy"), server_names=["legacy.example.test"])  # passthrough

    cluster("api", "api.internal:443").tls(ca="ca.pem", san=["dns:api.internal"]).http2()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from trioproxy.config import Location

from ._errors import caller_location
from ._values import Duration

if TYPE_CHECKING:
    from ._builders import ClusterBuilder, WeightedBuilder

__all__ = [
    "ChainOptions",
    "SanBuilder",
    "TcpProxyBuilder",
    "TlsBuilder",
    "UpstreamTlsSpec",
    "san",
    "tcp_proxy",
    "tls",
]


# --------------------------------------------------------------------------- SANs


@attrs.frozen(kw_only=True)
class SanBuilder:
    """A subject-alternative-name matcher. Made by `san()`."""

    _kind: object
    _given: tuple[tuple[str, object], ...]
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def san(
    kind: str,
    *,
    exact: str | None = None,
    prefix: str | None = None,
    suffix: str | None = None,
    contains: str | None = None,
    regex: str | None = None,
) -> SanBuilder:
    """Match a peer certificate's SAN of `kind` ("dns", "uri", "email", "ip")
    with exactly one matcher, e.g. `san("uri", prefix="spiffe://prod/")`.

    A plain string "dns:api.internal" (kind, colon, value) in a `san=` list
    is the same as `san("dns", exact="api.internal")`. An exact DNS matcher
    also accepts a wildcard SAN covering the name, as Envoy does.
    """
    given = tuple(
        (k, v)
        for k, v in (
            ("exact", exact),
            ("prefix", prefix),
            ("suffix", suffix),
            ("contains", contains),
            ("regex", regex),
        )
        if v is not None
    )
    return SanBuilder(kind=kind, given=given, location=caller_location())


SanSpec = str | SanBuilder
"""A SAN matcher: "kind:value" (exact) or `san(...)`."""


# --------------------------------------------------------------------------- TLS


@attrs.frozen(kw_only=True)
class TlsBuilder:
    """TLS termination for a filter chain. Made by `tls()`."""

    _certs: tuple[tuple[object, object], ...]
    _ca: object = None
    _require_client_cert: object = False
    _san: tuple[object, ...] = ()
    _alpn: object = None
    _min_version: object = "1.2"
    _max_version: object = "1.3"
    _watch_interval: object = 5.0
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)


def tls(
    cert: str | None = None,
    key: str | None = None,
    *,
    certs: Sequence[tuple[str, str]] = (),
    ca: str | None = None,
    require_client_cert: bool = False,
    san: Sequence[SanSpec] = (),
    alpn: Sequence[str] | None = None,
    min_version: str = "1.2",
    max_version: str = "1.3",
    watch_interval: Duration = 5.0,
) -> TlsBuilder:
    """Terminate TLS with the certificate chain `cert` and private key `key`
    (PEM files; more pairs, e.g. RSA and ECDSA, in `certs`).

    `ca` verifies client certificates (mTLS): they are then requested, and
    required if `require_client_cert`; `san` additionally requires one of
    the client's SANs to match. `alpn` defaults to what the chain's codec
    speaks (h2 and http/1.1 for `http()` with codec auto, none for a TCP
    proxy). Versions are "1.2" or "1.3" (Envoy's defaults: 1.2 to 1.3).
    Files are polled every `watch_interval` (0: never) and reloaded when
    they change.
    """
    pairs: list[tuple[object, object]] = []
    if cert is not None or key is not None:
        pairs.append((cert, key))
    pairs.extend((c, k) for c, k in certs)
    return TlsBuilder(
        certs=tuple(pairs),
        ca=ca,
        require_client_cert=require_client_cert,
        san=tuple(san),
        alpn=None if alpn is None else tuple(alpn),
        min_version=min_version,
        max_version=max_version,
        watch_interval=watch_interval,
        location=caller_location(),
    )


@attrs.frozen(kw_only=True)
class UpstreamTlsSpec:
    """A `cluster(...).tls(...)` call, raw."""

    sni: object = None
    ca: object = None
    san: tuple[object, ...] = ()
    verify_hostname: object = True
    cert: object = None
    key: object = None
    alpn: object = None
    min_version: object = "1.2"
    max_version: object = "1.3"
    watch_interval: object = 5.0
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


# --------------------------------------------------------------------------- chains


@attrs.frozen(kw_only=True)
class ChainOptions:
    """The TLS context and match of one `.chain(...)` call, raw."""

    tls: object = None
    server_names: tuple[object, ...] = ()
    transport: object = None
    alpn: tuple[object, ...] = ()
    source: tuple[object, ...] = ()
    destination_port: object = None
    name: object = None
    handshake_timeout: object = None
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


def _strings(value: object) -> tuple[object, ...]:
    """A str given where a list was expected counts as one item."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    return (value,)


def chain_options(
    *,
    tls: object,
    server_names: object,
    transport: object,
    alpn: object,
    source: object,
    destination_port: object,
    name: object,
    handshake_timeout: object,
    location: Location | None,
) -> ChainOptions:
    return ChainOptions(
        tls=tls,
        server_names=_strings(server_names),
        transport=transport,
        alpn=_strings(alpn),
        source=_strings(source),
        destination_port=destination_port,
        name=name,
        handshake_timeout=handshake_timeout,
        location=location,
    )


# --------------------------------------------------------------------------- tcp proxy


@attrs.frozen(kw_only=True)
class TcpAccessLogSpec:
    path: object
    format: object
    location: Location | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class TcpProxyBuilder:
    """A TCP proxy filter chain. Made by `tcp_proxy()`."""

    _target: object
    _stat_prefix: object = None
    _idle_timeout: object = 3600.0
    _max_connect_attempts: object = 1
    _access_logs: tuple[TcpAccessLogSpec, ...] = ()
    _location: Location | None = attrs.field(default=None, eq=False, repr=False)

    def access_log(self, path: str = "-", format: str | None = None) -> TcpProxyBuilder:
        """Log each connection to `path` with an Envoy format string (default:
        Envoy's default format; HTTP operators print "-")."""
        spec = TcpAccessLogSpec(path=path, format=format, location=caller_location())
        return attrs.evolve(self, access_logs=(*self._access_logs, spec))


def tcp_proxy(
    target: ClusterBuilder | str | WeightedBuilder,
    *,
    stat_prefix: str | None = None,
    idle_timeout: Duration = 3600.0,
    max_connect_attempts: int = 1,
) -> TcpProxyBuilder:
    """Proxy each connection's bytes to a host of a cluster (or one of
    `weighted(...)` clusters, picked per connection).

    `stat_prefix` (stats `tcp.<stat_prefix>.*`) defaults to the listener's
    name; `idle_timeout` is Envoy's 1 h (0 disables); `max_connect_attempts`
    is Envoy's 1.
    """
    return TcpProxyBuilder(
        target=target,
        stat_prefix=stat_prefix,
        idle_timeout=idle_timeout,
        max_connect_attempts=max_connect_attempts,
        location=caller_location(),
    )
