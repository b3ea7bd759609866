"""Sans-IO HTTP/2 pieces on top of `h2`: settings, connection set-up, and the
translation between h2 header blocks and the proxy's `RequestHead` /
`ResponseHead`.

No I/O and no trio here: the runtime (`trioproxy.http.h2_conn_manager` and
`trioproxy.net.h2_pool`) owns the sockets, the tasks and flow control waits.

Translation rules (RFC 9113 section 8, and what Envoy does when bridging):
- `:method :scheme :authority :path` ↔ the head's fields; `host` is folded
  into `:authority` when `:authority` is absent (and dropped otherwise);
- several `cookie` fields are joined with `"; "` (RFC 9113 8.2.3) on the way
  in, so an HTTP/1.1 upstream sees one header;
- connection-specific fields (`connection`, `keep-alive`, `proxy-connection`,
  `transfer-encoding`, `upgrade`, and what `connection` names) never go out on
  HTTP/2; `te` only as `te: trailers` (gRPC needs it);
- header names are lower case on both sides already (h11 and h2 both give
  lower-case names).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import attrs
import h2.config
import h2.connection
import h2.settings

from trioproxy.codec.http1 import strip_hop_by_hop
from trioproxy.codec.stream import Headers, RequestHead, ResponseHead

__all__ = [
    "PREFACE",
    "Http2Error",
    "Http2Settings",
    "new_client_connection",
    "new_server_connection",
    "request_from_h2",
    "request_to_h2",
    "response_from_h2",
    "response_to_h2",
    "trailers_to_h2",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface; an h2c prior-knowledge client starts with it."""

_PSEUDO_REQUEST: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


class Http2Error(Exception):
    """A header block that cannot be translated (a malformed request or response)."""


@attrs.frozen(kw_only=True)
class Http2Settings:
    """Envoy's `http2_protocol_options` that we honour, with Envoy's defaults.

    Attributes:
        max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS we advertise.
        initial_stream_window_size: per-stream receive window (16 MiB).
        initial_connection_window_size: connection receive window (24 MiB).
        max_frame_size: SETTINGS_MAX_FRAME_SIZE we accept (16 KiB, the RFC minimum).
        max_header_list_size: SETTINGS_MAX_HEADER_LIST_SIZE we advertise.
    """

    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024
    max_frame_size: int = 16384
    max_header_list_size: int = 60 * 1024


_DEFAULT_WINDOW: Final = 65535


def _connection(settings: Http2Settings, *, client_side: bool) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_stream_window_size,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        },
    )
    conn.initiate_connection()
    extra = settings.initial_connection_window_size - _DEFAULT_WINDOW
    if extra > 0:
        conn.increment_flow_control_window(extra)
    return conn


def new_server_connection(settings: Http2Settings) -> h2.connection.H2Connection:
    """A server-side h2 connection with our SETTINGS and window already queued."""
    return _connection(settings, client_side=False)


def new_client_connection(settings: Http2Settings) -> h2.connection.H2Connection:
    """A client-side h2 connection (preface, SETTINGS, window update queued)."""
    return _connection(settings, client_side=True)


def request_from_h2(headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """The request head of an h2 header block.

    Raises:
        Http2Error: a pseudo-header is missing, repeated or unknown.
    """
    method = scheme = authority = path = b""
    protocol: bytes | None = None
    host: bytes | None = None
    out: Headers = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            if name not in _PSEUDO_REQUEST:
                raise Http2Error(f"unknown pseudo-header {name!r}")
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            else:
                protocol = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = value
        else:
            out.append((name, value))
    if not method:
        raise Http2Error("missing :method")
    if method == b"CONNECT" and protocol is None:
        if not authority:
            raise Http2Error("CONNECT without :authority")
    elif not path or not scheme:
        raise Http2Error("missing :path or :scheme")
    if not authority and host is not None:
        authority = host
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    if protocol is not None:
        # RFC 8441 extended CONNECT; kept for the WebSocket bridge.
        out.append((b":protocol", protocol))
    return RequestHead(method=method, path=path, authority=authority, scheme=scheme, headers=out)


def _outbound(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    return [(k, v) for k, v in strip_hop_by_hop(list(headers)) if k != b"host" and k[:1] != b":"]


def request_to_h2(head: RequestHead) -> Headers:
    """An h2 header block for `head` (pseudo-headers first)."""
    block: Headers = [
        (b":method", head.method),
        (b":scheme", head.scheme or b"http"),
        (b":authority", head.authority),
        (b":path", head.path),
    ]
    if head.method == b"CONNECT":
        block = [(b":method", head.method), (b":authority", head.authority)]
    block.extend(_outbound(head.headers))
    return block


def response_from_h2(headers: Iterable[tuple[bytes, bytes]]) -> ResponseHead:
    """The response head of an h2 header block.

    Raises:
        Http2Error: `:status` is missing or not a number.
    """
    status = -1
    out: Headers = []
    for name, value in headers:
        if name == b":status":
            try:
                status = int(value)
            except ValueError:
                raise Http2Error(f"bad :status {value!r}") from None
        elif name[:1] == b":":
            raise Http2Error(f"unexpected pseudo-header {name!r} in a response")
        else:
            out.append((name, value))
    if not 100 <= status <= 999:
        raise Http2Error("missing or invalid :status")
    return ResponseHead(status=status, headers=out)


def response_to_h2(head: ResponseHead) -> Headers:
    block: Headers = [(b":status", b"%d" % head.status)]
    block.extend(_outbound(head.headers))
    return block


def trailers_to_h2(trailers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Trailers minus anything connection-specific or pseudo."""
    return _outbound(trailers)
