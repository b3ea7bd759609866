"""The compiler's TLS, filter-chain-match and TCP-proxy checks (see `_compile`).

Same rules as `_compile`: every problem is recorded with the `file:line` of
the call that caused it and compilation carries on with a placeholder.

What is checked here:
- certificate, key and CA files exist and load (with the stdlib `ssl`, as
  the runtime will), a key matches its certificate, client-certificate
  requirements have a CA, SAN matchers are well-formed;
- TLS versions, ALPN names, server names (one leading "*." wildcard at
  most), CIDRs (no host bits), ports;
- per listener: whether the tls_inspector is needed (any chain matching on
  SNI, ALPN or transport, or TLS and plaintext chains sharing the port); if
  it is, TLS chains match transport "tls" and plaintext HTTP chains
  "raw_buffer" unless told otherwise; no two chains with the same match.

Relative file names are resolved against the directory of the mesh file
whose call named them, so a mesh can be validated or served from anywhere.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast, get_args

import attrs

from trioproxy.config import (
    CertificateValidation,
    DownstreamTlsContext,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    ListenerFilterConfig,
    Location,
    SanMatcher,
    TcpProxy,
    TlsCertificate,
    TlsInspector,
    UpstreamTlsContext,
    WeightedCluster,
)
from trioproxy.config.graph import (
    ClientCertDetail,
    CodecType,
    ForwardClientCertDetails,
    SanMatchKind,
    SanType,
    TlsVersion,
    TransportProtocol,
    UpstreamProtocol,
)

from ._tls_builders import ChainOptions, SanBuilder, TcpProxyBuilder, TlsBuilder, UpstreamTlsSpec

if TYPE_CHECKING:
    from ._compile import _Compiler

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "apply_chain_options",
    "finish_listener",
    "tcp_proxy_chain",
    "upstream_tls",
    "xfcc_options",
]

_VERSIONS: Final = {"1.2": "TLSv1_2", "1.3": "TLSv1_3", "TLSv1_2": "TLSv1_2", "TLSv1_3": "TLSv1_3"}
_SERVER_NAME: Final = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]+")
# Envoy's FilterChain has no handshake timeout by default; ours (graph.py).
DEFAULT_HANDSHAKE_TIMEOUT: Final = 15.0
_ALPN_BY_CODEC: Final[dict[str, tuple[str, ...]]] = {
    "auto": ("h2", "http/1.1"),
    "http1": ("http/1.1",),
    "http2": ("h2",),
}
_ALPN_BY_PROTOCOL: Final[dict[str, tuple[str, ...]]] = {
    "auto": ("h2", "http/1.1"),
    "http1": ("http/1.1",),
    "http2": ("h2",),
}


def _kind(value: object) -> str:
    return type(value).__name__


def resolve_path(path: str, location: Location | None) -> str:
    """`path`, made absolute against the directory of the file at `location`."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    if location is not None and os.path.isfile(location.file):
        return os.path.normpath(os.path.join(os.path.dirname(location.file), path))
    return os.path.abspath(path)


def _file(c: _Compiler, value: object, what: str, location: Location | None) -> str | None:
    if not isinstance(value, str) or not value:
        c.error(location, f"{what} must be a file name, got {value!r}")
        return None
    path = resolve_path(value, location)
    if not os.path.isfile(path):
        c.error(location, f"{what} {value!r} not found ({path})")
        return None
    return path


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _cert_pair(
    c: _Compiler, cert: object, key: object, what: str, location: Location | None
) -> TlsCertificate | None:
    if cert is None or key is None:
        c.error(location, f"{what}: a certificate needs both a cert and a key file")
        return None
    cert_path = _file(c, cert, f"{what}: certificate file", location)
    key_path = _file(c, key, f"{what}: key file", location)
    if cert_path is None or key_path is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        c.error(
            location,
            f"{what}: cannot load certificate {cert!r} with key {key!r}: {_ssl_reason(exc)}",
        )
        return None
    return TlsCertificate(cert_chain_file=cert_path, private_key_file=key_path)


def _ca(c: _Compiler, ca: object, what: str, location: Location | None) -> str | None:
    if ca is None:
        return None
    path = _file(c, ca, f"{what}: CA file", location)
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        c.error(location, f"{what}: cannot load CA file {ca!r}: {_ssl_reason(exc)}")
        return None
    return path


def _san(c: _Compiler, spec: object, what: str, location: Location | None) -> SanMatcher | None:
    kinds = get_args(SanType)
    if isinstance(spec, str):
        kind, sep, value = spec.partition(":")
        kind = kind.lower()
        if not sep or kind not in kinds or not value:
            c.error(
                location,
                f"{what}: bad SAN {spec!r} (expected 'kind:value' with kind one of"
                f" {', '.join(kinds)}, or san(...))",
            )
            return None
        return SanMatcher(san_type=cast(SanType, kind), kind="exact", value=value)
    if not isinstance(spec, SanBuilder):
        c.error(
            location, f"{what}: a SAN matcher must be 'kind:value' or san(...), got {_kind(spec)}"
        )
        return None
    loc = spec._location or location
    kind_raw = spec._kind
    kind = kind_raw.lower() if isinstance(kind_raw, str) else ""
    if kind not in kinds:
        c.error(loc, f"bad SAN kind {kind_raw!r} (expected {', '.join(kinds)})")
        return None
    if len(spec._given) != 1:
        c.error(loc, "san() takes exactly one of exact=, prefix=, suffix=, contains=, regex=")
        return None
    match_kind, given_value = spec._given[0]
    if not isinstance(given_value, str) or not given_value:
        c.error(loc, f"san() {match_kind}= must be a non-empty string, got {given_value!r}")
        return None
    value = given_value
    if match_kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            c.error(loc, f"bad SAN regex {value!r}: {exc}")
            return None
    assert match_kind in get_args(SanMatchKind)
    return SanMatcher(
        san_type=cast(SanType, kind), kind=cast(SanMatchKind, match_kind), value=value
    )


def _sans(
    c: _Compiler, specs: Sequence[object], what: str, location: Location | None
) -> tuple[SanMatcher, ...]:
    out = []
    for spec in specs:
        m = _san(c, spec, what, location)
        if m is not None:
            out.append(m)
    return tuple(out)


def _versions(
    c: _Compiler, lo: object, hi: object, what: str, location: Location | None
) -> tuple[TlsVersion, TlsVersion]:
    out: list[TlsVersion] = []
    for raw, default in ((lo, "TLSv1_2"), (hi, "TLSv1_3")):
        v = _VERSIONS.get(raw) if isinstance(raw, str) else None
        if v is None:
            c.error(location, f"{what}: bad TLS version {raw!r} (expected '1.2' or '1.3')")
            v = default
        out.append(cast(TlsVersion, v))
    if out[0] > out[1]:
        c.error(location, f"{what}: min_version {lo!r} is above max_version {hi!r}")
    return out[0], out[1]


def _alpn(c: _Compiler, raw: object, what: str, location: Location | None) -> tuple[str, ...]:
    items = (raw,) if isinstance(raw, str) else raw
    if not isinstance(items, tuple | list):
        c.error(location, f"{what}: alpn must be a list of protocol names, got {_kind(raw)}")
        return ()
    out = []
    for p in items:
        if not isinstance(p, str) or not p or len(p.encode()) > 255 or not p.isascii():
            c.error(location, f"{what}: bad ALPN protocol name {p!r}")
            continue
        out.append(p)
    return tuple(out)


def _watch(c: _Compiler, raw: object, what: str, location: Location | None) -> float:
    return c.duration(raw, f"{what}: watch_interval", location)


# --------------------------------------------------------------------------- downstream


def downstream_tls(
    c: _Compiler, tb: object, what: str, default_alpn: tuple[str, ...], location: Location | None
) -> DownstreamTlsContext | None:
    if not isinstance(tb, TlsBuilder):
        c.error(location, f"{what}: tls= must be tls(...), got {_kind(tb)}")
        return None
    loc = tb._location or location
    if not tb._certs:
        c.error(loc, f"{what}: tls() needs a certificate (cert=, key=)")
    certs = [_cert_pair(c, cert, key, what, loc) for cert, key in tb._certs]
    ca = _ca(c, tb._ca, what, loc)
    require = c.flag(tb._require_client_cert, f"{what}: require_client_cert", loc)
    sans = _sans(c, tb._san, what, loc)
    if require and tb._ca is None:
        c.error(loc, f"{what}: require_client_cert=True needs ca= to verify client certificates")
    if sans and tb._ca is None:
        c.error(loc, f"{what}: san= matching of client certificates needs ca=")
    alpn = default_alpn if tb._alpn is None else _alpn(c, tb._alpn, what, loc)
    lo, hi = _versions(c, tb._min_version, tb._max_version, what, loc)
    validation = None
    if ca is not None or sans:
        validation = CertificateValidation(trusted_ca_file=ca, match_subject_alt_names=sans)
    return DownstreamTlsContext(
        certificates=tuple(x for x in certs if x is not None),
        validation=validation,
        require_client_certificate=require,
        alpn_protocols=alpn,
        min_version=lo,
        max_version=hi,
        watch_interval=_watch(c, tb._watch_interval, what, loc),
    )


def _cidrs(
    c: _Compiler, raw: Sequence[object], what: str, location: Location | None
) -> tuple[str, ...]:
    out = []
    for r in raw:
        if not isinstance(r, str):
            c.error(location, f"{what}: a source range must be a CIDR string, got {_kind(r)}")
            continue
        try:
            net = ipaddress.ip_network(r, strict=True)
        except ValueError as exc:
            hint = ""
            try:
                hint = f" (did you mean {str(ipaddress.ip_network(r, strict=False))!r}?)"
            except ValueError:
                pass
            c.error(location, f"{what}: bad CIDR {r!r}: {exc}{hint}")
            continue
        out.append(str(net))
    return tuple(out)


def _server_names(
    c: _Compiler, raw: Sequence[object], what: str, location: Location | None
) -> tuple[str, ...]:
    out: list[str] = []
    for n in raw:
        if not isinstance(n, str):
            c.error(location, f"{what}: a server name must be a string, got {_kind(n)}")
            continue
        name = n.lower().rstrip(".")
        if not _SERVER_NAME.fullmatch(name):
            c.error(
                location,
                f"{what}: bad server name {n!r} (a host name, optionally with one leading"
                " '*.' wildcard label such as '*.example.com')",
            )
            continue
        if name in out:
            c.error(location, f"{what}: server name {n!r} repeated")
            continue
        out.append(name)
    return tuple(out)


def apply_chain_options(
    c: _Compiler,
    chain: FilterChain,
    opts: ChainOptions,
    what: str,
    default_alpn: tuple[str, ...],
) -> FilterChain:
    """`chain` with the TLS context and match given to `.chain(...)`."""
    loc = opts.location or chain.location
    tls = None
    if opts.tls is not None:
        tls = downstream_tls(c, opts.tls, what, default_alpn, loc)
    transport: TransportProtocol = ""
    if opts.transport is not None:
        transport = c.choice(
            opts.transport,
            cast(tuple[TransportProtocol, ...], ("tls", "raw_buffer")),
            f"{what}: transport",
            loc,
        )
    if transport == "raw_buffer" and opts.tls is not None:
        c.error(loc, f"{what}: a chain that terminates TLS cannot match transport 'raw_buffer'")
    port = None
    raw_port = opts.destination_port
    if raw_port is not None:
        if isinstance(raw_port, int) and not isinstance(raw_port, bool) and 0 < raw_port < 65536:
            port = raw_port
        else:
            c.error(loc, f"{what}: bad destination_port {raw_port!r} (expected 1..65535)")
    name = ""
    if opts.name is not None:
        name = c.name(opts.name, "chain", loc)
    timeout = DEFAULT_HANDSHAKE_TIMEOUT
    if opts.handshake_timeout is not None:
        timeout = c.duration(opts.handshake_timeout, f"{what}: handshake_timeout", loc)
    match = FilterChainMatch(
        destination_port=port,
        server_names=_server_names(c, opts.server_names, what, loc),
        transport_protocol=transport,
        application_protocols=_alpn(c, opts.alpn, what, loc),
        source_prefix_ranges=_cidrs(c, opts.source, what, loc),
    )
    return attrs.evolve(
        chain, match=match, tls=tls, name=name, transport_socket_connect_timeout=timeout
    )


def finish_listener(
    c: _Compiler,
    listener: str,
    chains: list[FilterChain],
    inspector: bool,
    location: Location | None,
) -> tuple[list[FilterChain], tuple[ListenerFilterConfig, ...]]:
    """Add the tls_inspector where needed, infer transports, reject duplicates."""
    tls_chains = [ch for ch in chains if ch.tls is not None]
    mixed = bool(tls_chains) and len(tls_chains) < len(chains)
    needs = inspector or mixed or any(ch.match.needs_inspection for ch in chains)
    if not needs:
        filters: tuple[ListenerFilterConfig, ...] = ()
    else:
        filters = (TlsInspector(),)
        out = []
        for ch in chains:
            if not ch.match.transport_protocol:
                if ch.tls is not None:
                    ch = attrs.evolve(ch, match=attrs.evolve(ch.match, transport_protocol="tls"))
                elif any(isinstance(f, HttpConnectionManager) for f in ch.filters):
                    ch = attrs.evolve(
                        ch, match=attrs.evolve(ch.match, transport_protocol="raw_buffer")
                    )
            out.append(ch)
        chains = out
    seen: dict[FilterChainMatch, tuple[int, Location | None]] = {}
    for i, ch in enumerate(chains):
        first = seen.get(ch.match)
        if first is not None:
            at = f" at {first[1]}" if first[1] is not None else ""
            c.error(
                ch.location or location,
                f"listener {listener!r}: chain {i} has the same filter_chain_match as chain"
                f" {first[0]}{at} (give server_names=, alpn=, source= or transport= to tell"
                " them apart)",
            )
        else:
            seen[ch.match] = (i, ch.location)
    return chains, filters


def default_alpn_for_codec(codec: CodecType) -> tuple[str, ...]:
    return _ALPN_BY_CODEC[codec]


# --------------------------------------------------------------------------- tcp proxy


def tcp_proxy_chain(
    c: _Compiler, tb: TcpProxyBuilder, listener: str, location: Location | None
) -> FilterChain:
    loc = tb._location or location
    stat_prefix = listener
    if tb._stat_prefix is not None:
        stat_prefix = c.name(tb._stat_prefix, "tcp_proxy() stat_prefix", loc)
    target = tb._target
    cluster: str | None = None
    weighted: tuple[WeightedCluster, ...] = ()
    from ._builders import AccessLogSpec, ClusterBuilder, WeightedBuilder

    if isinstance(target, WeightedBuilder):
        weighted = c.weighted(target)
    elif isinstance(target, ClusterBuilder | str):
        cluster = c.cluster_ref(target, loc)
    else:
        c.error(
            loc,
            f"tcp_proxy() needs a cluster, a cluster name or weighted(...), got {_kind(target)}",
        )
    access_logs = tuple(
        c.access_log(AccessLogSpec(path=spec.path, format=spec.format, location=spec.location))
        for spec in tb._access_logs
    )
    proxy = TcpProxy(
        stat_prefix=stat_prefix,
        cluster=cluster,
        weighted_clusters=weighted,
        idle_timeout=c.duration(tb._idle_timeout, "tcp_proxy() idle_timeout", loc),
        max_connect_attempts=c.count(
            tb._max_connect_attempts, "tcp_proxy() max_connect_attempts", loc, low=1, high=100
        ),
        access_logs=access_logs,
        location=loc,
    )
    return FilterChain(filters=(proxy,), location=location)


# --------------------------------------------------------------------------- upstream


def upstream_tls(
    c: _Compiler,
    given: object,
    location: Location | None,
    cluster: str,
    protocol: UpstreamProtocol,
    endpoint_hosts: Sequence[str],
) -> UpstreamTlsContext | None:
    what = f"cluster {cluster!r} tls"
    if not isinstance(given, UpstreamTlsSpec):
        c.error(location, f"{what}: expected .tls(...), got {_kind(given)}")
        return None
    loc = given.location or location
    sni = None
    if given.sni is not None:
        if (
            not isinstance(given.sni, str)
            or "*" in given.sni
            or not _SERVER_NAME.fullmatch(given.sni.lower())
        ):
            c.error(loc, f"{what}: bad sni {given.sni!r} (expected a host name)")
        else:
            sni = given.sni.lower()
    ca = _ca(c, given.ca, what, loc)
    sans = _sans(c, given.san, what, loc)
    if sans and given.ca is None:
        c.error(loc, f"{what}: san= matching needs ca= to verify the upstream's certificate")
    verify_hostname = c.flag(given.verify_hostname, f"{what}: verify_hostname", loc)
    if ca is not None and verify_hostname and not sans and sni is None:
        ips = [h for h in endpoint_hosts if _is_ip(h)]
        if ips:
            c.error(
                loc,
                f"{what}: cannot verify the certificate of {ips[0]} by name: give sni=,"
                " san=[...] or verify_hostname=False",
            )
    certificate = None
    if given.cert is not None or given.key is not None:
        certificate = _cert_pair(c, given.cert, given.key, what, loc)
    alpn = _ALPN_BY_PROTOCOL[protocol] if given.alpn is None else _alpn(c, given.alpn, what, loc)
    if protocol == "http2" and given.alpn is not None and "h2" not in alpn:
        c.error(loc, f"{what}: an HTTP/2 cluster must offer ALPN 'h2'")
    lo, hi = _versions(c, given.min_version, given.max_version, what, loc)
    validation = None
    if ca is not None or sans:
        validation = CertificateValidation(trusted_ca_file=ca, match_subject_alt_names=sans)
    return UpstreamTlsContext(
        sni=sni,
        validation=validation,
        verify_hostname=verify_hostname,
        certificate=certificate,
        alpn_protocols=alpn,
        min_version=lo,
        max_version=hi,
        watch_interval=_watch(c, given.watch_interval, what, loc),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- XFCC


def xfcc_options(
    c: _Compiler, mode: object, details: object, location: Location | None
) -> tuple[ForwardClientCertDetails, tuple[ClientCertDetail, ...]]:
    m = c.choice(mode, get_args(ForwardClientCertDetails), "forward_client_cert", location)
    out: list[ClientCertDetail] = []
    items = details if isinstance(details, tuple | list) else (details,)
    for d in items:
        out.append(c.choice(d, get_args(ClientCertDetail), "client_cert_details item", location))
    return m, tuple(dict.fromkeys(out))
