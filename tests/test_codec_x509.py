"""The minimal X.509 reader (codec.x509) against `cryptography`'s own answers,
and SAN matching (net.tls.san_matches) as Envoy defines it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tls_certs import Pki
from trioproxy.codec.x509 import CertInfo, X509Error, parse_certificate, pem_to_der
from trioproxy.config import SanMatcher
from trioproxy.net.tls import san_matches


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("x509"))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_subject_and_sans_match_cryptography(pki: Pki) -> None:
    leaf = pki.issue(
        'svc, "quoted" +plus',
        dns=["a.example.test", "*.b.example.test"],
        uri=["spiffe://cluster.local/ns/x/sa/y"],
        ips=["10.1.2.3", "::1"],
    )
    info = parse_certificate(der(leaf.certificate))
    assert info.subject == leaf.certificate.subject.rfc4514_string()
    assert info.sans == (
        ("dns", "a.example.test"),
        ("dns", "*.b.example.test"),
        ("uri", "spiffe://cluster.local/ns/x/sa/y"),
        ("ip", "10.1.2.3"),
        ("ip", "::1"),
    )


def test_ca_without_sans(pki: Pki) -> None:
    info = parse_certificate(der(pki.cert))
    assert info.subject == "CN=trioproxy test CA,O=trioproxy tests,C=US"
    assert info.sans == ()


def test_pem_to_der(pki: Pki) -> None:
    leaf = pki.issue("pem.example.test")
    pem = Path(leaf.cert).read_bytes() + Path(pki.ca_file).read_bytes()
    assert pem_to_der(pem) == [der(leaf.certificate), der(pki.cert)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_x509error(data: bytes) -> None:
    try:
        parse_certificate(data)
    except X509Error:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.binary(min_size=1, max_size=8))
def test_mutated_certificates_raise_only_x509error(pki: Pki, at: int, noise: bytes) -> None:
    data = bytearray(der(pki.cert))
    at %= len(data)
    data[at : at + len(noise)] = noise
    try:
        parse_certificate(bytes(data))
    except X509Error:
        pass


CERT = CertInfo(
    subject="CN=x",
    sans=(
        ("dns", "*.example.test"),
        ("dns", "API.internal"),
        ("uri", "spiffe://prod/ns/web"),
        ("ip", "10.0.0.1"),
        ("email", "ops@example.test"),
    ),
)


@pytest.mark.parametrize(
    ("matcher", "ok"),
    [
        (SanMatcher(san_type="dns", value="api.internal"), True),  # case-insensitive
        (SanMatcher(san_type="dns", value="a.example.test"), True),  # wildcard SAN covers it
        (SanMatcher(san_type="dns", value="a.b.example.test"), False),  # one label only
        (SanMatcher(san_type="dns", value="example.test"), False),
        (SanMatcher(san_type="dns", kind="suffix", value=".internal"), True),
        (SanMatcher(san_type="uri", kind="prefix", value="spiffe://prod/"), True),
        (SanMatcher(san_type="uri", kind="exact", value="spiffe://prod"), False),
        (SanMatcher(san_type="uri", kind="regex", value=r"spiffe://\w+/ns/web"), True),
        (SanMatcher(san_type="ip", value="10.0.0.1"), True),
        (SanMatcher(san_type="ip", value="10.0.0.2"), False),
        (SanMatcher(san_type="email", kind="contains", value="@example"), True),
        (SanMatcher(san_type="uri", value="api.internal"), False),  # wrong type
    ],
)
def test_san_matching(matcher: SanMatcher, ok: bool) -> None:
    assert san_matches([matcher], CERT) is ok
