"""The ClientHello inspector (codec.tls_hello): real ClientHellos from the stdlib
`ssl` module, whole, byte by byte and split across TLS records; plaintext and
garbage are never mistaken for TLS and never raise.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.codec.tls_hello import (
    MAX_CLIENT_HELLO,
    NEED_DATA,
    ClientHello,
    NotTls,
    inspect_client_hello,
)


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_and_alpn() -> None:
    data = client_hello("A.Example.Test", ["h2", "http/1.1"])
    assert inspect_client_hello(data) == ClientHello(
        server_name="a.example.test", alpn=("h2", "http/1.1")
    )


def test_no_sni_no_alpn() -> None:
    assert inspect_client_hello(client_hello(None)) == ClientHello()


def test_byte_by_byte_needs_data_until_complete() -> None:
    data = client_hello("b.example.test", ["h2"])
    for i in range(len(data)):
        assert inspect_client_hello(data[:i]) is NEED_DATA
    assert inspect_client_hello(data) == ClientHello(server_name="b.example.test", alpn=("h2",))
    # Bytes after the hello (the client's next flight) do not matter.
    assert isinstance(inspect_client_hello(data + b"\x17\x03\x03\x00\x01x"), ClientHello)


def test_hello_fragmented_over_records() -> None:
    data = client_hello("c.example.test", ["http/1.1"])
    body = data[5:]
    records = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
        for part in (body[:7], body[7:50], body[50:])
    )
    assert inspect_client_hello(records) == ClientHello(
        server_name="c.example.test", alpn=("http/1.1",)
    )


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x02\x00",  # handshake type but not SSL3/TLS
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello
    ],
)
def test_not_tls(data: bytes) -> None:
    assert inspect_client_hello(data) == NotTls()


def test_too_large() -> None:
    # A hello that claims more than the bound.
    huge = (MAX_CLIENT_HELLO + 1).to_bytes(3, "big")
    data = b"\x16\x03\x01\x40\x00\x01" + huge + b"\x00" * (0x4000 - 4)
    assert inspect_client_hello(data) == NotTls(too_large=True)


def test_malformed_extensions_are_not_tls() -> None:
    data = bytearray(client_hello("d.example.test", ["h2"]))
    # Corrupt the extensions length (last byte of the fixed part is hard to
    # find generically; truncate the hello body but keep the lengths).
    hs_len = int.from_bytes(data[6:9], "big")
    body = data[9 : 9 + hs_len]
    broken = body[:-3] + b"\xff\xff\xff"
    rec = b"\x01" + len(broken).to_bytes(3, "big") + broken
    framed = b"\x16\x03\x01" + len(rec).to_bytes(2, "big") + rec
    assert isinstance(inspect_client_hello(framed), NotTls | ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = inspect_client_hello(data)
    assert result is NEED_DATA or isinstance(result, NotTls | ClientHello)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=10_000))
def test_mutated_hellos_never_raise(noise: bytes, at: int) -> None:
    data = bytearray(client_hello("e.example.test", ["h2"]))
    at %= len(data)
    data[at : at + len(noise)] = noise
    result = inspect_client_hello(bytes(data))
    assert result is NEED_DATA or isinstance(result, NotTls | ClientHello)
