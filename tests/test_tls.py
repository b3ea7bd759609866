"""TLS end to end: real TLS clients (httpx, curl, the stdlib) against the proxy, and
the proxy against real TLS upstreams, all on 127.0.0.1.

Downstream: SNI chooses the filter chain and certificate (exact and
wildcard names), ALPN h2 gives HTTP/2 and http/1.1 falls back, TLS 1.1 is
refused, mTLS accepts and rejects clients (with x-forwarded-client-cert seen
by the upstream), certificates are reloaded when their files change,
TLS and plaintext share one port through the tls_inspector, ssl stats.

Upstream: TLS origination with SNI and CA/SAN verification (success and a
503 UF with the TLS failure reason), client certificates, ALPN h2 and auto.

Certificates are made per module with `cryptography` (tests/tls_certs.py).
"""

from __future__ import annotations

import shutil
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import hashes
from trioproxy.dsl import (
    cluster,
    http,
    listener,
    mesh,
    prefix,
    san,
    tls,
)

from tests.conftest import require_tool, start_proxy, start_upstream
from tests.tls_certs import Leaf, Pki
from tests.tls_upstreams import TlsAutoUpstream, TlsUpstream, TlsUpstreamH2
from tests.upstream import Upstream
from trioproxy.runtime.server import Server

TIMEOUT = 10


class Certs:
    def __init__(self, root: Path) -> None:
        self.pki = Pki(root / "ca")
        self.other = Pki(root / "other", name="another CA")
        self.a = self.pki.issue("a.example.test")
        self.b = self.pki.issue("b.example.test")
        self.wild = self.pki.issue("*.w.example.test", file_stem="wild")
        self.backend = self.pki.issue("backend.example.test")
        self.a_spiffe = self.pki.issue(
            "a.example.test", uri=["spiffe://test/proxy"], file_stem="a-spiffe"
        )
        self.client = self.pki.issue(
            "client one", uri=["spiffe://test/client"], dns=["client.example.test"], client=True
        )
        self.rogue = self.other.issue("client one", uri=["spiffe://test/client"], client=True)
        self.wrong_san = self.pki.issue("client two", uri=["spiffe://test/other"], client=True)

    @property
    def ca(self) -> str:
        return self.pki.ca_file


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    yield Certs(tmp_path_factory.mktemp("tls"))


def client_ctx(
    certs: Certs, *, cert: Leaf | None = None, alpn: list[str] | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext, sni: str) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    s = trio.SSLStream(tcp, ctx, server_hostname=sni, https_compatible=True)
    await s.do_handshake()
    return s


async def get(
    port: int,
    sni: str,
    ctx: ssl.SSLContext,
    path: str = "/",
    *,
    http2: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    # One client per request: httpx would reuse a connection across SNIs.
    async with httpx.AsyncClient(verify=ctx, http2=http2, http1=True) as c:
        return await c.get(
            f"https://127.0.0.1:{port}{path}",
            extensions={"sni_hostname": sni},
            headers=headers,
        )


def stat(server: Server, name: str) -> int:
    c = server.stats.counters.get(name)
    return c.value if c is not None else 0


def lstat(server: Server, name: str) -> int:
    return stat(server, f"listener.127.0.0.1_0.{name}")


async def edge(nursery: trio.Nursery, certs: Certs, up: Upstream, **opts: Any) -> Server:
    """Chains a.example.test, b.example.test and *.w.example.test, each
    routing to `up` with its own stat prefix."""
    svc = cluster("up", up.address)
    lis = listener("edge", "127.0.0.1:0")
    for name, leaf in (("a", certs.a), ("b", certs.b), ("w", certs.wild)):
        lis = lis.chain(
            http(name).route(prefix("/"), svc),
            tls=tls(leaf.cert, leaf.key, **opts),
            server_names=[leaf.name],
        )
    return await start_proxy(nursery, mesh(lis).compile())


# --------------------------------------------------------------------------- SNI, ALPN


async def test_sni_selects_chain_and_certificate(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server = await edge(nursery, certs, up)
        port = server.listener_address("edge").port
        for sni, cn in (
            ("a.example.test", "a.example.test"),
            ("b.example.test", "b.example.test"),
            ("x.w.example.test", "*.w.example.test"),
        ):
            s = await handshake(port, client_ctx(certs), sni)
            peer = s.getpeercert()
            assert dict(x[0] for x in peer["subject"])["commonName"] == cn
            await s.aclose()
        # Each chain's HCM served its own request.
        for sni, prefix_ in (("a.example.test", "a"), ("b.example.test", "b")):
            r = await get(port, sni, client_ctx(certs), "/hello")
            assert r.status_code == 200
            assert stat(server, f"http.{prefix_}.downstream_rq_total") == 1
        assert up.requests[-1]["headers"]["x-forwarded-proto"] == "https"
        # An SNI no chain serves: no chain matches, the connection is closed.
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await handshake(port, client_ctx(certs), "nope.example.test")
        assert lstat(server, "no_filter_chain_match") == 1
        assert stat(server, "tls_inspector.sni_found") >= 4


async def test_alpn_h2_and_http11_fallback(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server = await edge(nursery, certs, up)
        port = server.listener_address("edge").port
        r2 = await get(port, "a.example.test", client_ctx(certs), "/h2", http2=True)
        assert r2.status_code == 200 and r2.http_version == "HTTP/2"
        r1 = await get(port, "a.example.test", client_ctx(certs), "/h1")
        assert r1.status_code == 200 and r1.http_version == "HTTP/1.1"
        assert stat(server, "http.a.downstream_cx_http2_total") == 1
        assert stat(server, "http.a.downstream_cx_http1_total") == 1
        s = await handshake(port, client_ctx(certs, alpn=["h2", "http/1.1"]), "a.example.test")
        assert s.selected_alpn_protocol() == "h2"
        await s.aclose()


async def test_curl_http2_and_http11(nursery: trio.Nursery, certs: Certs) -> None:
    curl = require_tool("curl")
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server = await edge(nursery, certs, up)
        port = server.listener_address("edge").port
        for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
            result = await trio.run_process(
                [
                    curl, "-sS", flag, "--cacert", certs.ca,
                    "--resolve", f"b.example.test:{port}:127.0.0.1",
                    "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                    f"https://b.example.test:{port}/curl",
                ],
                capture_stdout=True,
                capture_stderr=True,
            )  # fmt: skip
            assert result.stdout.decode() == f"200 {version}", result.stderr
        assert up.requests[-1]["path"] == "/curl"


async def test_tls11_client_refused(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server = await edge(nursery, certs, up)
        port = server.listener_address("edge").port
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(trio.BrokenResourceError):
            await handshake(port, ctx, "a.example.test")
        while lstat(server, "ssl.connection_error") == 0:
            await trio.sleep(0.01)
        assert lstat(server, "ssl.handshake") == 0
        # TLS 1.2 is still accepted (Envoy's server minimum).
        ctx12 = client_ctx(certs)
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        s = await handshake(port, ctx12, "a.example.test")
        assert s.version() == "TLSv1.2"
        await s.aclose()
        assert lstat(server, "ssl.versions.TLSv1.2") == 1


# --------------------------------------------------------------------------- mTLS


async def mtls_edge(
    nursery: trio.Nursery, certs: Certs, up: Upstream, server: Leaf | None = None, **hcm: Any
) -> int:
    server_cert = server or certs.a
    m = mesh(
        listener("edge", "127.0.0.1:0").chain(
            http("mtls", **hcm).route(prefix("/"), cluster("up", up.address)),
            tls=tls(
                server_cert.cert,
                server_cert.key,
                ca=certs.ca,
                require_client_cert=True,
                san=[san("uri", prefix="spiffe://test/client")],
            ),
        )
    ).compile()
    proxy = await start_proxy(nursery, m)
    return proxy, proxy.listener_address("edge").port


async def test_mtls_accepts_client_and_sets_xfcc(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server, port = await mtls_edge(nursery, certs, up)
        ctx = client_ctx(certs, cert=certs.client)
        # A client-sent XFCC is replaced (sanitize_set), never trusted.
        r = await get(port, "a.example.test", ctx, headers={"x-forwarded-client-cert": "By=evil"})
        assert r.status_code == 200
        xfcc = up.requests[-1]["headers"]["x-forwarded-client-cert"]
        fingerprint = certs.client.certificate.fingerprint(hashes.SHA256()).hex()
        assert xfcc == (
            f'Hash={fingerprint};Subject="CN=client one,O=trioproxy tests,C=US"'
            ";URI=spiffe://test/client;DNS=client.example.test"
        )
        assert "evil" not in xfcc
        # Over HTTP/2 too (stream tasks inherit the connection's TLS info).
        r2 = await get(port, "a.example.test", ctx, http2=True)
        assert r2.http_version == "HTTP/2"
        assert up.requests[-1]["headers"]["x-forwarded-client-cert"] == xfcc
        assert lstat(server, "ssl.handshake") == 2
        assert lstat(server, "ssl.no_certificate") == 0


@pytest.mark.parametrize(
    ("who", "stat_name"),
    [
        ("none", "ssl.fail_verify_no_cert"),
        ("rogue", "ssl.fail_verify_error"),
        ("wrong_san", "ssl.fail_verify_san"),
    ],
)
async def test_mtls_rejects(nursery: trio.Nursery, certs: Certs, who: str, stat_name: str) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server, port = await mtls_edge(nursery, certs, up)
        leaf = None if who == "none" else getattr(certs, who)
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            await get(port, "a.example.test", client_ctx(certs, cert=leaf))
        while lstat(server, "ssl.connection_error") == 0:
            await trio.sleep(0.01)
        assert lstat(server, stat_name) == 1
        assert lstat(server, "ssl.handshake") == 0
        assert up.requests == []


async def test_xfcc_modes(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        _, port = await mtls_edge(
            nursery,
            certs,
            up,
            server=certs.a_spiffe,
            forward_client_cert="append_forward",
            client_cert_details=["uri", "cert"],
        )
        ctx = client_ctx(certs, cert=certs.client)
        await get(port, "a.example.test", ctx, headers={"x-forwarded-client-cert": "Hash=00"})
        xfcc = up.requests[-1]["headers"]["x-forwarded-client-cert"]
        first, second = xfcc.split(",", 1)
        assert first == "Hash=00"
        # "By": the URI SAN of the proxy's own certificate.
        assert second.startswith("By=spiffe://test/proxy;Hash=")
        assert ';Cert="-----BEGIN%20CERTIFICATE-----%0A' in second
        assert second.endswith(";URI=spiffe://test/client")


async def test_plaintext_request_loses_spoofed_xfcc(nursery: trio.Nursery) -> None:
    from tests.conftest import cluster as graph_cluster
    from tests.conftest import proxy_url, route_to, simple_mesh

    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        server = await start_proxy(
            nursery, simple_mesh([route_to("up")], [graph_cluster("up", up)])
        )
        async with httpx.AsyncClient() as c:
            r = await c.get(proxy_url(server), headers={"x-forwarded-client-cert": "By=evil"})
        assert r.status_code == 200
        assert "x-forwarded-client-cert" not in up.requests[-1]["headers"]


# --------------------------------------------------------------------------- reload


async def test_certificate_reload(nursery: trio.Nursery, tmp_path: Path, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        cert, key = tmp_path / "a.pem", tmp_path / "a.key"
        shutil.copy(certs.a.cert, cert)
        shutil.copy(certs.a.key, key)
        up = await start_upstream(nursery)
        m = mesh(
            listener("edge", "127.0.0.1:0").chain(
                http("r").route(prefix("/"), cluster("up", up.address)),
                tls=tls(str(cert), str(key), watch_interval="20ms"),
            )
        ).compile()
        server = await start_proxy(nursery, m)
        port = server.listener_address("edge").port
        before = await handshake(port, client_ctx(certs), "a.example.test")
        serial_before = before.getpeercert()["serialNumber"]
        # A new certificate for the same name, written over the old files.
        fresh = certs.pki.issue("a.example.test", file_stem="a-fresh")
        shutil.copy(fresh.key, key)
        shutil.copy(fresh.cert, cert)
        while lstat(server, "ssl.context_reload") == 0:
            await trio.sleep(0.01)
        after = await handshake(port, client_ctx(certs), "a.example.test")
        assert int(after.getpeercert()["serialNumber"], 16) == fresh.certificate.serial_number
        assert after.getpeercert()["serialNumber"] != serial_before
        # The connection made before the reload still works.
        await before.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await before.receive_some(100)).startswith(b"HTTP/1.1 200")
        # A broken rewrite (key of another certificate) keeps the current one.
        errors = lstat(server, "ssl.context_reload_error")
        shutil.copy(certs.b.key, key)
        while lstat(server, "ssl.context_reload_error") == errors:
            await trio.sleep(0.01)
        again = await handshake(port, client_ctx(certs), "a.example.test")
        assert int(again.getpeercert()["serialNumber"], 16) == fresh.certificate.serial_number
        for s in (before, after, again):
            await s.aclose()


# --------------------------------------------------------------------------- one port


async def test_plaintext_and_tls_share_a_port(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        svc = cluster("up", up.address)
        m = mesh(
            listener("edge", "127.0.0.1:0")
            .chain(http("tls").route(prefix("/"), svc), tls=tls(certs.a.cert, certs.a.key))
            .chain(http("plain").route(prefix("/"), svc))
        ).compile()
        assert [type(f).__name__ for f in m.listeners[0].listener_filters] == ["TlsInspector"]
        server = await start_proxy(nursery, m)
        port = server.listener_address("edge").port
        r = await get(port, "a.example.test", client_ctx(certs), "/secure", http2=True)
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{port}/plain")
        assert r.status_code == 200
        async with httpx.AsyncClient(http1=False, http2=True) as c:
            r = await c.get(f"http://127.0.0.1:{port}/h2c")
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        assert [q["headers"]["x-forwarded-proto"] for q in up.requests] == [
            "https",
            "http",
            "http",
        ]
        assert stat(server, "tls_inspector.tls_found") == 1
        assert stat(server, "tls_inspector.tls_not_found") == 2
        assert stat(server, "http.tls.downstream_rq_total") == 1
        assert stat(server, "http.plain.downstream_rq_total") == 2


async def test_listener_filter_timeout_closes_silent_client(
    nursery: trio.Nursery, certs: Certs
) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        m = mesh(
            listener("edge", "127.0.0.1:0")
            .chain(http("tls").route(prefix("/"), cluster("up", up.address)),
                   tls=tls(certs.a.cert, certs.a.key), server_names=["a.example.test"])
            .listener_filters_timeout("50ms")
        ).compile()  # fmt: skip
        server = await start_proxy(nursery, m)
        s = await trio.open_tcp_stream("127.0.0.1", server.listener_address("edge").port)
        assert await s.receive_some(10) == b""  # closed by the proxy
        assert lstat(server, "downstream_pre_cx_timeout") == 1


# --------------------------------------------------------------------------- upstream TLS


async def tls_upstream(nursery: trio.Nursery, certs: Certs, **ctx: Any) -> TlsUpstream:
    up = TlsUpstream("tls-up", certs.backend.cert, certs.backend.key, **ctx)
    await nursery.start(up.run)
    return up


FAILURE_LOG = "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"


async def front(nursery: trio.Nursery, backend: Any, tmp_path: Path) -> tuple[Server, Path]:
    log = tmp_path / "access.log"
    m = mesh(
        listener("ingress", "127.0.0.1:0").chain(
            http("ingress")
            .access_log(str(log), FAILURE_LOG)
            .route(prefix("/"), backend)
        )
    ).compile()  # fmt: skip
    return await start_proxy(nursery, m), log


async def fetch(server: Server, path: str = "/") -> httpx.Response:
    port = server.listener_address("ingress").port
    async with httpx.AsyncClient() as c:
        return await c.get(f"http://127.0.0.1:{port}{path}")


async def read_log(log: Path) -> list[str]:
    while not log.exists() or not log.read_text():
        await trio.sleep(0.02)
    return log.read_text().splitlines()


async def test_upstream_tls_with_sni_and_verification(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        up = await tls_upstream(nursery, certs)
        backend = cluster("backend", up.address).tls("backend.example.test", ca=certs.ca)
        server, _ = await front(nursery, backend, tmp_path)
        r = await fetch(server, "/via-tls")
        assert r.status_code == 200
        assert r.json()["path"] == "/via-tls"
        assert up.server_names == ["backend.example.test"]
        assert stat(server, "cluster.backend.ssl.handshake") == 1
        # The connection is pooled and reused.
        assert (await fetch(server)).status_code == 200
        assert up.connections == 1


@pytest.mark.parametrize(
    ("tls_opts", "reason", "stat_name"),
    [
        ({"sni": "wrong.example.test"}, "CERTIFICATE_VERIFY_FAILED", "fail_verify_error"),
        ({"sni": "backend.example.test", "ca": "other"}, "CERTIFICATE_VERIFY_FAILED",
         "fail_verify_error"),
        ({"san": ["dns:other.example.test"]}, "SAN_VERIFICATION_FAILED", "fail_verify_san"),
    ],
)  # fmt: skip
async def test_upstream_tls_verification_failure_is_503_uf(
    nursery: trio.Nursery,
    certs: Certs,
    tmp_path: Path,
    tls_opts: dict[str, Any],
    reason: str,
    stat_name: str,
) -> None:
    with trio.fail_after(TIMEOUT):
        up = await tls_upstream(nursery, certs)
        opts = {"ca": certs.ca, **tls_opts}
        if opts["ca"] == "other":
            opts["ca"] = certs.other.ca_file
        backend = cluster("backend", up.address).tls(**opts)
        server, log = await front(nursery, backend, tmp_path)
        r = await fetch(server)
        assert r.status_code == 503
        assert r.text.startswith("upstream connect error")
        (line,) = await read_log(log)
        code, flags, failure = line.split(" ", 2)
        assert (code, flags) == ("503", "UF")
        assert failure.startswith(f"TLS_error: {reason}:"), failure
        assert stat(server, f"cluster.backend.ssl.{stat_name}") == 1
        assert stat(server, "cluster.backend.upstream_cx_connect_fail") == 1
        assert up.requests == []


async def test_upstream_san_match_success(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        up = await tls_upstream(nursery, certs)
        backend = cluster("backend", up.address).tls(ca=certs.ca, san=["dns:backend.example.test"])
        server, _ = await front(nursery, backend, tmp_path)
        assert (await fetch(server)).status_code == 200
        assert up.server_names == [""]  # an IP endpoint and no sni=: no SNI sent


async def test_upstream_mtls_client_certificate(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        up = await tls_upstream(nursery, certs, client_ca=certs.ca)
        good = cluster("good", up.address).tls(
            "backend.example.test", ca=certs.ca, cert=certs.client.cert, key=certs.client.key
        )
        bad = cluster("bad", up.address).tls("backend.example.test", ca=certs.ca)
        log = tmp_path / "access.log"
        m = mesh(
            listener("ingress", "127.0.0.1:0").chain(
                http("ingress")
                .access_log(str(log), "%RESPONSE_CODE% %RESPONSE_FLAGS%\n")
                .route(prefix("/good"), good)
                .route(prefix("/bad"), bad)
            )
        ).compile()
        server = await start_proxy(nursery, m)
        assert (await fetch(server, "/good")).status_code == 200
        # TLS 1.3: the server checks the client certificate after the client's
        # handshake is done, so the failure shows on the first read (a reset).
        assert (await fetch(server, "/bad")).status_code == 503


async def test_upstream_http2_over_tls_requires_alpn_h2(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        h2up = TlsUpstreamH2("h2-tls", certs.backend.cert, certs.backend.key)
        await nursery.start(h2up.run)
        h1up = await tls_upstream(nursery, certs, alpn=["http/1.1"])
        ok = cluster("ok", h2up.address).tls("backend.example.test", ca=certs.ca).http2()
        no = cluster("no", h1up.address).tls("backend.example.test", ca=certs.ca).http2()
        log = tmp_path / "access.log"
        m = mesh(
            listener("ingress", "127.0.0.1:0").chain(
                http("ingress")
                .access_log(str(log), "%RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n")
                .route(prefix("/ok"), ok)
                .route(prefix("/no"), no)
            )
        ).compile()
        server = await start_proxy(nursery, m)
        r = await fetch(server, "/ok")
        assert r.status_code == 200
        assert h2up.requests[-1]["path"] == "/ok"
        r = await fetch(server, "/no")
        assert r.status_code == 503
        lines = await read_log(log)
        while len(lines) < 2:
            lines = await read_log(log)
        assert lines[1] == (
            "UF TLS_error: ALPN_MISMATCH:upstream negotiated no protocol, expected h2"
        )


@pytest.mark.parametrize("offered", [["h2", "http/1.1"], ["http/1.1"]])
async def test_upstream_auto_protocol_by_alpn(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, offered: list[str]
) -> None:
    with trio.fail_after(TIMEOUT):
        up = TlsAutoUpstream("auto", certs.backend.cert, certs.backend.key, alpn=offered)
        await nursery.start(up.run)
        backend = cluster("auto", up.address).tls("backend.example.test", ca=certs.ca).auto_http()
        server, _ = await front(nursery, backend, tmp_path)
        for i in range(3):
            r = await fetch(server, f"/{i}")
            assert r.status_code == 200
        assert up.protocols == [offered[0]]  # one connection, reused
        served = up.h2 if offered[0] == "h2" else up.h1
        assert [q["path"] for q in served.requests] == ["/0", "/1", "/2"]


async def test_handshake_timeout_closes_silent_client(nursery: trio.Nursery, certs: Certs) -> None:
    with trio.fail_after(TIMEOUT):
        up = await start_upstream(nursery)
        m = mesh(
            listener("edge", "127.0.0.1:0").chain(
                http("tls").route(prefix("/"), cluster("up", up.address)),
                tls=tls(certs.a.cert, certs.a.key),
                handshake_timeout="50ms",
            )
        ).compile()
        server = await start_proxy(nursery, m)
        s = await trio.open_tcp_stream("127.0.0.1", server.listener_address("edge").port)
        assert await s.receive_some(10) == b""  # no ClientHello: closed by the proxy
        assert lstat(server, "ssl.connection_error") == 1


async def test_upstream_handshake_timeout_closes_socket(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A TLS upstream that accepts and never answers the ClientHello: the
    connect timeout covers the handshake (503 UF), and the half-made
    connection is closed, not leaked."""
    closed = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):  # the ClientHello, then EOF
            pass
        closed.set()

    with trio.fail_after(TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, silent, listeners)
        backend = cluster("slow", f"127.0.0.1:{port}", connect_timeout="200ms").tls()
        server, log = await front(nursery, backend, tmp_path)
        r = await fetch(server)
        assert r.status_code == 503
        (line,) = await read_log(log)
        assert line.startswith("503 UF connection_timeout: TLS handshake with")
        await closed.wait()
        assert stat(server, "cluster.slow.upstream_cx_connect_timeout") == 1
        assert stat(server, "cluster.slow.upstream_cx_connect_fail") == 1
        assert server.stats.gauges["cluster.slow.upstream_cx_active"].value == 0
        assert server.clusters.clusters["slow"].hosts[0].pool.active == 0
