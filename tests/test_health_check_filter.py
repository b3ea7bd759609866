"""The health_check HTTP filter and the admin's /healthcheck/fail|ok, end to
end over real sockets with httpx: probes are answered by the proxy, the
admin flips them to 503, normal traffic is still routed meanwhile."""

from __future__ import annotations

import attrs
import httpx
import trio

from tests.conftest import cluster, gauge, route_to, simple_mesh, start_proxy, start_upstream
from trioproxy.codec.stream import StreamInfo
from trioproxy.config import HeaderMatcher, HttpFilterConfig
from trioproxy.filters.base import FilterStatus, HttpFilter, http_filter
from trioproxy.filters.http.health_check import LocalHealthCheck
from trioproxy.http.conn_manager import ActiveStream
from trioproxy.runtime.server import Server

SEEN: list[StreamInfo] = []


@attrs.frozen(kw_only=True)
class Record(HttpFilterConfig):
    """A test filter that remembers the stream info of what reaches it."""


@http_filter(Record)
class RecordFilter(HttpFilter):
    async def on_request_headers(self, stream: ActiveStream) -> FilterStatus:
        SEEN.append(stream.info)
        return FilterStatus.CONTINUE


def _urls(server: Server) -> tuple[str, str]:
    a = server.admin_bound
    assert a is not None
    return (
        f"http://127.0.0.1:{server.listener_address('ingress').port}",
        f"http://{a.host}:{a.port}",
    )


async def _start(nursery: trio.Nursery, *filters: HttpFilterConfig) -> tuple[Server, str, str]:
    up = await start_upstream(nursery, "svc")
    server = await start_proxy(
        nursery,
        simple_mesh([route_to("svc")], [cluster("svc", up)], admin=True, http_filters=filters),
    )
    proxy, admin = _urls(server)
    return server, proxy, admin


async def test_probe_fail_ok_and_traffic_meanwhile(nursery: trio.Nursery) -> None:
    server, proxy, admin = await _start(nursery, LocalHealthCheck())
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy + "/healthz")
        assert r.status_code == 200 and r.content == b""
        assert "x-envoy-immediate-health-check-fail" not in r.headers
        assert r.headers.get("x-upstream") is None  # answered by the proxy
        assert (await c.get(proxy + "/other")).status_code == 200

        # A GET does not change the server.
        r = await c.get(admin + "/healthcheck/fail")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert (await c.get(proxy + "/healthz")).status_code == 200

        assert (await c.post(admin + "/healthcheck/fail")).status_code == 200
        r = await c.get(proxy + "/healthz")
        assert r.status_code == 503
        assert r.headers["x-envoy-immediate-health-check-fail"] == "true"
        # Normal traffic is still routed, and tells downstream checkers too.
        r = await c.get(proxy + "/other")
        assert r.status_code == 200
        assert r.headers["x-envoy-immediate-health-check-fail"] == "true"
        # As in Envoy: the server reports DRAINING and is no longer live.
        r = await c.get(admin + "/ready")
        assert r.status_code == 503 and r.text == "DRAINING\n"
        assert gauge(server, "server.live") == 0

        assert (await c.post(admin + "/healthcheck/ok")).status_code == 200
        r = await c.get(proxy + "/healthz")
        assert r.status_code == 200
        assert "x-envoy-immediate-health-check-fail" not in r.headers
        assert (await c.get(admin + "/ready")).status_code == 200
        assert gauge(server, "server.live") == 1
        help_text = (await c.get(admin + "/help")).text
        assert "/healthcheck/fail (POST)" in help_text
        assert "/healthcheck/ok (POST)" in help_text


async def test_pass_through_and_the_health_check_flag(nursery: trio.Nursery) -> None:
    SEEN.clear()
    hc = LocalHealthCheck(
        headers=(HeaderMatcher(name=":path", value="/ping"),), pass_through_mode=True
    )
    _server, proxy, admin = await _start(nursery, hc, Record())
    async with httpx.AsyncClient() as c:
        r = await c.get(proxy + "/ping")
        assert r.status_code == 200 and r.headers["x-upstream"] == "svc"  # the upstream answered
        await c.get(proxy + "/healthz")  # not our path here: plain traffic
        assert [i.is_health_check for i in SEEN] == [True, False]
        await c.post(admin + "/healthcheck/fail")
        r = await c.get(proxy + "/ping")
        assert r.status_code == 503  # failed: answered here even in pass-through
        assert len(SEEN) == 2


async def test_failed_probe_is_logged_with_lh(nursery: trio.Nursery) -> None:
    SEEN.clear()
    # The recorder runs first here, so it sees the probe's info after the reply.
    server, proxy, admin = await _start(nursery, Record(), LocalHealthCheck())
    async with httpx.AsyncClient() as c:
        await c.post(admin + "/healthcheck/fail")
        r = await c.get(proxy + "/healthz")
    assert r.status_code == 503
    info = SEEN[-1]
    assert info.is_health_check
    assert info.response_flags == ["LH"]
    assert info.response_code_details == "health_check_failed"
    assert server.health.failed


async def test_http2_probes_see_the_server_flag(nursery: trio.Nursery) -> None:
    """HTTP/2 streams run in tasks of their own; they see the flag too."""
    _server, proxy, admin = await _start(nursery, LocalHealthCheck())
    async with httpx.AsyncClient(http1=False, http2=True) as h2c, httpx.AsyncClient() as c:
        r = await h2c.get(proxy + "/healthz")
        assert (r.http_version, r.status_code) == ("HTTP/2", 200)
        await c.post(admin + "/healthcheck/fail")
        r = await h2c.get(proxy + "/healthz")
        assert r.status_code == 503
        assert r.headers["x-envoy-immediate-health-check-fail"] == "true"
        assert (await h2c.get(proxy + "/other")).status_code == 200
