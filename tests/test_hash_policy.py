"""Route hash policies (`trioproxy.http.hash_policy`) on request heads:
each kind alone, then how several combine (Envoy's rotate-and-xor, `terminal`)."""

from __future__ import annotations

from trioproxy.codec.stream import RequestHead
from trioproxy.config import (
    CookieHashPolicy,
    HashPolicy,
    HeaderHashPolicy,
    QueryParameterHashPolicy,
    SourceIpHashPolicy,
)
from trioproxy.http.hash_policy import cookie_value, request_hash
from trioproxy.upstream.lb import hash64

REMOTE = "10.1.2.3:40000"
LOCAL = "10.0.0.1:8000"


def head(path: str = "/", headers: list[tuple[str, str]] | None = None) -> RequestHead:
    return RequestHead(
        method=b"GET",
        path=path.encode(),
        authority=b"example.com",
        headers=[(k.encode(), v.encode()) for k, v in headers or []],
    )


def run(
    *policies: HashPolicy, h: RequestHead | None = None, remote: str = REMOTE
) -> tuple[int | None, list[bytes]]:
    cookies: list[bytes] = []
    out = request_hash(policies, h or head(), remote, LOCAL, cookies)
    return out, cookies


def rotl(x: int) -> int:
    return ((x << 1) | (x >> 63)) & ((1 << 64) - 1)


def test_header() -> None:
    p = HeaderHashPolicy(name="x-user")
    assert run(p, h=head(headers=[("x-user", "alice")])) == (hash64(b"alice"), [])
    assert run(p, h=head(headers=[("x-other", "alice")])) == (None, [])
    # Repeated values hash the same in any order, and not as one value.
    ab = run(p, h=head(headers=[("x-user", "a"), ("x-user", "b")]))[0]
    ba = run(p, h=head(headers=[("x-user", "b"), ("x-user", "a")]))[0]
    assert ab == ba and ab != hash64(b"a")
    assert run(HeaderHashPolicy(name=":authority"))[0] == hash64(b"example.com")


def test_source_ip_ignores_the_port() -> None:
    p = SourceIpHashPolicy()
    assert run(p)[0] == hash64(b"10.1.2.3")
    assert run(p, remote="10.1.2.3:1")[0] == hash64(b"10.1.2.3")
    assert run(p, remote="[2001:db8::1]:443")[0] == hash64(b"2001:db8::1")
    assert run(p, remote="")[0] is None


def test_query_parameter_first_raw_value() -> None:
    p = QueryParameterHashPolicy(name="user")
    assert run(p, h=head("/x?a=1&user=bob%20x&user=eve"))[0] == hash64(b"bob%20x")
    assert run(p, h=head("/x?username=bob"))[0] is None
    assert run(p, h=head("/x"))[0] is None
    assert run(p, h=head("/x?user="))[0] == hash64(b"")


def test_cookie_present() -> None:
    p = CookieHashPolicy(name="session", ttl=60)
    h = head(headers=[("cookie", "a=1; session=abc; b=2")])
    assert run(p, h=h) == (hash64(b"abc"), [])  # present: nothing to set
    quoted = head(headers=[("cookie", "x=y"), ("cookie", 'session="abc"')])
    assert run(p, h=quoted) == (hash64(b"abc"), [])
    assert cookie_value(head(headers=[("cookie", "sessionid=1")]), b"session") is None


def test_cookie_absent_without_ttl_yields_nothing() -> None:
    assert run(CookieHashPolicy(name="session")) == (None, [])


def test_cookie_absent_with_ttl_is_generated_and_honoured() -> None:
    p = CookieHashPolicy(name="session", ttl=3600, path="/")
    got, cookies = run(p)
    (set_cookie,) = cookies
    value = f"{hash64((REMOTE + LOCAL).encode()):016x}"
    assert set_cookie == f'session="{value}"; Max-Age=3600; Path=/; HttpOnly'.encode()
    assert got == hash64(value.encode())
    # The client sends it back: same hash, nothing new to set.
    back = head(headers=[("cookie", f'session="{value}"')])
    assert run(p, h=back) == (got, [])
    # The same connection always gets the same value; another one another.
    assert run(p)[1] == cookies
    assert run(p, remote="10.9.9.9:1")[1] != cookies


def test_session_cookie_has_no_max_age() -> None:
    _, (set_cookie,) = run(CookieHashPolicy(name="s", ttl=0))
    assert b"Max-Age" not in set_cookie and b"Path" not in set_cookie
    assert set_cookie.endswith(b"; HttpOnly")


def test_policies_combine_by_rotate_and_xor() -> None:
    user = HeaderHashPolicy(name="x-user")
    ip = SourceIpHashPolicy()
    h = head(headers=[("x-user", "alice")])
    assert run(user, ip, h=h)[0] == rotl(hash64(b"alice")) ^ hash64(b"10.1.2.3")
    # The same policy twice does not cancel out.
    assert run(user, user, h=h)[0] == rotl(hash64(b"alice")) ^ hash64(b"alice") != 0
    # A policy that yields nothing is skipped.
    assert run(HeaderHashPolicy(name="x-none"), ip, h=h)[0] == hash64(b"10.1.2.3")


def test_terminal_stops_at_the_first_hash() -> None:
    user = HeaderHashPolicy(name="x-user", terminal=True)
    ip = SourceIpHashPolicy()
    assert run(user, ip, h=head(headers=[("x-user", "alice")]))[0] == hash64(b"alice")
    # A terminal policy that yields nothing does not stop the walk.
    assert run(user, ip)[0] == hash64(b"10.1.2.3")
    # A terminal cookie policy that generated a value stops before the rest.
    got, cookies = run(CookieHashPolicy(name="s", ttl=1, terminal=True), ip)
    assert len(cookies) == 1 and got == hash64(cookies[0].split(b'"')[1])


def test_nothing_yields_none() -> None:
    assert run() == (None, [])
    assert run(HeaderHashPolicy(name="x"), QueryParameterHashPolicy(name="q")) == (None, [])
