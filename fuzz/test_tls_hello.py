"""Invariant: the tls_inspector's ClientHello parser never raises, never calls
non-TLS bytes TLS, and gives the same answer whole as when fed byte by byte.

For any bytes (raw `binary()`, or a real ClientHello from the stdlib `ssl`
module with a random SNI and ALPN list, then mutated, truncated, or split
into random TLS records):

1. `inspect_client_hello` returns NEED_DATA, `NotTls` or a `ClientHello`,
   and raises nothing;
2. input whose first byte is not 22 (handshake) is `NotTls`;
3. feeding growing prefixes only ever goes NEED_DATA ... NEED_DATA, then a
   final answer that stays the same as more bytes arrive (the answer never
   flips once given);
4. an unmutated hello, however it is split into records, yields exactly the
   SNI (lower-cased) and ALPN list the client sent.

The budget is `TRIOPROXY_FUZZ_EXAMPLES` per target.
"""

from __future__ import annotations

import ssl

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzz.conftest import fuzz_examples
from trioproxy.codec.tls_hello import NEED_DATA, ClientHello, NotTls, inspect_client_hello

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
# Not an IP address: clients send no SNI for those (RFC 6066).
HOSTNAME = (
    st.lists(LABEL, min_size=2, max_size=5)
    .map(".".join)
    .filter(lambda h: any(c.isalpha() for c in h.rsplit(".", 1)[1]))
)
PROTOCOL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/.-", min_size=1, max_size=20)


def client_hello(sni: str | None, alpn: list[str]) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def resplit(data: bytes, cuts: list[int]) -> bytes:
    """The same handshake bytes carried in records split at `cuts`."""
    body = data[5:]
    points = sorted({c % len(body) for c in cuts if c % len(body) > 0})
    parts = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    return b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in parts if p)


def check(data: bytes) -> object:
    final = inspect_client_hello(data)
    assert final is NEED_DATA or isinstance(final, NotTls | ClientHello)
    if data and data[0] != 22:
        assert isinstance(final, NotTls)
    answered = None
    for i in range(len(data) + 1):
        r = inspect_client_hello(data[:i])
        if answered is not None:
            assert r == answered, (i, r, answered)
        elif r is not NEED_DATA:
            answered = r
    return final


@settings(max_examples=fuzz_examples(), deadline=None)
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\x16\x03\x01\x00")
@example(b"GET / HTTP/1.1\r\n\r\n")
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=fuzz_examples(), deadline=None)
@given(
    st.one_of(st.none(), HOSTNAME),
    st.lists(PROTOCOL, max_size=4, unique=True),
    st.lists(st.integers(min_value=1, max_value=4000), max_size=6),
)
@example(None, [], [])
@example("example.com", ["h2", "http/1.1"], [1, 5, 100])
def test_real_hellos_split_into_records(sni: str | None, alpn: list[str], cuts: list[int]) -> None:
    data = resplit(client_hello(sni, alpn), cuts)
    result = check(data)
    assert result == ClientHello(server_name=(sni or "").lower(), alpn=tuple(alpn))


@settings(max_examples=fuzz_examples(), deadline=None)
@given(
    HOSTNAME,
    st.integers(min_value=0, max_value=4000),
    st.binary(min_size=1, max_size=16),
    st.booleans(),
)
@example("example.com", 0, b"\x00", False)
@example("example.com", 11, b"\xff\xff", True)
def test_mutated_hellos(sni: str, at: int, noise: bytes, truncate: bool) -> None:
    data = bytearray(client_hello(sni, ["h2", "http/1.1"]))
    at %= len(data)
    if truncate:
        del data[at:]
    else:
        data[at : at + len(noise)] = noise
    check(bytes(data))
