"""Envoy's route hash_policy: the request hash for ring_hash / maglev clusters.

`request_hash(policies, head, remote, local)` evaluates a route's policies in
order. Each kind (header, cookie, source IP, query parameter) is one small
function registered by config type, so there is no if/elif over kinds. As in
Envoy (`HashPolicyImpl::generateHash`):

- a policy that yields a hash folds it in as `hash = rotl64(hash, 1) ^ new`
  (the rotation keeps two equal policies from cancelling out);
- a `terminal` policy that yields a hash stops the walk;
- no hash at all returns None (the balancer then picks a random host).

A cookie policy with a `ttl` whose cookie is absent generates the value
Envoy does (a hash of the connection's remote and local addresses, in hex,
so one connection always gets the same value), hashes it, and returns the
`Set-Cookie` value for the response. Values are hashed with `lb.hash64`
(BLAKE2b), the same in every process.

Only pure work on the request head: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from trioproxy.codec.stream import RequestHead
from trioproxy.config import (
    CookieHashPolicy,
    HashPolicy,
    HeaderHashPolicy,
    QueryParameterHashPolicy,
    SourceIpHashPolicy,
)
from trioproxy.upstream.lb import hash64

__all__ = ["cookie_value", "request_hash", "set_cookie_value"]

_MASK64: Final = (1 << 64) - 1

# (policy, head, remote address, local address, set-cookies out) -> hash or None
_Evaluate = Callable[[HashPolicy, RequestHead, str, str, list[bytes]], int | None]
_EVALUATORS: dict[type[HashPolicy], _Evaluate] = {}


def _evaluator(kind: type[HashPolicy]) -> Callable[[_Evaluate], _Evaluate]:
    def deco(fn: _Evaluate) -> _Evaluate:
        _EVALUATORS[kind] = fn
        return fn

    return deco


def request_hash(
    policies: tuple[HashPolicy, ...],
    head: RequestHead,
    remote: str,
    local: str,
    set_cookies: list[bytes],
) -> int | None:
    """The request's hash under `policies`, or None if none yields one.

    Cookies the proxy generates are appended to `set_cookies` (as the value
    of a `Set-Cookie` response header).
    """
    result: int | None = None
    for policy in policies:
        new = _EVALUATORS[type(policy)](policy, head, remote, local, set_cookies)
        if new is not None:
            old = 0 if result is None else ((result << 1) | (result >> 63)) & _MASK64
            result = old ^ new
        if policy.terminal and result is not None:
            break
    return result


@_evaluator(HeaderHashPolicy)
def _header(
    policy: HashPolicy, head: RequestHead, remote: str, local: str, set_cookies: list[bytes]
) -> int | None:
    assert isinstance(policy, HeaderHashPolicy)
    name = policy.name.encode("latin-1")
    if name[:1] == b":" or name == b"host":
        value = head.get(name)
        return None if value is None else hash64(value)
    values = [v for k, v in head.headers if k == name]
    if not values:
        return None
    if len(values) == 1:
        return hash64(values[0])
    # Envoy sorts repeated values so their order does not change the hash.
    values.sort()
    return hash64(b"\x00".join(values))


@_evaluator(SourceIpHashPolicy)
def _source_ip(
    policy: HashPolicy, head: RequestHead, remote: str, local: str, set_cookies: list[bytes]
) -> int | None:
    if not remote:
        return None
    ip = remote.rsplit(":", 1)[0] if remote[0] != "[" else remote[1 : remote.find("]")]
    return hash64(ip.encode())


@_evaluator(QueryParameterHashPolicy)
def _query(
    policy: HashPolicy, head: RequestHead, remote: str, local: str, set_cookies: list[bytes]
) -> int | None:
    assert isinstance(policy, QueryParameterHashPolicy)
    path = head.path
    q = path.find(b"?")
    if q < 0:
        return None
    query = path[q + 1 :].partition(b"#")[0]
    name = policy.name.encode()
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            return hash64(value)  # the first value, not decoded (Envoy)
    return None


@_evaluator(CookieHashPolicy)
def _cookie(
    policy: HashPolicy, head: RequestHead, remote: str, local: str, set_cookies: list[bytes]
) -> int | None:
    assert isinstance(policy, CookieHashPolicy)
    value = cookie_value(head, policy.name.encode())
    if value:
        return hash64(value)
    if policy.ttl is None:
        return None
    generated = f"{hash64((remote + local).encode()):016x}".encode()
    set_cookies.append(set_cookie_value(policy, generated))
    return hash64(generated)


def cookie_value(head: RequestHead, name: bytes) -> bytes | None:
    """The first value of cookie `name` in the request's `cookie` headers,
    without surrounding double quotes (Envoy's parseCookieValue)."""
    for k, v in head.headers:
        if k != b"cookie":
            continue
        for part in v.split(b";"):
            key, eq, value = part.strip().partition(b"=")
            if eq and key == name:
                if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                    value = value[1:-1]
                return value
    return None


def set_cookie_value(policy: CookieHashPolicy, value: bytes) -> bytes:
    """Envoy's makeSetCookieValue: `name="value"; Max-Age=ttl; Path=path; HttpOnly`."""
    out = policy.name.encode() + b'="' + value + b'"'
    if policy.ttl:
        out += b"; Max-Age=" + str(policy.ttl).encode()
    if policy.path:
        out += b"; Path=" + policy.path.encode()
    return out + b"; HttpOnly"
