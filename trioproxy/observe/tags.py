"""Envoy's default tag extraction: `cluster.x.upstream_rq_200` ->
`cluster.upstream_rq` with tags `envoy.response_code=200`, `envoy.cluster_name=x`.

Tagged sinks (Prometheus, DogStatsD) print the tag-extracted name with the
tags as labels. The rules are Envoy's default tag specifiers
(`source/common/config/well_known_names.cc`), restricted to the names
trioproxy emits, applied the way Envoy applies them:

- every regex is matched against the *original* name, in the order below;
- a match's first group is cut out of the name, its second group (or the
  first, if there is no second) is the tag's value;
- a tag name is extracted at most once (the first matching rule wins).

Extraction runs once per stat name (`TagCache`), never per request. This
module is pure: no I/O, no clock.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_TAG_RULES", "TagCache", "TaggedName", "extract_tags"]

# (tag name, regex). Regexes are Envoy's, with `[:digit:]` spelled `0-9` and
# matched in ASCII mode (C++ std::regex's `\w` is ASCII).
DEFAULT_TAG_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.ASCII))
    for name, rx in (
        # *_rq(_<response_code>)
        ("envoy.response_code", r"_rq(_(\d{3}))$"),
        # *_rq_(<response_code_class>)xx
        ("envoy.response_code_class", r"_rq_(\d)xx$"),
        # cluster.[<cluster>.]grpc.[<service>.](<method>.)<base_stat>
        ("envoy.grpc_bridge_method", r"^cluster(?=\.).*?\.grpc(?=\.).*\.((.*?)\.)\w+?$"),
        # listener.[<address>.]ssl.cipher.(<cipher>)
        ("envoy.ssl_cipher", r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$"),
        # cluster.[<cluster>.]ssl.ciphers.(<cipher>)
        ("envoy.ssl_cipher_suite", r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$"),
        # cluster.[<cluster>.]grpc.(<service>.)*
        ("envoy.grpc_bridge_service", r"^cluster(?=\.).*?\.grpc\.((.*?)\.)"),
        # tcp.(<stat_prefix>.)<base_stat>
        ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
        # cluster.(<cluster_name>.)*
        ("envoy.cluster_name", r"^cluster\.((.*?)\.)"),
        # http.(<stat_prefix>.)* or listener.[<address>.]http.(<stat_prefix>.)*
        ("envoy.http_conn_manager_prefix", r"^(?:|listener(?=\.).*?\.)http\.((.*?)\.)"),
        # listener.(<address>.)*: only addresses (digits, `.`, `_`; or IPv6 hex)
        (
            "envoy.listener_address",
            r"^listener\.(((?:[_.0-9]*|[_\[\]aAbBcCdDeEfF0-9]*))\.)",
        ),
    )
)


class TaggedName:
    """A stat name after tag extraction."""

    __slots__ = ("name", "tags")

    def __init__(self, name: str, tags: tuple[tuple[str, str], ...]) -> None:
        self.name = name  # e.g. "cluster.upstream_rq"
        self.tags = tags  # e.g. (("envoy.response_code", "200"), ("envoy.cluster_name", "x"))

    def __repr__(self) -> str:
        return f"TaggedName({self.name!r}, {self.tags!r})"


def extract_tags(
    name: str, rules: tuple[tuple[str, re.Pattern[str]], ...] = DEFAULT_TAG_RULES
) -> TaggedName:
    """Apply Envoy's tag extraction to one full stat name."""
    tags: list[tuple[str, str]] = []
    cuts: list[tuple[int, int]] = []
    seen: set[str] = set()
    for tag, rx in rules:
        if tag in seen:
            continue
        m = rx.search(name)
        if m is None:
            continue
        start, end = m.span(1)
        # A rule whose text another rule already cut out would cut it twice.
        if any(start < e and s < end for s, e in cuts):
            continue
        seen.add(tag)
        tags.append((tag, m.group(2) if rx.groups > 1 else m.group(1)))
        cuts.append((start, end))
    if not cuts:
        return TaggedName(name, ())
    out = []
    pos = 0
    for s, e in sorted(cuts):
        out.append(name[pos:s])
        pos = e
    out.append(name[pos:])
    return TaggedName("".join(out), tuple(tags))


class TagCache:
    """Tag extraction memoised per stat name (stats are few; reads are many)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, TaggedName] = {}

    def get(self, name: str) -> TaggedName:
        t = self._cache.get(name)
        if t is None:
            t = self._cache[name] = extract_tags(name)
        return t
