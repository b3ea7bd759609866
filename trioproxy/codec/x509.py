"""Just enough X.509 to read a certificate's subject and subject alternative names.

Rules of this file:

- Sans-IO and stdlib-only: DER bytes in, a `CertInfo` out. The runtime's
  one TLS library is the stdlib `ssl` module, whose `getpeercert()` returns
  nothing for an unverified peer and nothing at all for our own
  certificates; the `x-forwarded-client-cert` header ("By" is our own URI
  SAN) and SAN matching need both, so we read the DER ourselves.
- Only the paths below are walked; everything else is skipped by length.
  Malformed input raises `X509Error`, never anything else:

      Certificate  ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
      TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
                         issuer Name, validity, subject Name, subjectPublicKeyInfo,
                         [1] OPTIONAL, [2] OPTIONAL, [3] EXPLICIT Extensions OPTIONAL }
      Name         ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
      Extension    ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE,
                         extnValue OCTET STRING }
      subjectAltName (2.5.29.17) ::= SEQUENCE OF GeneralName, of which
                         [1] rfc822Name, [2] dNSName, [6] URI, [7] iPAddress are read

- `CertInfo.subject` is the RFC 4514 form (last RDN first), which is what
  OpenSSL's `XN_FLAG_RFC2253` prints and so what Envoy puts in XFCC.
"""

from __future__ import annotations

import base64
import ipaddress
import re

import attrs

__all__ = ["CertInfo", "X509Error", "parse_certificate", "pem_to_der"]


class X509Error(ValueError):
    """The bytes are not a certificate this parser can read."""


@attrs.frozen(kw_only=True)
class CertInfo:
    subject: str
    # (type, value) with type one of "dns", "uri", "email", "ip", in certificate order.
    sans: tuple[tuple[str, str], ...]

    def sans_of(self, kind: str) -> tuple[str, ...]:
        return tuple(v for k, v in self.sans if k == kind)


# Short names used by OpenSSL's RFC 2253 printing.
_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}
_SAN_OID = "2.5.29.17"
_SAN_TAGS = {0x81: "email", 0x82: "dns", 0x86: "uri", 0x87: "ip"}
# String types: UTF8String, PrintableString, TeletexString, IA5String,
# VisibleString, UniversalString, BMPString.
_STRING_CODECS = {
    0x0C: "utf-8",
    0x13: "latin-1",
    0x14: "latin-1",
    0x16: "latin-1",
    0x1A: "latin-1",
    0x1C: "utf-32-be",
    0x1E: "utf-16-be",
}
# A certificate bigger than this is not one we need to read (Envoy's own
# limit on a peer's chain is far larger, but one certificate is rarely > 16 KiB).
MAX_CERTIFICATE = 1 << 20


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at `pos`."""
    if pos + 2 > end:
        raise X509Error("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise X509Error("multi-byte tags are not used in certificates")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise X509Error("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise X509Error("element runs past its container")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = _tlv(data, pos, end)
        out.append((tag, vs, ve))
        pos = ve
    return out


def _oid(value: bytes) -> str:
    if not value:
        raise X509Error("empty OID")
    first = value[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    n = 0
    for b in value[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def _string(tag: int, value: bytes) -> str:
    codec = _STRING_CODECS.get(tag)
    if codec is None:
        return "#" + value.hex()
    try:
        return value.decode(codec)
    except UnicodeDecodeError:
        return value.decode(codec, errors="replace")


_ESCAPE = re.compile(r'([,+"\\<>;])')


def _escape(text: str) -> str:
    if text.startswith("#"):
        return text  # hex form of a non-string value, RFC 4514 2.4
    out = _ESCAPE.sub(r"\\\1", text)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def _name(data: bytes, start: int, end: int) -> str:
    rdns: list[str] = []
    for tag, s, e in _children(data, start, end):
        if tag != 0x31:
            raise X509Error("an RDN must be a SET")
        parts = []
        for atag, a_s, a_e in _children(data, s, e):
            if atag != 0x30:
                raise X509Error("an attribute must be a SEQUENCE")
            kids = _children(data, a_s, a_e)
            if len(kids) != 2 or kids[0][0] != 0x06:
                raise X509Error("bad attribute")
            oid = _oid(data[kids[0][1] : kids[0][2]])
            vtag, vs, ve = kids[1]
            key = _SHORT_NAMES.get(oid, oid)
            parts.append(f"{key}={_escape(_string(vtag, data[vs:ve]))}")
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


def _sans(data: bytes, start: int, end: int) -> list[tuple[str, str]]:
    tag, s, e = _tlv(data, start, end)
    if tag != 0x30:
        raise X509Error("subjectAltName must be a SEQUENCE")
    out = []
    for gtag, gs, ge in _children(data, s, e):
        kind = _SAN_TAGS.get(gtag)
        if kind is None:
            continue
        raw = data[gs:ge]
        if kind == "ip":
            if len(raw) not in (4, 16):
                raise X509Error("bad iPAddress SAN")
            out.append((kind, str(ipaddress.ip_address(raw))))
        else:
            out.append((kind, raw.decode("latin-1")))
    return out


def parse_certificate(der: bytes) -> CertInfo:
    """The subject and SANs of a DER certificate.

    Raises:
        X509Error: the bytes are not a well-formed certificate.
    """
    if len(der) > MAX_CERTIFICATE:
        raise X509Error("certificate too large")
    try:
        tag, s, e = _tlv(der, 0, len(der))
        if tag != 0x30:
            raise X509Error("a certificate must be a SEQUENCE")
        tag, s, e = _tlv(der, s, e)
        if tag != 0x30:
            raise X509Error("tbsCertificate must be a SEQUENCE")
        fields = _children(der, s, e)
        if fields and fields[0][0] == 0xA0:
            fields = fields[1:]  # explicit version
        if len(fields) < 6:
            raise X509Error("tbsCertificate is too short")
        subject_tag, ss, se = fields[4]
        if subject_tag != 0x30:
            raise X509Error("subject must be a SEQUENCE")
        subject = _name(der, ss, se)
        sans: list[tuple[str, str]] = []
        for ftag, fs, fe in fields[6:]:
            if ftag != 0xA3:
                continue
            xtag, xs, xe = _tlv(der, fs, fe)
            if xtag != 0x30:
                raise X509Error("extensions must be a SEQUENCE")
            for etag, es, ee in _children(der, xs, xe):
                if etag != 0x30:
                    raise X509Error("an extension must be a SEQUENCE")
                kids = _children(der, es, ee)
                if len(kids) < 2 or kids[0][0] != 0x06 or kids[-1][0] != 0x04:
                    raise X509Error("bad extension")
                if _oid(der[kids[0][1] : kids[0][2]]) == _SAN_OID:
                    sans.extend(_sans(der, kids[-1][1], kids[-1][2]))
        return CertInfo(subject=subject, sans=tuple(sans))
    except (IndexError, ValueError) as exc:
        if isinstance(exc, X509Error):
            raise
        raise X509Error(str(exc)) from None


_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)


def pem_to_der(pem: bytes) -> list[bytes]:
    """Every certificate in a PEM file, as DER, in file order."""
    out = []
    for m in _PEM_RE.finditer(pem):
        try:
            out.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
        except ValueError as exc:
            raise X509Error(f"bad PEM: {exc}") from None
    return out
