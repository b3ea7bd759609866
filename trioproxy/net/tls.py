"""TLS on trio streams with the stdlib `ssl` module: contexts, handshakes, reloads.

What lives here:

- `ServerTls` / `ClientTls`: the runtime of a `DownstreamTlsContext` /
  `UpstreamTlsContext`. Each holds the current `ssl.SSLContext` and
  rebuilds it when one of its files changes (`watch()`, a polling task:
  new handshakes use the new certificate, established connections keep
  theirs). A reload that fails (a key that does not match its certificate
  because only one file was rewritten yet, say) keeps the old context and
  is retried at the next poll.
- `server_handshake()` and `ClientTls.handshake()`: the TLS handshake as
  one step with its failure classified into Envoy's `ssl.*` stats.
- `connect_upstream()`: dial and, for a TLS cluster, handshake, within one
  connect deadline (Envoy's connect_timeout covers the TLS handshake).
- `PrefixedStream`: a stream whose first bytes were already read by a
  listener filter (the tls_inspector) and are replayed to the next reader.
- `DownstreamTlsInfo` and the `DOWNSTREAM_TLS` context variable: what the
  connection's TLS session says about the client, for the
  x-forwarded-client-cert filter. The connection task sets it; HTTP/1.1
  requests run in that task and HTTP/2 stream tasks inherit it (trio tasks
  start with a copy of their spawner's context).

What must not: certificate parsing beyond the stdlib (that is the sans-IO
`codec.x509`), or any policy about which chain to use.

Cancellation: `connect_upstream` closes the half-made TCP stream without a
checkpoint if the handshake fails or is cancelled, so a cancelled pool
`acquire()` leaks no socket (see the pools' docstrings).
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import logging
import math
import os
import re
import ssl
from collections.abc import Collection, Sequence
from typing import Final

import attrs
import trio

from trioproxy.codec.x509 import CertInfo, X509Error, parse_certificate, pem_to_der
from trioproxy.config import (
    CertificateValidation,
    DownstreamTlsContext,
    SanMatcher,
    TlsCertificate,
    UpstreamTlsContext,
)
from trioproxy.net.errors import ConnectFailure, ConnectTimeout
from trioproxy.net.network import Network, close_stream_nowait, socket_of
from trioproxy.observe.stats import Counter, StatsStore

__all__ = [
    "DOWNSTREAM_TLS",
    "ClientTls",
    "DownstreamTlsInfo",
    "HandshakeError",
    "PrefixedStream",
    "ServerTls",
    "TlsHandshakeFailure",
    "connect_upstream",
    "san_matches",
    "server_handshake",
]

log = logging.getLogger("trioproxy.tls")

_VERSIONS: Final = {
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}


class TlsHandshakeFailure(ConnectFailure):
    """The upstream TLS handshake failed (flag UF). `reason` is "TLS_error" and
    the message `<OpenSSL reason>:<detail>`, so the transport failure reason
    reads like Envoy's: `TLS_error: CERTIFICATE_VERIFY_FAILED:...`."""

    reason = "TLS_error"


# --------------------------------------------------------------------------- contexts


def _validation_files(v: CertificateValidation | None) -> list[str]:
    return [v.trusted_ca_file] if v is not None and v.trusted_ca_file else []


def _cert_files(certs: Sequence[TlsCertificate]) -> list[str]:
    return [f for c in certs for f in (c.cert_chain_file, c.private_key_file)]


def _base_context(purpose: int, min_version: str, max_version: str) -> ssl.SSLContext:
    side = ssl.PROTOCOL_TLS_SERVER if purpose == 0 else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.maximum_version = _VERSIONS[max_version]
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def build_server_context(cfg: DownstreamTlsContext) -> ssl.SSLContext:
    """A server context for `cfg` (reads its files: call off the event loop).

    Raises:
        OSError / ssl.SSLError: a file is missing or unreadable, or a key
            does not match its certificate.
    """
    ctx = _base_context(0, cfg.min_version, cfg.max_version)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    for cert in cfg.certificates:
        ctx.load_cert_chain(cert.cert_chain_file, cert.private_key_file)
    if cfg.alpn_protocols:
        ctx.set_alpn_protocols(list(cfg.alpn_protocols))
    ca = cfg.validation.trusted_ca_file if cfg.validation else None
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_certificate else ssl.CERT_OPTIONAL
    elif cfg.require_client_certificate:
        # The compiler rejects this; a direct graph gets a clear error here.
        raise ssl.SSLError("require_client_certificate needs a trusted CA")
    return ctx


def build_client_context(cfg: UpstreamTlsContext, *, check_hostname: bool) -> ssl.SSLContext:
    """A client context for `cfg` (reads its files: call off the event loop)."""
    ctx = _base_context(1, cfg.min_version, cfg.max_version)
    ca = cfg.validation.trusted_ca_file if cfg.validation else None
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        # Envoy verifies an upstream only with a validation context.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.certificate is not None:
        ctx.load_cert_chain(cfg.certificate.cert_chain_file, cfg.certificate.private_key_file)
    if cfg.alpn_protocols:
        ctx.set_alpn_protocols(list(cfg.alpn_protocols))
    return ctx


def _signature(files: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or replaced (mtime, size, inode)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append((-1, -1, -1))
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


Signature = tuple[tuple[int, int, int], ...]


@attrs.frozen
class _Loaded:
    """What one read of the files gave: the context, the files' signature, and
    the URI SANs of the first certificate (for XFCC's "By")."""

    context: ssl.SSLContext
    signature: Signature
    uri_sans: tuple[str, ...] = ()


class _Reloadable:
    """A context built from files, rebuilt when their signature changes.

    `_load()` reads the files (blocking: run it in a worker thread); the
    constructor takes its result, or calls it itself when `loaded` is None
    (start-up only, before anything is served).
    """

    def __init__(
        self,
        files: Sequence[str],
        interval: float,
        what: str,
        stats: StatsStore,
        prefix: str,
        loaded: _Loaded | None,
    ) -> None:
        self.files = tuple(dict.fromkeys(files))
        self.interval = interval
        self.what = what
        if loaded is None:
            loaded = self._load()
        self._apply(loaded)
        self._failed_sig: Signature | None = None
        self.reloads = stats.counter(prefix + "context_reload")
        self.reload_errors = stats.counter(prefix + "context_reload_error")

    def _load(self) -> _Loaded:
        """Read the files (blocking). Raises OSError / ssl.SSLError / ValueError."""
        raise NotImplementedError

    def _apply(self, loaded: _Loaded) -> None:
        self.context = loaded.context
        self._sig = loaded.signature
        self.uri_sans = loaded.uri_sans

    def _check(self) -> _Loaded | BaseException | None:
        """In a worker thread: the files' new contents if they changed, else None."""
        sig = _signature(self.files)
        if sig == self._sig or sig == self._failed_sig:
            return None
        try:
            return self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed_sig = sig
            return exc

    async def reload_if_changed(self) -> bool:
        """Rebuild the context if a file changed; True if it was replaced."""
        result = await trio.to_thread.run_sync(self._check)
        if result is None:
            return False
        if isinstance(result, BaseException):
            self.reload_errors.inc()
            log.error("%s: keeping the old certificates: %s", self.what, result)
            return False
        self._apply(result)
        self._failed_sig = None
        self.reloads.inc()
        log.info("%s: certificates reloaded", self.what)
        return True

    async def watch(self) -> None:
        """Poll the files every `interval` seconds, forever (0: never)."""
        if self.interval <= 0:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self.interval)
            await self.reload_if_changed()


def _server_files(config: DownstreamTlsContext) -> list[str]:
    return _cert_files(config.certificates) + _validation_files(config.validation)


def _load_server(config: DownstreamTlsContext) -> _Loaded:
    """Read a server context's files (blocking)."""
    sig = _signature(tuple(dict.fromkeys(_server_files(config))))
    ctx = build_server_context(config)
    # Our own URI SANs: the "By" of x-forwarded-client-cert.
    uri_sans: tuple[str, ...] = ()
    for cert in config.certificates[:1]:
        try:
            with open(cert.cert_chain_file, "rb") as f:
                ders = pem_to_der(f.read())
            if ders:
                uri_sans = parse_certificate(ders[0]).sans_of("uri")
        except (OSError, X509Error):
            pass
    return _Loaded(ctx, sig, uri_sans)


class ServerTls(_Reloadable):
    """A `DownstreamTlsContext` at runtime; stats `<prefix>ssl.*`.

    Make one with `await ServerTls.open(...)`, which reads the files off the
    event loop.

    Args:
        config: the chain's TLS context.
        stats, prefix: where the ssl stats go (`listener.<addr>.`).
        what: how log lines name it.
    """

    def __init__(
        self,
        config: DownstreamTlsContext,
        stats: StatsStore,
        prefix: str,
        what: str,
        loaded: _Loaded | None = None,
    ) -> None:
        self.config = config
        p = prefix + "ssl."
        super().__init__(_server_files(config), config.watch_interval, what, stats, p, loaded)
        self.stats = SslStats(stats, p)

    @classmethod
    async def open(
        cls, config: DownstreamTlsContext, stats: StatsStore, prefix: str, what: str
    ) -> ServerTls:
        """Read the files in a worker thread, then build the runtime here.

        Raises:
            OSError / ssl.SSLError: a file is missing or does not load.
        """
        loaded = await trio.to_thread.run_sync(_load_server, config)
        return cls(config, stats, prefix, what, loaded)

    def _load(self) -> _Loaded:
        return _load_server(self.config)

    @property
    def local_uri_sans(self) -> tuple[str, ...]:
        return self.uri_sans

    @property
    def san_matchers(self) -> tuple[SanMatcher, ...]:
        v = self.config.validation
        return v.match_subject_alt_names if v is not None else ()


class SslStats:
    """Envoy's `ssl.*` stats of a listener or cluster (ssl.rst names)."""

    __slots__ = (
        "_prefix",
        "_stats",
        "_versions",
        "connection_error",
        "fail_verify_error",
        "fail_verify_no_cert",
        "fail_verify_san",
        "handshake",
        "no_certificate",
    )

    def __init__(self, stats: StatsStore, prefix: str) -> None:
        self._stats = stats
        self._prefix = prefix
        self.handshake = stats.counter(prefix + "handshake")
        self.connection_error = stats.counter(prefix + "connection_error")
        self.no_certificate = stats.counter(prefix + "no_certificate")
        self.fail_verify_error = stats.counter(prefix + "fail_verify_error")
        self.fail_verify_no_cert = stats.counter(prefix + "fail_verify_no_cert")
        self.fail_verify_san = stats.counter(prefix + "fail_verify_san")
        self._versions: dict[str, Counter] = {}

    def version(self, name: str | None) -> None:
        """Count `ssl.versions.<TLSv1.3>` (Envoy's name for the negotiated version)."""
        if not name:
            return
        c = self._versions.get(name)
        if c is None:
            c = self._versions[name] = self._stats.counter(f"{self._prefix}versions.{name}")
        c.inc()


# --------------------------------------------------------------------------- SAN matching


def _dns_wildcard_covers(pattern: str, name: str) -> bool:
    """`*.example.com` covers exactly one extra label: "a.example.com"."""
    if not pattern.startswith("*."):
        return False
    head, _, tail = name.partition(".")
    return bool(head) and tail == pattern[2:]


def _string_match(kind: str, value: str, candidate: str) -> bool:
    if kind == "exact":
        return candidate == value
    if kind == "prefix":
        return candidate.startswith(value)
    if kind == "suffix":
        return candidate.endswith(value)
    if kind == "contains":
        return value in candidate
    if kind == "regex":
        return re.fullmatch(value, candidate) is not None
    return False


def san_matches(matchers: Sequence[SanMatcher], cert: CertInfo) -> bool:
    """True if any SAN of `cert` matches any matcher (Envoy's rule)."""
    for m in matchers:
        for kind, san in cert.sans:
            if kind != m.san_type:
                continue
            if m.san_type == "dns":
                san_l = san.lower()
                value = m.value.lower() if m.kind != "regex" else m.value
                if _string_match(m.kind, value, san_l):
                    return True
                if m.kind == "exact" and _dns_wildcard_covers(san_l, value):
                    return True
            elif m.san_type == "ip":
                try:
                    if m.kind == "exact":
                        if ipaddress.ip_address(san) == ipaddress.ip_address(m.value):
                            return True
                        continue
                except ValueError:
                    continue
                if _string_match(m.kind, m.value, san):
                    return True
            elif _string_match(m.kind, m.value, san):
                return True
    return False


# --------------------------------------------------------------------------- handshake


def _openssl_reason(exc: BaseException) -> tuple[str, str, ssl.SSLError | None]:
    """(OpenSSL reason code, human detail, the ssl error) behind a handshake failure."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return "CERTIFICATE_VERIFY_FAILED", cause.verify_message or str(cause), cause
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or type(cause).__name__
        return reason, cause.strerror or str(cause), cause
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
        return "CONNECTION_CLOSED", "the peer closed the connection during the handshake", None
    return type(exc).__name__, str(exc), None


class HandshakeError(Exception):
    """A downstream TLS handshake failed; `stat` is the specific `ssl.*` counter
    to bump besides `connection_error` (or None)."""

    def __init__(self, message: str, stat: str | None) -> None:
        super().__init__(message)
        self.stat = stat


@attrs.frozen(kw_only=True)
class DownstreamTlsInfo:
    """The client side of a terminated TLS session, for XFCC and access logs."""

    sni: str
    alpn: str | None
    version: str | None
    peer_der: bytes | None  # the client's certificate, if it sent one
    peer: CertInfo | None
    local_uri_sans: tuple[str, ...]

    @property
    def peer_sha256(self) -> str:
        return hashlib.sha256(self.peer_der).hexdigest() if self.peer_der else ""

    @property
    def peer_pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.peer_der) if self.peer_der else ""


DOWNSTREAM_TLS: contextvars.ContextVar[DownstreamTlsInfo | None] = contextvars.ContextVar(
    "trioproxy_downstream_tls", default=None
)


async def server_handshake(
    stream: trio.abc.Stream, tls: ServerTls, *, sni: str = ""
) -> tuple[trio.SSLStream[trio.abc.Stream], DownstreamTlsInfo]:
    """Terminate TLS on `stream` with the chain's current context.

    The caller bounds this with the chain's handshake timeout scope and
    counts `ssl.connection_error` on `HandshakeError`; this counts the
    specific failure and, on success, `ssl.handshake`.

    Raises:
        HandshakeError: the handshake or the client-certificate checks failed.
    """
    st = tls.stats
    ssl_stream = trio.SSLStream(stream, tls.context, server_side=True, https_compatible=True)
    try:
        await ssl_stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        reason, detail, err = _openssl_reason(exc)
        stat = None
        if isinstance(err, ssl.SSLCertVerificationError):
            stat = "fail_verify_error"
        elif reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            stat = "fail_verify_no_cert"
        _bump(st, stat)
        raise HandshakeError(f"TLS_error:{reason}:{detail}", stat) from None
    der = ssl_stream.getpeercert(binary_form=True)
    peer: CertInfo | None = None
    if der:
        try:
            peer = parse_certificate(der)
        except X509Error:
            peer = None
        if tls.san_matchers and (peer is None or not san_matches(tls.san_matchers, peer)):
            _bump(st, "fail_verify_san")
            raise HandshakeError(
                "TLS_error:client certificate SAN does not match", "fail_verify_san"
            )
    else:
        st.no_certificate.inc()
        if tls.san_matchers:
            # A SAN requirement implies a certificate (Envoy fails these too).
            _bump(st, "fail_verify_no_cert")
            raise HandshakeError("TLS_error:no client certificate", "fail_verify_no_cert")
    st.handshake.inc()
    version = ssl_stream.version()
    st.version(version)
    info = DownstreamTlsInfo(
        sni=sni,
        alpn=ssl_stream.selected_alpn_protocol(),
        version=version,
        peer_der=der or None,
        peer=peer,
        local_uri_sans=tls.local_uri_sans,
    )
    return ssl_stream, info


def _bump(st: SslStats, stat: str | None) -> None:
    if stat is not None:
        counter = getattr(st, stat)
        assert isinstance(counter, Counter)
        counter.inc()


# --------------------------------------------------------------------------- upstream


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class ClientTls(_Reloadable):
    """An `UpstreamTlsContext` at runtime for one cluster; stats `cluster.<n>.ssl.*`."""

    def __init__(self, config: UpstreamTlsContext, stats: StatsStore, prefix: str) -> None:
        self.config = config
        v = config.validation
        self.san_matchers = v.match_subject_alt_names if v is not None else ()
        # The stdlib checks the SNI against the certificate when there is a CA
        # and no SAN matchers (those replace the host-name check, as in Envoy).
        has_ca = bool(v is not None and v.trusted_ca_file)
        check_hostname = bool(config.verify_hostname and has_ca and not self.san_matchers)
        self._check_hostname = check_hostname
        files = _validation_files(v)
        if config.certificate is not None:
            files += _cert_files([config.certificate])
        p = prefix + "ssl."
        # Built at start-up, before anything is served (the cluster manager
        # is made synchronously); reloads read the files off the event loop.
        super().__init__(
            files, config.watch_interval, f"cluster TLS {prefix.rstrip('.')}", stats, p, None
        )
        self.offers_alpn = bool(config.alpn_protocols)
        self.stats = SslStats(stats, p)
        # The DNS name each address was resolved from (DNS clusters), so a
        # host dialled by address still presents (and verifies) its name.
        self.host_names: dict[str, str] = {}

    def _load(self) -> _Loaded:
        sig = _signature(self.files)
        ctx = build_client_context(self.config, check_hostname=self._check_hostname)
        return _Loaded(ctx, sig)

    def server_name(self, host: str) -> str | None:
        """The SNI for `host`: the configured one, else a DNS host name (given,
        or the one `host` was resolved from), else none."""
        if self.config.sni:
            return self.config.sni
        return self.host_names.get(host) if _is_ip(host) else host

    async def handshake(
        self,
        stream: trio.abc.Stream,
        host: str,
        *,
        accept_alpn: Collection[str | None] | None = None,
    ) -> trio.SSLStream[trio.abc.Stream]:
        """Originate TLS on `stream`; the caller owns the deadline.

        `accept_alpn`: the negotiated protocols this connection may carry
        (checked only if the context offers ALPN).

        Raises:
            TlsHandshakeFailure: handshake, verification, SAN or ALPN failure.
        """
        st = self.stats
        sni = self.server_name(host)
        if self._check_hostname and sni is None:
            st.connection_error.inc()
            raise TlsHandshakeFailure(
                "NO_SNI:no SNI to verify the upstream certificate against"
                f" ({host} is an IP address; set sni= or SAN matchers)"
            )
        ssl_stream = trio.SSLStream(
            stream, self.context, server_hostname=sni, https_compatible=True
        )
        try:
            await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason, detail, err = _openssl_reason(exc)
            st.connection_error.inc()
            if isinstance(err, ssl.SSLCertVerificationError):
                st.fail_verify_error.inc()
            raise TlsHandshakeFailure(f"{reason}:{detail}") from None
        if self.san_matchers:
            der = ssl_stream.getpeercert(binary_form=True)
            try:
                cert = parse_certificate(der) if der else None
            except X509Error:
                cert = None
            if cert is None or not san_matches(self.san_matchers, cert):
                st.connection_error.inc()
                st.fail_verify_san.inc()
                sans = ", ".join(f"{k.upper()}:{v}" for k, v in cert.sans) if cert else "none"
                raise TlsHandshakeFailure(
                    f"SAN_VERIFICATION_FAILED:no SAN matches (certificate has {sans})"
                )
        alpn = ssl_stream.selected_alpn_protocol()
        if self.offers_alpn and accept_alpn is not None and alpn not in accept_alpn:
            st.connection_error.inc()
            wanted = "/".join(sorted(a or "none" for a in accept_alpn))
            raise TlsHandshakeFailure(
                f"ALPN_MISMATCH:upstream negotiated {alpn or 'no protocol'}, expected {wanted}"
            )
        st.handshake.inc()
        st.version(ssl_stream.version())
        return ssl_stream


async def connect_upstream(
    network: Network,
    host: str,
    port: int,
    *,
    timeout: float,
    tls: ClientTls | None = None,
    accept_alpn: Collection[str | None] | None = None,
) -> trio.abc.Stream:
    """Dial `host:port` and, with `tls`, handshake, all within `timeout` (0: none).

    Raises:
        ConnectTimeout: the deadline passed (during connect or handshake).
        ConnectFailure: refused, unreachable, or TLS failure (`TlsHandshakeFailure`).
    """
    start = trio.current_time()
    stream = await network.connect_tcp(host, port, timeout=timeout)
    if tls is None:
        return stream
    deadline = start + timeout if timeout > 0 else math.inf
    ok = False
    try:
        with trio.move_on_at(deadline):
            ssl_stream = await tls.handshake(stream, host, accept_alpn=accept_alpn)
            ok = True
            return ssl_stream
        tls.stats.connection_error.inc()
        raise ConnectTimeout(f"TLS handshake with {host}:{port} timed out after {timeout}s")
    finally:
        if not ok:
            close_stream_nowait(stream)


# --------------------------------------------------------------------------- peeked bytes


class PrefixedStream(trio.abc.HalfCloseableStream):
    """`stream` with `prefix` (bytes a listener filter already read) in front.

    Reads return the prefix first, then read through. Everything else goes
    to `stream`. `send_eof` works when `stream` is half-closeable.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix
        self._closed = False

    @property
    def socket(self) -> object:
        return socket_of(self.transport_stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._prefix:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if max_bytes is not None and max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            n = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        data = await self.transport_stream.receive_some(max_bytes)
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        inner = self.transport_stream
        if not isinstance(inner, trio.abc.HalfCloseableStream):
            raise trio.BrokenResourceError("the underlying stream cannot half-close")
        await inner.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        self._prefix = b""
        await self.transport_stream.aclose()
