"""Sans-IO codec for the gRPC health-checking protocol (grpc.health.v1).

The two messages are tiny, so they are encoded by hand instead of with a
protobuf runtime:

    message HealthCheckRequest  { string service = 1; }
    message HealthCheckResponse { ServingStatus status = 1; }
    enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }

Rules of this file:

- Encoders write the canonical form: a field equal to its default (empty
  string, status 0) is omitted, as proto3 does.
- Decoders follow proto3: unknown fields of any wire type are skipped; the
  last occurrence of a field wins; a truncated or malformed message raises
  `GrpcHealthError` (the health check counts it as a failed check).
- gRPC frames each message with a 5-byte prefix (compressed flag, 4-byte
  big-endian length). `MessageReader` reassembles messages from arbitrary
  chunks and bounds their size (`MAX_MESSAGE`), since a health answer is a
  few bytes and a peer announcing megabytes is broken or hostile.

No I/O, no clock.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

__all__ = [
    "CHECK_PATH",
    "MAX_MESSAGE",
    "GrpcHealthError",
    "MessageReader",
    "ServingStatus",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "frame",
]

CHECK_PATH: Final = b"/grpc.health.v1.Health/Check"
# A HealthCheckResponse is at most a dozen bytes; a request carries a service
# name. 64 KiB is far above both and far below anything that could hurt.
MAX_MESSAGE: Final = 64 * 1024


class ServingStatus(enum.IntEnum):
    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


class GrpcHealthError(ValueError):
    """A malformed health message or frame."""


# --------------------------------------------------------------------------- varints


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # proto encodes negative int32/enum values as 10-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise GrpcHealthError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & ((1 << 64) - 1), pos
        shift += 7
        if shift >= 70:
            raise GrpcHealthError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field; lengths checked."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise GrpcHealthError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            if pos + 8 > len(data):
                raise GrpcHealthError("truncated fixed64")
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise GrpcHealthError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(data):
                raise GrpcHealthError("truncated fixed32")
            value, pos = data[pos : pos + 4], pos + 4
        else:  # 3/4 are deprecated groups, 6/7 do not exist
            raise GrpcHealthError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


# --------------------------------------------------------------------------- messages


def encode_request(service: str = "") -> bytes:
    """A HealthCheckRequest (unframed)."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def decode_request(data: bytes) -> str:
    """The `service` of a HealthCheckRequest (unframed).

    Raises:
        GrpcHealthError: malformed message or a non-UTF-8 service name.
    """
    service = b""
    for number, wire, value in _fields(data):
        if number == 1:
            if wire != 2 or not isinstance(value, bytes):
                raise GrpcHealthError("service must be a string")
            service = value
    try:
        return service.decode()
    except UnicodeDecodeError:
        raise GrpcHealthError("service is not UTF-8") from None


def encode_response(status: int) -> bytes:
    """A HealthCheckResponse (unframed); `status` may be outside the enum."""
    return b"\x08" + _varint(status) if status else b""


def decode_response(data: bytes) -> int:
    """The `status` of a HealthCheckResponse (unframed), as an int: an
    unknown enum value is kept (proto3 open enums); compare with
    `ServingStatus.SERVING`.

    Raises:
        GrpcHealthError: malformed message.
    """
    status = 0
    for number, wire, value in _fields(data):
        if number == 1:
            if wire != 0 or not isinstance(value, int):
                raise GrpcHealthError("status must be a varint")
            status = value - (1 << 64) if value >= 1 << 63 else value
    return status


# --------------------------------------------------------------------------- framing


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


class MessageReader:
    """Reassembles length-prefixed gRPC messages from chunks."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes; returns the messages completed by them.

        Raises:
            GrpcHealthError: a compressed message (we never ask for
                compression) or one larger than `MAX_MESSAGE`.
        """
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 5:
            flag = self._buf[0]
            (length,) = struct.unpack_from(">I", self._buf, 1)
            if flag != 0:
                raise GrpcHealthError("compressed message")
            if length > MAX_MESSAGE:
                raise GrpcHealthError(f"message of {length} bytes")
            if len(self._buf) < 5 + length:
                break
            out.append(bytes(self._buf[5 : 5 + length]))
            del self._buf[: 5 + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message."""
        return len(self._buf)
