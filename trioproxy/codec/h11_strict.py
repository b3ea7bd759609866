"""Tighten h11's parser where its leniency could let two HTTP/1.1 parsers
disagree about a message (request smuggling, response splitting).

h11 follows RFC 7230 loosely in three places a proxy must not:

- obs-fold (a header line starting with SP or HTAB) is unfolded into the
  previous value; RFC 9112 5.2 lets a server reject it, and Envoy does. We
  reject it: an `h11.RemoteProtocolError`, i.e. 400 downstream / 502 UPE
  upstream.
- header values may hold any byte but NUL and whitespace, so CTLs such as
  0x01 and DEL pass. RFC 9110 5.5 allows only VCHAR, obs-text, SP and HTAB.
  We allow exactly those.
- chunk extensions are `;.*`, so a NUL or bare CR inside one passes. We
  require RFC 9112 7.1.1's grammar: `;` name [`=` token / quoted-string],
  with optional whitespace.

The patch replaces three module-level names in `h11._readers` (the regexes
and the unfolding step it looks up at call time). It is applied once, on
import of `trioproxy.codec.http1`; `apply()` fails loudly if an h11 release
renames them, and tests/test_smuggling.py holds the payloads that prove
each rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import h11
from h11 import _readers

__all__ = ["apply"]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_OWS = rb"[ \t]*"
# field-vchar = VCHAR / obs-text (no CTL, no DEL).
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_FIELD_CONTENT = _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*"
HEADER_FIELD = re.compile(
    rb"(?P<field_name>"
    + _TOKEN
    + rb"):"
    + _OWS
    + rb"(?P<field_value>(?:"
    + _FIELD_CONTENT
    + rb")?)"
    + _OWS
)
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = (
    rb"(?:"
    + _OWS
    + rb";"
    + _OWS
    + _TOKEN
    + rb"(?:"
    + _OWS
    + rb"="
    + _OWS
    + rb"(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*"
)
# h11 bounds the size at 20 hex digits; so do we. Trailing OWS is tolerated
# as h11 does (some servers send it).
CHUNK_HEADER = re.compile(
    rb"(?P<chunk_size>[0-9A-Fa-f]{1,20})(?P<chunk_ext>" + _CHUNK_EXT + rb")" + _OWS + rb"\r\n"
)


def _reject_obs_fold(lines: Iterable[bytes]) -> Iterable[bytes]:
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise h11.LocalProtocolError("obsolete line folding in a header")
        yield line


_applied = False


def apply() -> None:
    """Install the strict rules into h11 (idempotent)."""
    global _applied
    if _applied:
        return
    for name in ("header_field_re", "chunk_header_re", "_obsolete_line_fold"):
        if not hasattr(_readers, name):
            raise ImportError(
                f"h11 {getattr(h11, '__version__', '?')} has no h11._readers.{name}: "
                "trioproxy.codec.h11_strict must be updated for this h11"
            )
    _readers.header_field_re = HEADER_FIELD
    _readers.chunk_header_re = CHUNK_HEADER
    _readers._obsolete_line_fold = _reject_obs_fold
    _applied = True
