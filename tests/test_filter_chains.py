"""Filter-chain selection (runtime.filter_chains): Envoy's most-specific-match
rules, step by step, and `PrefixedStream` (the tls_inspector's replay
stream) against trio's stream conformance checks."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.config import FilterChainMatch
from trioproxy.net.tls import PrefixedStream
from trioproxy.runtime.filter_chains import ChainSelector, ConnectionFacts

M = FilterChainMatch


def pick(chains: dict[str, FilterChainMatch], **facts: Any) -> str | None:
    return ChainSelector([(m, name) for name, m in chains.items()]).select(ConnectionFacts(**facts))


def test_single_catch_all() -> None:
    assert pick({"only": M()}, server_name="x") == "only"


def test_server_names_exact_beats_wildcard_beats_any() -> None:
    chains = {
        "exact": M(server_names=("a.example.com",)),
        "wild": M(server_names=("*.example.com",)),
        "deeper": M(server_names=("*.b.example.com",)),
        "any": M(),
    }
    assert pick(chains, server_name="a.example.com") == "exact"
    assert pick(chains, server_name="z.example.com") == "wild"
    assert pick(chains, server_name="x.y.example.com") == "wild"  # Envoy: any depth
    assert pick(chains, server_name="x.b.example.com") == "deeper"
    assert pick(chains, server_name="example.com") == "any"
    assert pick(chains, server_name="") == "any"
    assert pick(chains, server_name="A.EXAMPLE.COM") == "exact"


def test_no_match_without_catch_all() -> None:
    chains = {"a": M(server_names=("a.example.com",))}
    assert pick(chains, server_name="b.example.com") is None
    assert pick(chains) is None


def test_no_backtracking() -> None:
    # SNI picks the specific chain; its source range then fails: no match,
    # even though the catch-all would have matched (Envoy's rule).
    chains = {
        "sni": M(server_names=("a.example.com",), source_prefix_ranges=("10.0.0.0/8",)),
        "any": M(),
    }
    assert pick(chains, server_name="a.example.com", source_ip="127.0.0.1") is None
    assert pick(chains, server_name="a.example.com", source_ip="10.1.1.1") == "sni"


def test_transport_and_alpn() -> None:
    chains = {
        "tls-h2": M(transport_protocol="tls", application_protocols=("h2",)),
        "tls": M(transport_protocol="tls"),
        "raw": M(transport_protocol="raw_buffer"),
    }
    assert pick(chains, transport_protocol="tls", application_protocols=("h2", "http/1.1")) == (
        "tls-h2"
    )
    assert pick(chains, transport_protocol="tls", application_protocols=("http/1.1",)) == "tls"
    assert pick(chains, transport_protocol="raw_buffer") == "raw"


def test_source_ranges_longest_prefix() -> None:
    chains = {
        "wide": M(source_prefix_ranges=("127.0.0.0/8",)),
        "narrow": M(source_prefix_ranges=("127.0.0.2/32",)),
        "v6": M(source_prefix_ranges=("::1/128",)),
        "any": M(),
    }
    assert pick(chains, source_ip="127.0.0.2") == "narrow"
    assert pick(chains, source_ip="127.0.0.1") == "wide"
    assert pick(chains, source_ip="::1") == "v6"
    assert pick(chains, source_ip="192.0.2.1") == "any"


def test_destination_port_first() -> None:
    chains = {"p443": M(destination_port=443), "sni": M(server_names=("a.example.com",))}
    assert pick(chains, destination_port=443, server_name="a.example.com") == "p443"
    assert pick(chains, destination_port=8443, server_name="a.example.com") == "sni"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a.x.com", "*.x.com", "b.x.com", "*.y.x.com"]), unique=True),
    st.sampled_from(["a.x.com", "b.x.com", "c.y.x.com", "z.com", ""]),
)
def test_selection_is_a_matching_chain(names: list[str], sni: str) -> None:
    chains = {n: M(server_names=(n,)) for n in names}
    chosen = pick(chains, server_name=sni)
    if chosen is None:
        assert not any(n == sni or (n.startswith("*.") and sni.endswith(n[1:])) for n in names)
    else:
        assert chosen == sni or (chosen.startswith("*.") and sni.endswith(chosen[1:]))
        if sni in names:
            assert chosen == sni


# --------------------------------------------------------------------------- PrefixedStream


async def test_prefixed_stream_replays_then_reads_through() -> None:
    a, b = trio.testing.memory_stream_pair()
    s = PrefixedStream(b, b"hello ")
    await a.send_all(b"world")
    assert await s.receive_some(3) == b"hel"
    assert await s.receive_some() == b"lo "
    assert await s.receive_some() == b"world"
    await s.send_all(b"back")
    assert await a.receive_some() == b"back"
    await s.send_eof()
    assert await a.receive_some() == b""
    await s.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await s.receive_some()


async def test_prefixed_stream_conformance() -> None:
    async def maker() -> tuple[PrefixedStream, PrefixedStream]:
        a, b = trio.testing.memory_stream_pair()
        return PrefixedStream(a, b""), PrefixedStream(b, b"")

    await trio.testing.check_half_closeable_stream(maker, None)
