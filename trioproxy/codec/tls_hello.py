"""The TLS ClientHello, read without consuming it: SNI and ALPN for chain matching.

Rules of this file (the tls_inspector's parser; sans-IO, no ssl module):

- `inspect_client_hello(data)` looks at the bytes a client sent first and
  returns one of three answers:
    NEED_DATA        - could still be TLS; read more and call again with
                       everything read so far;
    NotTls()         - not a TLS handshake (plaintext, or garbage);
    ClientHello(...) - a complete ClientHello with its SNI and ALPN list.
- A ClientHello may span several TLS records (a handshake message can be
  fragmented); fragments are joined. Anything other than handshake records
  before the hello is complete means "not TLS".
- Bounded: more than `MAX_CLIENT_HELLO` bytes without a complete hello is
  `NotTls(too_large=True)` (Envoy's tls_inspector gives up at 64 KiB too
  and counts `client_hello_too_large`).
- Malformed extension data inside an otherwise framed hello is also
  `NotTls`: the TLS library would refuse it anyway.

    record:     type(1)=22  version(2)=3.x  length(2)  fragment
    handshake:  type(1)=1   length(3)       body
    hello body: version(2) random(32) session_id<1> cipher_suites<2>
                compression<1> extensions<2>
    extension:  type(2) data<2>;  server_name = 0, ALPN = 16
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = [
    "MAX_CLIENT_HELLO",
    "NEED_DATA",
    "ClientHello",
    "NotTls",
    "inspect_client_hello",
]

# Envoy's tls_inspector: Config::TLS_MAX_CLIENT_HELLO = 64 KiB.
MAX_CLIENT_HELLO: Final = 64 * 1024


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@attrs.frozen(kw_only=True)
class NotTls:
    too_large: bool = False


@attrs.frozen(kw_only=True)
class ClientHello:
    # Lower-case host name from the server_name extension, "" if absent.
    server_name: str = ""
    alpn: tuple[str, ...] = ()


_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class _Malformed(Exception):
    pass


def _handshake_bytes(data: bytes) -> bytes | NotTls | _NeedData:
    """The handshake-layer bytes carried by the leading handshake records."""
    if not data:
        return NEED_DATA
    if data[0] != _HANDSHAKE:
        return NotTls()
    if len(data) >= 2 and data[1] != 3:
        return NotTls()
    out = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            return bytes(out) if out else NEED_DATA
        if data[pos] != _HANDSHAKE or data[pos + 1] != 3:
            return bytes(out) if out else NotTls()
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            return NotTls()
        if len(data) - pos - 5 < length:
            # Return what is complete; the caller decides if it is enough.
            return bytes(out) if out else NEED_DATA
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Malformed
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _parse_body(body: bytes) -> ClientHello:
    r = _Reader(body)
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # session id
    r.vector(2)  # cipher suites
    r.vector(1)  # compression methods
    server_name = ""
    alpn: tuple[str, ...] = ()
    if r.done:
        return ClientHello()
    exts = _Reader(r.vector(2))
    while not exts.done:
        ext_type = exts.uint(2)
        ext = _Reader(exts.vector(2))
        if ext_type == _EXT_SERVER_NAME and not ext.done:
            names = _Reader(ext.vector(2))
            while not names.done:
                name_type = names.uint(1)
                name = names.vector(2)
                if name_type == 0 and not server_name:
                    try:
                        server_name = name.decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError:
                        raise _Malformed from None
        elif ext_type == _EXT_ALPN:
            protos = _Reader(ext.vector(2))
            found = []
            while not protos.done:
                proto = protos.vector(1)
                if not proto:
                    raise _Malformed
                found.append(proto.decode("latin-1"))
            alpn = tuple(found)
    return ClientHello(server_name=server_name, alpn=alpn)


def inspect_client_hello(data: bytes) -> ClientHello | NotTls | _NeedData:
    """Classify the first bytes of a connection (see the module docstring)."""
    hs = _handshake_bytes(data[: MAX_CLIENT_HELLO + 5])
    if isinstance(hs, NotTls):
        return hs
    if isinstance(hs, _NeedData) or len(hs) < 4:
        return _more(data)
    if hs[0] != _CLIENT_HELLO:
        return NotTls()
    length = int.from_bytes(hs[1:4], "big")
    if length > MAX_CLIENT_HELLO:
        return NotTls(too_large=True)
    if len(hs) < 4 + length:
        return _more(data)
    try:
        return _parse_body(hs[4 : 4 + length])
    except _Malformed:
        return NotTls()


def _more(data: bytes) -> NotTls | _NeedData:
    return NotTls(too_large=True) if len(data) > MAX_CLIENT_HELLO else NEED_DATA
