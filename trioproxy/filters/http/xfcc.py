"""The `x-forwarded-client-cert` (XFCC) header, as Envoy's HCM sets it.

`http(forward_client_cert=..., client_cert_details=...)` configures it (Envoy's
`forward_client_cert_details` and `set_current_client_cert_details`); the
runtime puts this filter first in every HTTP connection manager so that the
header is settled before any user filter or the router sees the request.
It reads the connection's TLS session from `net.tls.DOWNSTREAM_TLS`.

Modes (Envoy's ForwardClientCertDetails):
- sanitize:            always remove the header;
- forward_only:        mTLS: forward as received; otherwise remove;
- append_forward:      mTLS: append this hop's element; otherwise remove;
- sanitize_set:        mTLS: replace with this hop's element; otherwise remove;
- always_forward_only: forward as received, whatever the connection.

"mTLS" means the client presented a verified certificate. An element is
`;`-joined `Key=value` pairs in Envoy's order: `By` (each URI SAN of our
own certificate), `Hash` (SHA-256 of the client certificate, hex), then the
chosen details `Cert` (URL-encoded PEM), `Chain` (the same: Python 3.11's
ssl cannot return the verified chain), `Subject` (RFC 2253, double-quoted),
`URI` and `DNS` (one pair per SAN). Elements are joined with `,`.

This is Envoy's HCM behaviour; it lives in a filter only because the
connection manager has no per-connection hook for it yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import attrs

from trioproxy.config import HttpFilterConfig
from trioproxy.config.graph import ClientCertDetail, ForwardClientCertDetails
from trioproxy.filters.base import FilterStatus, HttpFilter, http_filter
from trioproxy.net.tls import DOWNSTREAM_TLS, DownstreamTlsInfo

if TYPE_CHECKING:
    from trioproxy.http.conn_manager import ActiveStream

__all__ = ["ForwardClientCert", "ForwardClientCertFilter", "xfcc_element"]

XFCC = b"x-forwarded-client-cert"


@attrs.frozen(kw_only=True)
class ForwardClientCert(HttpFilterConfig):
    """Runtime-only config: made from the HCM's XFCC fields, never by the DSL."""

    mode: ForwardClientCertDetails = "sanitize_set"
    details: tuple[ClientCertDetail, ...] = ("subject", "uri", "dns")


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def xfcc_element(tls: DownstreamTlsInfo, details: tuple[str, ...]) -> str:
    """This hop's XFCC element for a client that presented a certificate."""
    parts = [f"By={uri}" for uri in tls.local_uri_sans]
    parts.append(f"Hash={tls.peer_sha256}")
    pem = quote(tls.peer_pem, safe="") if ("cert" in details or "chain" in details) else ""
    if "cert" in details:
        parts.append(f'Cert="{pem}"')
    if "chain" in details:
        parts.append(f'Chain="{pem}"')
    peer = tls.peer
    if peer is not None:
        if "subject" in details:
            parts.append(f"Subject={_quoted(peer.subject)}")
        if "uri" in details:
            parts.extend(f"URI={v}" for v in peer.sans_of("uri"))
        if "dns" in details:
            parts.extend(f"DNS={v}" for v in peer.sans_of("dns"))
    return ";".join(parts)


@http_filter(ForwardClientCert)
class ForwardClientCertFilter(HttpFilter):
    config: ForwardClientCert

    async def on_request_headers(self, stream: ActiveStream) -> FilterStatus:
        mode = self.config.mode
        if mode == "always_forward_only":
            return FilterStatus.CONTINUE
        head = stream.head
        tls = DOWNSTREAM_TLS.get()
        mtls = tls is not None and tls.peer_der is not None
        if not mtls or mode == "sanitize":
            if head.get(XFCC) is not None:
                head.remove(XFCC)
            return FilterStatus.CONTINUE
        if mode == "forward_only":
            return FilterStatus.CONTINUE
        assert tls is not None
        element = xfcc_element(tls, self.config.details).encode()
        if mode == "append_forward":
            old = [v for k, v in head.headers if k == XFCC]
            if old:
                element = b",".join([*old, element])
        head.set(XFCC, element)
        return FilterStatus.CONTINUE
