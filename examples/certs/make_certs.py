"""Regenerate the test certificates of examples/tls_edge.py (a throwaway test CA).

    python examples/certs/make_certs.py

Writes, next to this script:

    ca.pem                                  the test CA (trust it with curl --cacert)
    a.example.test.pem / a.example.test.key  server certificate for a.example.test
    b.example.test.pem / b.example.test.key  server certificate for b.example.test
    client.pem / client.key                  a client certificate (mTLS experiments)

The CA's private key is not kept: regenerate everything together. These are
for local demos only; never trust this CA outside them. Needs `cryptography`
(a test dependency, not a runtime one).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
VALID_DAYS = 3650  # demo certificates: ten years, so the committed files keep working


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trioproxy examples"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def main() -> None:
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("trioproxy example CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    (HERE / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    leaves = [
        ("a.example.test", [x509.DNSName("a.example.test")], ExtendedKeyUsageOID.SERVER_AUTH),
        ("b.example.test", [x509.DNSName("b.example.test")], ExtendedKeyUsageOID.SERVER_AUTH),
        (
            "client",
            [x509.UniformResourceIdentifier("spiffe://example.test/client")],
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
    ]
    for name, sans, usage in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        (HERE / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, HERE / f"{name}.key")
    print(f"wrote certificates to {HERE}")


if __name__ == "__main__":
    main()
