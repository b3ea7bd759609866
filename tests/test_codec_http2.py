"""The sans-IO HTTP/2 helpers: header translation both ways and connection set-up."""

from __future__ import annotations

import h2.connection
import h2.events
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.codec.http2 import (
    Http2Error,
    Http2Settings,
    new_client_connection,
    new_server_connection,
    request_from_h2,
    request_to_h2,
    response_from_h2,
    response_to_h2,
    trailers_to_h2,
)
from trioproxy.codec.stream import RequestHead, ResponseHead


def test_request_translation_folds_cookies_and_keeps_te_trailers() -> None:
    head = request_from_h2(
        [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"api.example.com"),
            (b":path", b"/svc/Method?x=1"),
            (b"cookie", b"a=1"),
            (b"te", b"trailers"),
            (b"cookie", b"b=2"),
            (b"content-type", b"application/grpc"),
        ]
    )
    assert (head.method, head.scheme, head.authority, head.path) == (
        b"POST",
        b"https",
        b"api.example.com",
        b"/svc/Method?x=1",
    )
    assert head.get(b"cookie") == b"a=1; b=2"
    assert head.get(b"te") == b"trailers"
    assert request_to_h2(head)[:4] == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"api.example.com"),
        (b":path", b"/svc/Method?x=1"),
    ]


def test_host_header_becomes_authority_when_absent() -> None:
    head = request_from_h2(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h.test")]
    )
    assert head.authority == b"h.test"
    assert all(k != b"host" for k, _ in head.headers)


@pytest.mark.parametrize(
    "block",
    [
        [(b":scheme", b"http"), (b":path", b"/")],  # no :method
        [(b":method", b"GET"), (b":scheme", b"http")],  # no :path
        [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":bogus", b"1")],
    ],
)
def test_malformed_request_blocks_are_rejected(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Http2Error):
        request_from_h2(block)


def test_h1_request_to_h2_drops_connection_specific_headers() -> None:
    head = RequestHead(
        method=b"GET",
        path=b"/",
        authority=b"a",
        scheme=b"http",
        headers=[
            (b"connection", b"keep-alive, x-private"),
            (b"keep-alive", b"timeout=5"),
            (b"x-private", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"),
            (b"te", b"gzip"),
            (b"x-kept", b"yes"),
        ],
    )
    names = [k for k, _ in request_to_h2(head)]
    assert names == [b":method", b":scheme", b":authority", b":path", b"x-kept"]


def test_response_translation() -> None:
    resp = response_from_h2([(b":status", b"204"), (b"x-a", b"1")])
    assert resp.status == 204 and resp.headers == [(b"x-a", b"1")]
    out = response_to_h2(
        ResponseHead(status=200, headers=[(b"connection", b"close"), (b"a", b"b")])
    )
    assert out == [(b":status", b"200"), (b"a", b"b")]
    for bad in ([(b"x", b"1")], [(b":status", b"abc")], [(b":status", b"200"), (b":path", b"/")]):
        with pytest.raises(Http2Error):
            response_from_h2(bad)
    assert trailers_to_h2([(b"grpc-status", b"0"), (b"connection", b"x")]) == [
        (b"grpc-status", b"0")
    ]


def _exchange(
    client: h2.connection.H2Connection, server: h2.connection.H2Connection
) -> list[object]:
    events: list[object] = []
    for _ in range(4):
        events += server.receive_data(client.data_to_send())
        events += client.receive_data(server.data_to_send())
    return events


def test_connections_advertise_envoy_windows_and_stream_limit() -> None:
    settings = Http2Settings()
    server = new_server_connection(settings)
    client = new_client_connection(Http2Settings(max_concurrent_streams=7))
    _exchange(client, server)
    assert client.remote_settings.max_concurrent_streams == 1024
    assert client.remote_settings.initial_window_size == 16 * 1024 * 1024
    # The connection window is raised to 24 MiB by a WINDOW_UPDATE on stream 0.
    assert client.outbound_flow_control_window == 24 * 1024 * 1024
    assert server.remote_settings.max_concurrent_streams == 7


header_value = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x00").strip()
)
header_name = st.from_regex(rb"\A[a-z][a-z0-9-]{0,20}\Z").filter(
    lambda n: (
        n
        not in {
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"transfer-encoding",
            b"upgrade",
            b"te",
            b"trailer",
            b"proxy-authenticate",
            b"host",
            b"cookie",
        }
    )
)


@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]),
    path=st.from_regex(rb"\A/[a-zA-Z0-9/._~%?=&-]{0,50}\Z"),
    authority=st.from_regex(rb"\A[a-z0-9.-]{1,30}(:[0-9]{1,5})?\Z"),
    headers=st.lists(st.tuples(header_name, header_value), max_size=10),
)
def test_request_round_trip(
    method: bytes, path: bytes, authority: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    head = RequestHead(
        method=method, path=path, authority=authority, scheme=b"http", headers=list(headers)
    )
    back = request_from_h2(request_to_h2(head))
    assert (back.method, back.path, back.authority, back.scheme) == (
        method,
        path,
        authority,
        b"http",
    )
    assert back.headers == headers


@given(headers=st.lists(st.tuples(header_name, header_value), max_size=10))
def test_request_round_trip_through_real_h2_framing(headers: list[tuple[bytes, bytes]]) -> None:
    client = new_client_connection(Http2Settings())
    server = new_server_connection(Http2Settings())
    _exchange(client, server)
    head = RequestHead(
        method=b"GET", path=b"/x", authority=b"a.test", scheme=b"http", headers=headers
    )
    client.send_headers(1, request_to_h2(head), end_stream=True)
    events = server.receive_data(client.data_to_send())
    received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert len(received) == 1
    back = request_from_h2(received[0].headers or [])  # type: ignore[arg-type]
    assert back.headers == headers
