"""The DSL for TLS, filter-chain matching and the TCP proxy: what compiles to
what, and every error with its message and `file:line`."""

from __future__ import annotations

import inspect
import os
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trioproxy.dsl import (
    MeshBuilder,
    MeshError,
    cluster,
    http,
    listener,
    load_mesh,
    mesh,
    prefix,
    san,
    tcp_proxy,
    tls,
    weighted,
)

from tests.tls_certs import Pki
from trioproxy.config import (
    CertificateValidation,
    DownstreamTlsContext,
    FilterChainMatch,
    HttpConnectionManager,
    SanMatcher,
    TcpProxy,
    TlsCertificate,
    TlsInspector,
    UpstreamTlsContext,
    WeightedCluster,
)
from trioproxy.config.dump import to_jsonable, to_tree

HERE = os.path.abspath(__file__)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = Pki(tmp_path_factory.mktemp("dsl-tls"))
    pki.issue("a.example.test", file_stem="a")
    pki.issue("b.example.test", file_stem="b")
    return pki


def files(pki: Pki, stem: str) -> tuple[str, str]:
    return str(pki.dir / f"{stem}.pem"), str(pki.dir / f"{stem}.key")


def errors(build: Callable[[], MeshBuilder]) -> list[str]:
    with pytest.raises(MeshError) as info:
        build().compile()
    return [i.message for i in info.value.issues]


def line_of(marker: str) -> int:
    src, _ = inspect.getsourcelines(inspect.getmodule(line_of))  # type: ignore[arg-type]
    for i, text in enumerate(src):
        if marker in text and "line_of(" not in text:
            return i + 1
    raise AssertionError(marker)


# --------------------------------------------------------------------------- valid


def test_sni_chains_with_inspector_and_alpn_defaults(pki: Pki) -> None:
    a_cert, a_key = files(pki, "a")
    b_cert, b_key = files(pki, "b")
    m = mesh(
        listener("edge", "127.0.0.1:8443")
        .chain(http("a").route(prefix("/"), cluster("s", "127.0.0.1:1")),
               tls=tls(a_cert, a_key), server_names=["A.example.test"])
        .chain(http("b", codec="http1").route(prefix("/"), "s"),
               tls=tls(b_cert, b_key, alpn=["http/1.1"], min_version="1.3"),
               server_names=["*.b.example.test", "b.example.test"], name="bee")
        .chain(http("plain").route(prefix("/"), "s"))
    ).compile()  # fmt: skip
    lis = m.listeners[0]
    assert lis.listener_filters == (TlsInspector(),)
    a, b, plain = lis.filter_chains
    assert a.match == FilterChainMatch(server_names=("a.example.test",), transport_protocol="tls")
    assert a.tls == DownstreamTlsContext(
        certificates=(TlsCertificate(cert_chain_file=a_cert, private_key_file=a_key),),
        alpn_protocols=("h2", "http/1.1"),
    )
    assert b.name == "bee"
    assert b.match.server_names == ("*.b.example.test", "b.example.test")
    assert b.tls is not None and b.tls.alpn_protocols == ("http/1.1",)
    assert b.tls.min_version == "TLSv1_3"
    # A plaintext HTTP chain on a TLS-inspected port matches only plaintext.
    assert plain.match == FilterChainMatch(transport_protocol="raw_buffer")
    assert plain.tls is None
    pickle.loads(pickle.dumps(m))
    dumped = to_jsonable(m)["listeners"][0]  # type: ignore[index]
    assert dumped["listener_filters"] == [{"@type": "TlsInspector"}]
    assert "tls chain" not in to_tree(m)  # smoke: renders


def test_single_tls_chain_needs_no_inspector(pki: Pki) -> None:
    cert, key = files(pki, "a")
    m = mesh(
        listener("edge", ":8443").chain(
            http().route(prefix("/"), cluster("s", "127.0.0.1:1")), tls=tls(cert, key)
        )
    ).compile()
    lis = m.listeners[0]
    assert lis.listener_filters == ()
    assert lis.filter_chains[0].match == FilterChainMatch()


def test_mtls_options(pki: Pki) -> None:
    cert, key = files(pki, "a")
    m = mesh(
        listener("edge", ":8443").chain(
            http(forward_client_cert="append_forward", client_cert_details=["cert", "dns"])
            .route(prefix("/"), cluster("s", "127.0.0.1:1")),
            tls=tls(cert, key, ca=pki.ca_file, require_client_cert=True,
                    san=["uri:spiffe://test/x", san("dns", suffix=".example.test")]),
            source=["10.0.0.0/8", "::1/128"],
            handshake_timeout="2s",
        )
    ).compile()  # fmt: skip
    chain = m.listeners[0].filter_chains[0]
    assert chain.tls is not None
    assert chain.tls.require_client_certificate
    assert chain.tls.validation == CertificateValidation(
        trusted_ca_file=pki.ca_file,
        match_subject_alt_names=(
            SanMatcher(san_type="uri", value="spiffe://test/x"),
            SanMatcher(san_type="dns", kind="suffix", value=".example.test"),
        ),
    )
    assert chain.match.source_prefix_ranges == ("10.0.0.0/8", "::1/128")
    assert chain.transport_socket_connect_timeout == 2.0
    hcm = chain.filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.forward_client_cert_details == "append_forward"
    assert hcm.set_current_client_cert_details == ("cert", "dns")


def test_xfcc_defaults() -> None:
    m = mesh(listener("l", ":0").route(prefix("/"), cluster("s", "127.0.0.1:1"))).compile()
    hcm = m.listeners[0].filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.forward_client_cert_details == "sanitize_set"
    assert hcm.set_current_client_cert_details == ("subject", "uri", "dns")


def test_tcp_proxy_chains() -> None:
    m = mesh(
        listener("tcp", ":9000")
        .chain(tcp_proxy(cluster("db", "10.0.0.5:5432"), idle_timeout="10m"),
               server_names=["db.example.test"])
        .chain(tcp_proxy(weighted((cluster("v1", "10.0.0.6:1"), 9), ("db", 1)), stat_prefix="w")
               .access_log("-"))
    ).compile()  # fmt: skip
    lis = m.listeners[0]
    # SNI matching adds the inspector; TCP chains keep "any transport".
    assert lis.listener_filters == (TlsInspector(),)
    first, second = (c.filters[0] for c in lis.filter_chains)
    assert first == TcpProxy(stat_prefix="tcp", cluster="db", idle_timeout=600.0)
    assert isinstance(second, TcpProxy)
    assert second.weighted_clusters == (
        WeightedCluster(name="v1", weight=9),
        WeightedCluster(name="db", weight=1),
    )
    assert [c.name for c in m.clusters] == ["db", "v1"]
    assert lis.filter_chains[1].match == FilterChainMatch()


def test_upstream_tls_and_alpn_defaults(pki: Pki) -> None:
    cert, key = files(pki, "b")
    m = mesh(
        listener("l", ":0")
        .route(prefix("/1"), cluster("h1", "api.internal:443").tls(ca=pki.ca_file))
        .route(prefix("/2"), cluster("h2", "10.0.0.1:443")
               .tls("api.internal", ca=pki.ca_file).http2())
        .route(prefix("/3"), cluster("auto", "10.0.0.1:443")
               .tls(ca=pki.ca_file, san=["dns:api.internal"], cert=cert, key=key).auto_http())
        .route(prefix("/4"), cluster("noverify", "10.0.0.1:443").tls())
    ).compile()  # fmt: skip
    h1, h2, auto, noverify = m.clusters
    validation = CertificateValidation(trusted_ca_file=pki.ca_file)
    assert h1.tls == UpstreamTlsContext(validation=validation, alpn_protocols=("http/1.1",))
    assert h2.tls == UpstreamTlsContext(
        sni="api.internal", validation=validation, alpn_protocols=("h2",)
    )
    assert auto.protocol == "auto"
    assert auto.tls is not None and auto.tls.alpn_protocols == ("h2", "http/1.1")
    assert auto.tls.certificate == TlsCertificate(cert_chain_file=cert, private_key_file=key)
    assert noverify.tls == UpstreamTlsContext(alpn_protocols=("http/1.1",))
    assert to_jsonable(m)["clusters"][1]["tls"]["sni"] == "api.internal"  # type: ignore[index]


def test_relative_paths_resolve_against_the_mesh_file(tmp_path: Path, pki: Pki) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("a.pem", "a.key"):
        (certs / name).write_bytes((pki.dir / name).read_bytes())
    mesh_file = tmp_path / "edge.py"
    mesh_file.write_text(
        textwrap.dedent(
            """
            from trioproxy.dsl import cluster, http, listener, mesh, prefix, tls

            MESH = mesh(
                listener("edge", ":8443").chain(
                    http().route(prefix("/"), cluster("s", "127.0.0.1:1")),
                    tls=tls("certs/a.pem", "certs/a.key"),
                )
            )
            """
        )
    )
    m = load_mesh(str(mesh_file))
    tls_ctx = m.listeners[0].filter_chains[0].tls
    assert tls_ctx is not None
    assert tls_ctx.certificates[0].cert_chain_file == str(certs / "a.pem")


# --------------------------------------------------------------------------- errors


def test_missing_and_mismatched_files(pki: Pki, tmp_path: Path) -> None:
    a_cert, _ = files(pki, "a")
    _, b_key = files(pki, "b")
    with pytest.raises(MeshError) as info:
        mesh(
            listener("edge", ":8443")
            .chain(http().route(prefix("/"), cluster("s", "127.0.0.1:1")),
                   tls=tls("/nope/cert.pem", "/nope/key.pem"), server_names=["a.test"])  # E:missing
            .chain(http("b").route(prefix("/"), "s"),
                   tls=tls(a_cert, b_key), server_names=["b.example.test"])  # E:mismatch
        ).compile()  # fmt: skip
    issues = info.value.issues
    assert [str(i.location) for i in issues] == [
        f"{HERE}:{line_of('# E:missing')}",
        f"{HERE}:{line_of('# E:missing')}",
        f"{HERE}:{line_of('# E:mismatch')}",
    ]
    assert issues[0].message == (
        "listener 'edge' chain 0: certificate file '/nope/cert.pem' not found (/nope/cert.pem)"
    )
    assert issues[1].message.startswith("listener 'edge' chain 0: key file '/nope/key.pem'")
    assert issues[2].message.startswith("listener 'edge' chain 1: cannot load certificate")
    assert "KEY_VALUES_MISMATCH" in issues[2].message


def test_bad_pem_and_bad_ca(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    _, key = files(pki, "a")
    msgs = errors(
        lambda: mesh(
            listener("l", ":0").chain(
                http().route(prefix("/"), cluster("s", "127.0.0.1:1")),
                tls=tls(str(junk), key, ca=str(junk)),
            )
        )
    )
    assert len(msgs) == 2
    assert msgs[0].startswith(f"listener 'l' chain 0: cannot load certificate '{junk}'")
    assert msgs[1].startswith(f"listener 'l' chain 0: cannot load CA file '{junk}'")


def test_tls_option_errors(pki: Pki) -> None:
    cert, key = files(pki, "a")
    msgs = errors(
        lambda: mesh(
            listener("l", ":0").chain(
                http().route(prefix("/"), cluster("s", "127.0.0.1:1")),
                tls=tls(cert, key, require_client_cert=True, san=["dns:x", "bogus", "ftp:x"],
                        alpn=["h2", ""], min_version="1.3", max_version="1.2"),
            )
        )
    )  # fmt: skip
    p = "listener 'l' chain 0: "
    assert sorted(msgs) == sorted(
        [
            p + "bad SAN 'bogus' (expected 'kind:value' with kind one of dns, uri, email, ip,"
            " or san(...))",
            p + "bad SAN 'ftp:x' (expected 'kind:value' with kind one of dns, uri, email, ip,"
            " or san(...))",
            p + "require_client_cert=True needs ca= to verify client certificates",
            p + "san= matching of client certificates needs ca=",
            p + "bad ALPN protocol name ''",
            p + "min_version '1.3' is above max_version '1.2'",
        ]
    )


def test_san_builder_errors(pki: Pki) -> None:
    cert, key = files(pki, "a")
    msgs = errors(
        lambda: mesh(
            listener("l", ":0").chain(
                http().route(prefix("/"), cluster("s", "127.0.0.1:1")),
                tls=tls(cert, key, ca=pki.ca_file, san=[
                    san("dns"), san("uri", regex="("), san("x400", exact="x"),
                    san("dns", exact="a", prefix="b")]),
            )
        )
    )  # fmt: skip
    assert msgs[0] == "san() takes exactly one of exact=, prefix=, suffix=, contains=, regex="
    assert msgs[1].startswith("bad SAN regex '(':")
    assert msgs[2] == "bad SAN kind 'x400' (expected dns, uri, email, ip)"
    assert msgs[3] == msgs[0]


def test_match_errors(pki: Pki) -> None:
    cert, key = files(pki, "a")
    msgs = errors(
        lambda: mesh(
            listener("l", ":0").chain(
                tcp_proxy(cluster("s", "127.0.0.1:1")),
                tls=tls(cert, key),
                server_names=["a.*.com", "ok.example.test", "ok.example.test"],
                source=["10.1.2.3/8", "nonsense"],
                transport="raw_buffer",
                destination_port=0,
            )
        )
    )
    p = "listener 'l' chain 0: "
    assert sorted(msgs) == sorted(
        [
            p + "a chain that terminates TLS cannot match transport 'raw_buffer'",
            p + "bad destination_port 0 (expected 1..65535)",
            p + "bad server name 'a.*.com' (a host name, optionally with one leading '*.'"
            " wildcard label such as '*.example.com')",
            p + "server name 'ok.example.test' repeated",
            p + "bad CIDR '10.1.2.3/8': 10.1.2.3/8 has host bits set (did you mean '10.0.0.0/8'?)",
            p + "bad CIDR 'nonsense': 'nonsense' does not appear to be an IPv4 or IPv6 network",
        ]
    )


def test_duplicate_matches(pki: Pki) -> None:
    cert, key = files(pki, "a")
    with pytest.raises(MeshError) as info:
        mesh(
            listener("l", ":0")
            .chain(http().route(prefix("/"), cluster("s", "127.0.0.1:1")),  # E:first
                   tls=tls(cert, key), server_names=["a.example.test"])
            .chain(http("two").route(prefix("/"), "s"),  # E:second
                   tls=tls(cert, key), server_names=["a.example.test"])
        ).compile()  # fmt: skip
    (issue,) = info.value.issues
    assert issue.location is not None and issue.location.line == line_of("# E:second")
    assert issue.message == (
        f"listener 'l': chain 1 has the same filter_chain_match as chain 0 at"
        f" {HERE}:{line_of('# E:first')} (give server_names=, alpn=, source= or transport="
        " to tell them apart)"
    )


def test_upstream_tls_errors(pki: Pki) -> None:
    msgs = errors(
        lambda: mesh(
            listener("l", ":0")
            .route(prefix("/1"), cluster("ip", "10.0.0.1:443").tls(ca=pki.ca_file))
            .route(prefix("/2"), cluster("nosni", "h:443").tls("bad name!", san=["dns:x"]))
            .route(prefix("/3"), cluster("auto", "h:443").auto_http())
            .route(prefix("/4"), cluster("h2", "h:443").tls(alpn=["http/1.1"]).http2())
            .route(prefix("/5"), cluster("cert", "h:443").tls(cert="/nope.pem"))
        )
    )
    assert sorted(msgs) == sorted(
        [
            "cluster 'ip' tls: cannot verify the certificate of 10.0.0.1 by name: give sni=,"
            " san=[...] or verify_hostname=False",
            "cluster 'nosni' tls: bad sni 'bad name!' (expected a host name)",
            "cluster 'nosni' tls: san= matching needs ca= to verify the upstream's certificate",
            "cluster 'auto': auto_http() picks the protocol by TLS ALPN, so it needs .tls(...)",
            "cluster 'h2' tls: an HTTP/2 cluster must offer ALPN 'h2'",
            "cluster 'cert' tls: a certificate needs both a cert and a key file",
        ]
    )


def test_tcp_proxy_errors() -> None:
    msgs = errors(
        lambda: mesh(
            listener("l", ":0")
            .chain(tcp_proxy("nope", max_connect_attempts=0, idle_timeout="soon"))
            .chain(tcp_proxy(42, stat_prefix=""), alpn=["h2"])  # type: ignore[arg-type]
        )
    )
    assert sorted(msgs) == sorted(
        [
            "unknown cluster 'nope'",
            "bad tcp_proxy() max_connect_attempts 0 (expected an integer 1..100)",
            "bad duration 'soon' for tcp_proxy() idle_timeout (expected seconds >= 0 or a"
            " string like '250ms', '2s', '1m')",
            "tcp_proxy() stat_prefix name must be a non-empty string, got ''",
            "tcp_proxy() needs a cluster, a cluster name or weighted(...), got int",
        ]
    )


def test_xfcc_option_errors() -> None:
    msgs = errors(
        lambda: mesh(
            listener("l", ":0").chain(
                http(forward_client_cert="sanitise", client_cert_details=["subject", "hash"]).route(  # type: ignore[arg-type,list-item]
                    prefix("/"), cluster("s", "127.0.0.1:1")
                )
            )
        )
    )
    assert msgs == [
        "unknown forward_client_cert 'sanitise' (did you mean 'sanitize'?)",
        "unknown client_cert_details item 'hash' (expected 'subject', 'cert', 'chain', 'dns'"
        " or 'uri')",
    ]


def test_builders_are_immutable_and_comparable(pki: Pki) -> None:
    cert, key = files(pki, "a")
    base = listener("l", ":0")
    one = base.chain(http(), tls=tls(cert, key))
    assert base._chains == ()
    assert one == base.chain(http(), tls=tls(cert, key))
    assert tls(cert, key) != tls(cert, key, ca=pki.ca_file)
    inspected = base.tls_inspector()
    assert inspected != base
    m = mesh(inspected.route(prefix("/"), cluster("s", "127.0.0.1:1"))).compile()
    assert m.listeners[0].listener_filters == (TlsInspector(),)
    # The implicit http() chain of .route() is a plaintext chain: raw_buffer.
    assert m.listeners[0].filter_chains[0].match.transport_protocol == "raw_buffer"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(max_size=30), max_size=4),
    st.lists(st.text(max_size=20), max_size=3),
    st.lists(
        st.one_of(
            st.text(max_size=20),
            st.builds(
                lambda ip, n: f"{ip}/{n}",
                st.ip_addresses(v=4),
                st.integers(min_value=0, max_value=33),
            ),
        ),
        max_size=3,
    ),
)
def test_chain_match_options_compile_or_report(
    names: list[str], alpn: list[str], source: list[str]
) -> None:
    """Any strings as match options either compile to a normalised match or
    are reported as issues with the `.chain(...)` call's location; nothing
    else escapes the compiler."""
    builder = mesh(
        listener("l", ":0").chain(
            tcp_proxy(cluster("s", "127.0.0.1:1")),
            server_names=names,
            alpn=alpn,
            source=source,
        )
    )
    try:
        m = builder.compile()
    except MeshError as exc:
        assert exc.issues
        assert all(i.location is not None and i.location.file == HERE for i in exc.issues)
        return
    match = m.listeners[0].filter_chains[0].match
    assert match.server_names == tuple(n.lower().rstrip(".") for n in names)
    assert all(n.startswith("*.") or "*" not in n for n in match.server_names)
    assert match.application_protocols == tuple(alpn)
    assert len(match.source_prefix_ranges) == len(source)
