"""The grpc.health.v1 codec: round trips (Hypothesis), proto3 decoding rules,
and framing in any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.codec.grpc_health import (
    MAX_MESSAGE,
    GrpcHealthError,
    MessageReader,
    ServingStatus,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    frame,
)


@given(st.text())
def test_request_round_trip(service: str) -> None:
    assert decode_request(encode_request(service)) == service


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_response_round_trip(status: int) -> None:
    assert decode_response(encode_response(status)) == status


def test_known_encodings() -> None:
    # What protoc would write: field 1, wire type 2 / 0.
    assert encode_request("x") == b"\x0a\x01x"
    assert encode_request("") == b""
    assert encode_response(ServingStatus.SERVING) == b"\x08\x01"
    assert encode_response(ServingStatus.UNKNOWN) == b""  # proto3 default omitted
    assert decode_response(b"") == ServingStatus.UNKNOWN


def test_unknown_fields_are_skipped_and_last_wins() -> None:
    unknown = b"\x10\x05" + b"\x1a\x02ab" + b"\x25\x00\x00\x00\x00" + b"\x29" + b"\x00" * 8
    assert decode_response(unknown + b"\x08\x02" + b"\x08\x01") == ServingStatus.SERVING
    assert decode_request(b"\x0a\x01a" + unknown + b"\x0a\x02bc") == "bc"


@pytest.mark.parametrize(
    "data",
    [b"\x08", b"\x0a\x05ab", b"\x08\x80", b"\x00\x01", b"\x0b", b"\x08" + b"\xff" * 11],
)
def test_malformed_messages_raise(data: bytes) -> None:
    with pytest.raises(GrpcHealthError):
        decode_response(data)
    with pytest.raises(GrpcHealthError):
        decode_request(data if data != b"\x08\x80" else b"\x0a\x80")


def test_wrong_wire_type_for_a_known_field() -> None:
    with pytest.raises(GrpcHealthError):
        decode_response(b"\x0a\x01x")
    with pytest.raises(GrpcHealthError):
        decode_request(b"\x08\x01")


@given(
    st.lists(st.binary(max_size=300), max_size=5),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1),
)
def test_frames_reassemble_in_any_chunking(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frame(m) for m in messages)
    reader = MessageReader()
    got: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += reader.receive_data(wire[pos : pos + step])
        pos += step
        i += 1
    assert got == messages
    assert reader.pending == 0


def test_compressed_or_huge_frames_are_refused() -> None:
    with pytest.raises(GrpcHealthError):
        MessageReader().receive_data(b"\x01\x00\x00\x00\x00")
    with pytest.raises(GrpcHealthError):
        MessageReader().receive_data(b"\x00" + (MAX_MESSAGE + 1).to_bytes(4, "big"))
