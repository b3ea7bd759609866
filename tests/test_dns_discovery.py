"""DNS discovery (strict_dns, logical_dns): the refresh schedule and host-set
diffs as pure logic, then the proxy against a real dnsmasq on 127.0.0.1 and
real HTTP upstreams on 127.0.0.2, .3, .4 (Linux routes all of 127/8 to lo).

dnsmasq serves the names of a hosts file (`--addn-hosts`) and re-reads it
on SIGHUP; a name it does not know is answered REFUSED (`--no-resolv`),
which the proxy counts as a failed lookup (the cluster keeps its hosts).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from trioproxy.dsl import MeshError, admin, cluster, listener, mesh, prefix

from tests.conftest import counter, gauge, require_tool, start_proxy, wait_until
from tests.tls_certs import Pki
from tests.tls_upstreams import TlsUpstream
from tests.upstream import Upstream
from trioproxy.config import DnsDiscovery, Endpoint, SocketAddress
from trioproxy.net.dns import DnsFailure, DnsResolver
from trioproxy.runtime.server import Server
from trioproxy.upstream.membership import RefreshSchedule, diff_endpoints, dns_endpoints

# ------------------------------------------------------------------ pure logic


def ep(text: str, weight: int = 1, priority: int = 0) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(
        address=SocketAddress(host=host, port=int(port)), weight=weight, priority=priority
    )


def test_diff_by_address() -> None:
    old = [ep("10.0.0.1:80"), ep("10.0.0.2:80")]
    new = [ep("10.0.0.2:80", weight=5), ep("10.0.0.3:80"), ep("10.0.0.3:80")]
    d = diff_endpoints(old, new)
    assert d.added == (ep("10.0.0.3:80"),)
    assert d.removed == (SocketAddress(host="10.0.0.1", port=80),)
    assert d.updated == (ep("10.0.0.2:80", weight=5),)
    assert d.membership_changed
    # The same set in another order (DNS round robin) is no change at all.
    same = diff_endpoints(old, list(reversed(old)))
    assert not same and not same.membership_changed


_endpoints = st.lists(
    st.builds(
        lambda last, port, weight: ep(f"10.0.0.{last}:{port}", weight=weight),
        st.integers(1, 6),
        st.sampled_from([80, 81]),
        st.integers(1, 3),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(old=_endpoints, new=_endpoints)
def test_a_diff_turns_the_old_set_into_the_new(old: list[Endpoint], new: list[Endpoint]) -> None:
    d = diff_endpoints(old, new)
    first_old = {e.address: e for e in reversed(old)}  # the first listing wins
    first_new = {e.address: e for e in reversed(new)}
    applied = {a: e for a, e in first_old.items() if a not in set(d.removed)}
    applied.update({e.address: e for e in d.added + d.updated})
    assert applied == first_new
    assert not set(d.removed) & set(first_new)
    assert bool(d) == (first_old != first_new)


def test_dns_answers_become_hosts_on_the_targets_port() -> None:
    targets = [ep("a.test:8080", weight=2), ep("b.test:9090", priority=1)]
    hosts = dns_endpoints(targets, [("10.0.0.1", "10.0.0.2"), ("10.0.0.1",)])
    assert [(str(h.address), h.weight, h.priority, h.hostname) for h in hosts] == [
        ("10.0.0.1:8080", 2, 0, "a.test"),
        ("10.0.0.2:8080", 2, 0, "a.test"),
        ("10.0.0.1:9090", 1, 1, "b.test"),
    ]


def test_refresh_rate_and_ttl() -> None:
    rng = random.Random(1)
    s = RefreshSchedule(DnsDiscovery(), rng)
    assert s.after_success(30.0) == 5.0  # Envoy's default; TTL ignored
    assert s.after_failure() == 5.0  # no failure rate: the refresh rate
    s = RefreshSchedule(DnsDiscovery(refresh_rate=60.0, respect_dns_ttl=True), rng)
    assert s.after_success(7.0) == 7.0
    assert s.after_success(0.0) == 60.0  # a TTL of 0 keeps the refresh rate
    assert s.after_success(None) == 60.0


def test_failure_back_off_doubles_to_the_max_and_resets() -> None:
    cfg = DnsDiscovery(refresh_rate=5.0, failure_refresh_base=1.0, failure_refresh_max=8.0)
    s = RefreshSchedule(cfg, random.Random(7))
    # Each delay is drawn from [0, b) with b = 1, 2, 4, 8, 8, ...
    bounds = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [s.after_failure() for _ in bounds]
    assert all(0 <= d < b for d, b in zip(delays, bounds, strict=True))
    assert max(delays[3:]) > 2.0  # the window did grow
    assert s.after_success(None) == 5.0
    assert s.after_failure() < 1.0  # back to the base
    # Unset max: 10 x base, as Envoy.
    s = RefreshSchedule(DnsDiscovery(failure_refresh_base=0.5), random.Random(3))
    assert max(s.after_failure() for _ in range(40)) <= 5.0


# ------------------------------------------------------------------ DSL


def _errors(m: Any) -> list[str]:
    with pytest.raises(MeshError) as info:
        m.compile()
    return [i.message for i in info.value.issues]


def _lines(m: Any) -> list[int]:
    with pytest.raises(MeshError) as info:
        m.compile()
    return [i.location.line for i in info.value.issues if i.location is not None]


def test_dsl_dns_cluster() -> None:
    c = cluster(
        "svc",
        "svc.test:8080",
        type="strict_dns",
        dns_refresh_rate="200ms",
        dns_failure_refresh_rate=("1s", "4s"),
        respect_dns_ttl=True,
        dns_lookup_family="V4_ONLY",
        dns_resolvers=["127.0.0.1:5353", "::1"],
    )
    (built,) = mesh(listener("l", ":0").route(prefix("/"), c)).compile().clusters
    assert built.type == "strict_dns"
    assert built.endpoints == (ep("svc.test:8080"),)
    assert built.dns == DnsDiscovery(
        refresh_rate=0.2,
        failure_refresh_base=1.0,
        failure_refresh_max=4.0,
        respect_dns_ttl=True,
        lookup_family="V4_ONLY",
        resolvers=(SocketAddress(host="127.0.0.1", port=5353), SocketAddress(host="::1", port=53)),
    )
    # Unsaid type: a DNS name makes it strict_dns with Envoy's defaults; IPs static.
    (inferred,) = (
        mesh(listener("l", ":0").route(prefix("/"), cluster("a", "a.test:80"))).compile().clusters
    )
    assert inferred.type == "strict_dns" and inferred.dns == DnsDiscovery()
    (static,) = (
        mesh(listener("l", ":0").route(prefix("/"), cluster("b", "10.0.0.1:80"))).compile().clusters
    )
    assert static.type == "static" and static.dns is None


def test_dsl_dns_errors_name_the_line() -> None:
    here = test_dsl_dns_errors_name_the_line.__code__.co_firstlineno
    m = mesh(
        listener("l", ":0")
        .route(prefix("/a"), cluster("a", "a.test:80", type="static"))
        .route(prefix("/b"), cluster("b", "b.test:80", dns_lookup_family="V5_ONLY"))  # type: ignore[arg-type]
        .route(prefix("/c"), cluster("c", "10.0.0.1:80", dns_refresh_rate=1))
        .route(prefix("/d"), cluster("d", "a.test:80", "b.test:80", type="logical_dns"))
        .route(prefix("/e"), cluster("e", "e.test:80", dns_resolvers=["ns.test:53"]))
        .route(prefix("/f"), cluster("f", "f.test:80", dns_refresh_rate=0))
    )
    errors = _errors(m)
    assert errors == [
        "cluster 'a': endpoint a.test:80 is a DNS name, but a static cluster takes IP"
        " addresses (use type='strict_dns' or type='logical_dns')",
        "unknown dns_lookup_family 'V5_ONLY' (did you mean 'V6_ONLY'?)",
        "cluster 'c': DNS options (dns_refresh_rate) apply only to strict_dns and"
        " logical_dns clusters (this one is static)",
        "cluster 'd': a logical_dns cluster takes exactly one endpoint",
        "bad nameserver 'ns.test:53' in dns_resolvers of cluster 'e' (expected 'ip:port')",
        "dns_refresh_rate of cluster 'f' must be greater than 0",
    ]
    assert _lines(m) == [here + i for i in (4, 5, 6, 7, 8, 9)]


# ------------------------------------------------------------------ dnsmasq


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


class Dnsmasq:
    """A real dnsmasq serving `names` from a hosts file it re-reads on SIGHUP."""

    def __init__(self, binary: str, directory: Path, *, local_ttl: int = 0) -> None:
        self.port = _free_port()
        self._ready = False
        self.hosts = directory / "hosts"
        self.hosts.write_text("")
        self.proc = subprocess.Popen(
            [
                binary,
                "--no-daemon",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={self.hosts}",
                f"--local-ttl={local_ttl}",
                "--pid-file=",
                # As root it would switch to nobody, who cannot read tmp_path.
                *(["--user=root"] if os.geteuid() == 0 else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def ready(self) -> None:
        """Until dnsmasq answers at all (a SIGHUP before it installed its
        handler would kill it)."""
        query = dns.message.make_query("ready.test", "A")
        with trio.fail_after(10):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"dnsmasq exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
                try:
                    await dns.asyncquery.udp(query, "127.0.0.1", timeout=0.2, port=self.port)
                except (dns.exception.Timeout, OSError):
                    continue
                self._ready = True
                return

    async def set(self, records: dict[str, list[str]]) -> None:
        """Rewrite the hosts file and have dnsmasq re-read it."""
        if not self._ready:
            await self.ready()
        lines = [f"{ip} {name}" for name, ips in records.items() for ip in ips]
        self.hosts.write_text("".join(line + "\n" for line in lines))
        self.proc.send_signal(signal.SIGHUP)

    async def wait_answers(self, name: str, expected: set[str]) -> None:
        """Until dnsmasq answers `name` with `expected` (bounded)."""
        resolver = DnsResolver([SocketAddress(host="127.0.0.1", port=self.port)], timeout=0.5)
        got: set[str] | str = set()
        with trio.move_on_after(10):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"dnsmasq exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
                try:
                    got = set((await resolver.resolve(name, "V4_ONLY")).addresses)
                except DnsFailure as exc:
                    got = str(exc)
                if got == expected:
                    return
                await trio.sleep(0.02)
        raise AssertionError(f"dnsmasq answers {got!r} for {name}, not {expected!r}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    binary = require_tool("dnsmasq")
    d = Dnsmasq(binary, tmp_path)
    yield d
    d.stop()


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    """HTTP upstreams on 127.0.0.2, .3 and .4, all on the same port."""
    async with trio.open_nursery() as n:
        first = await n.start(Upstream("u2", "127.0.0.2").run)
        ups = [first]
        for host in ("127.0.0.3", "127.0.0.4"):
            ups.append(await n.start(Upstream(f"u{host[-1]}", host, first.port).run))
        yield ups
        n.cancel_scope.cancel()


def _dns_mesh(dns: Dnsmasq, port: int, **options: Any) -> Any:
    svc = cluster(
        "svc",
        f"svc.test:{port}",
        dns_refresh_rate=options.pop("dns_refresh_rate", 0.2),
        dns_resolvers=[dns.address],
        dns_lookup_family="V4_ONLY",
        **options,
    )
    return mesh(
        listener("ingress", "127.0.0.1:0").route(prefix("/"), svc), admin("127.0.0.1:0")
    ).compile()


async def _servers_seen(client: httpx.AsyncClient, server: Server, n: int = 12) -> set[str]:
    port = server.listener_address("ingress").port
    seen = set()
    for _ in range(n):
        r = await client.get(f"http://127.0.0.1:{port}/")
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-upstream"])
    return seen


async def _admin_hosts(client: httpx.AsyncClient, server: Server) -> set[str]:
    assert server.admin_bound is not None
    r = await client.get(f"http://127.0.0.1:{server.admin_bound.port}/clusters")
    assert r.status_code == 200
    return {
        line.split("::")[1]
        for line in r.text.splitlines()
        if line.startswith("svc::") and line.endswith("::weight::1")
    }


async def test_strict_dns_hosts_join_and_leave(dnsmasq: Dnsmasq, upstreams: list[Upstream]) -> None:
    port = upstreams[0].port
    await dnsmasq.set({"svc.test": ["127.0.0.2", "127.0.0.3"]})
    await dnsmasq.wait_answers("svc.test", {"127.0.0.2", "127.0.0.3"})
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        server = await start_proxy(n, _dns_mesh(dnsmasq, port))
        # The first lookup happened before the listener opened.
        assert gauge(server, "cluster.svc.membership_total") == 2
        assert await _admin_hosts(client, server) == {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}
        assert await _servers_seen(client, server) == {"u2", "u3"}
        assert server.admin_bound is not None
        text = (await client.get(f"http://127.0.0.1:{server.admin_bound.port}/clusters")).text
        assert f"svc::127.0.0.2:{port}::hostname::svc.test" in text.splitlines()

        # A host joins: within a refresh (0.2 s) it is in /clusters and gets traffic.
        await dnsmasq.set({"svc.test": ["127.0.0.2", "127.0.0.3", "127.0.0.4"]})

        async def three() -> bool:
            return len(await _admin_hosts(client, server)) == 3

        await wait_until(three, "127.0.0.4 to join")
        assert await _servers_seen(client, server) == {"u2", "u3", "u4"}
        assert gauge(server, "cluster.svc.membership_total") == 3
        assert gauge(server, "cluster.svc.membership_healthy") == 3

        # Two leave: no more traffic to them.
        await dnsmasq.set({"svc.test": ["127.0.0.4"]})

        async def one() -> bool:
            return await _admin_hosts(client, server) == {f"127.0.0.4:{port}"}

        await wait_until(one, "127.0.0.2 and .3 to leave")
        before = len(upstreams[0].requests) + len(upstreams[1].requests)
        assert await _servers_seen(client, server) == {"u4"}
        assert len(upstreams[0].requests) + len(upstreams[1].requests) == before
        assert counter(server, "cluster.svc.membership_change") == 3
        assert counter(server, "cluster.svc.update_success") >= 3
        assert counter(server, "cluster.svc.update_failure") == 0

        # The name disappears (dnsmasq refuses it): a failure, the last hosts stay.
        failures = counter(server, "cluster.svc.update_failure")
        await dnsmasq.set({})

        async def failed() -> bool:
            return counter(server, "cluster.svc.update_failure") >= failures + 2

        await wait_until(failed, "failed lookups")
        assert await _admin_hosts(client, server) == {f"127.0.0.4:{port}"}
        assert await _servers_seen(client, server, 3) == {"u4"}
        n.cancel_scope.cancel()


async def test_logical_dns_uses_the_first_address(
    dnsmasq: Dnsmasq, upstreams: list[Upstream]
) -> None:
    port = upstreams[0].port
    await dnsmasq.set({"svc.test": ["127.0.0.3"]})
    await dnsmasq.wait_answers("svc.test", {"127.0.0.3"})
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        server = await start_proxy(n, _dns_mesh(dnsmasq, port, type="logical_dns"))
        assert await _servers_seen(client, server, 4) == {"u3"}
        assert await _admin_hosts(client, server) == {f"127.0.0.3:{port}"}
        await dnsmasq.set({"svc.test": ["127.0.0.4"]})

        async def moved() -> bool:
            return await _admin_hosts(client, server) == {f"127.0.0.4:{port}"}

        await wait_until(moved, "the logical host to move")
        # New connections go to the new address (the client opens new ones).
        async with httpx.AsyncClient() as fresh:
            assert await _servers_seen(fresh, server, 4) == {"u4"}
        assert gauge(server, "cluster.svc.membership_total") == 1
        n.cancel_scope.cancel()


async def test_respect_dns_ttl(tmp_path: Path, upstreams: list[Upstream]) -> None:
    """With respect_dns_ttl the records' TTL (1 s) replaces a 60 s refresh rate."""
    d = Dnsmasq(require_tool("dnsmasq"), tmp_path, local_ttl=1)
    try:
        port = upstreams[0].port
        await d.set({"svc.test": ["127.0.0.2"]})
        await d.wait_answers("svc.test", {"127.0.0.2"})
        m = _dns_mesh(d, port, dns_refresh_rate=60, respect_dns_ttl=True)
        async with trio.open_nursery() as n, httpx.AsyncClient() as client:
            server = await start_proxy(n, m)
            assert await _servers_seen(client, server, 2) == {"u2"}
            await d.set({"svc.test": ["127.0.0.3"]})

            async def moved() -> bool:
                return await _admin_hosts(client, server) == {f"127.0.0.3:{port}"}

            await wait_until(moved, "a refresh after the TTL", timeout=5.0)
            n.cancel_scope.cancel()
    finally:
        d.stop()


async def test_health_checks_follow_membership(dnsmasq: Dnsmasq, upstreams: list[Upstream]) -> None:
    """A joining host is checked (and out until its first check passes); a
    host that leaves is no longer checked."""
    port = upstreams[0].port
    await dnsmasq.set({"svc.test": ["127.0.0.2"]})
    await dnsmasq.wait_answers("svc.test", {"127.0.0.2"})
    svc = cluster(
        "svc",
        f"svc.test:{port}",
        dns_refresh_rate=0.2,
        dns_resolvers=[dnsmasq.address],
        dns_lookup_family="V4_ONLY",
    ).health_check("/healthz", interval=0.1, no_traffic_interval=0.1)
    m = mesh(listener("ingress", "127.0.0.1:0").route(prefix("/"), svc), admin("127.0.0.1:0"))
    async with trio.open_nursery() as n:
        server = await start_proxy(n, m.compile())
        runtime = server.clusters.get("svc")
        assert runtime is not None
        (old,) = runtime.hosts
        assert old.hc_scope is not None and not old.hc_scope.cancel_called
        await dnsmasq.set({"svc.test": ["127.0.0.3"]})

        async def checked() -> bool:
            return any(r["path"] == "/healthz" for r in upstreams[1].requests) and (
                gauge(server, "cluster.svc.membership_healthy") == 1
                and gauge(server, "cluster.svc.membership_total") == 1
            )

        await wait_until(checked, "127.0.0.3 to be checked")
        # The host that left has its checker cancelled.
        assert old.hc_scope.cancel_called
        (new,) = runtime.hosts
        assert new.address == f"127.0.0.3:{port}" and new.healthy
        n.cancel_scope.cancel()


# ------------------------------------------------------------------ MockClock


async def test_refresh_loop_runs_every_refresh_rate(autojump_clock: trio.testing.MockClock) -> None:
    """IP literals resolve without a query, so the loop's timing alone is seen."""
    svc = cluster("svc", "127.0.0.2:80", "127.0.0.3:80", type="strict_dns", dns_refresh_rate=2)
    m = mesh(listener("ingress", "127.0.0.1:0").route(prefix("/"), svc)).compile()
    async with trio.open_nursery() as n:
        server = await start_proxy(n, m)
        start = trio.current_time()
        # One attempt per name before listening, then one per name every 2 s.
        assert counter(server, "cluster.svc.update_attempt") == 2
        assert gauge(server, "cluster.svc.membership_total") == 2
        await trio.sleep_until(start + 9.9)
        assert counter(server, "cluster.svc.update_attempt") == 2 * 5
        assert counter(server, "cluster.svc.update_success") == 2 * 5
        # Nothing changed after the first answer: no rebuilds, one membership change.
        assert counter(server, "cluster.svc.update_no_rebuild") == 4
        assert counter(server, "cluster.svc.membership_change") == 1
        n.cancel_scope.cancel()


async def test_lookup_families_against_dnsmasq(dnsmasq: Dnsmasq) -> None:
    """Envoy's families on a real server (dnsmasq refuses a family it has no
    record of, so AUTO / V4_PREFERRED fall back and ALL fails)."""
    await dnsmasq.set(
        {"v4.test": ["127.0.0.2"], "v6.test": ["::1"], "both.test": ["127.0.0.3", "::2"]}
    )
    await dnsmasq.wait_answers("v4.test", {"127.0.0.2"})
    r = DnsResolver([SocketAddress(host="127.0.0.1", port=dnsmasq.port)], timeout=2.0)

    async def addresses(name: str, family: Any) -> tuple[str, ...] | str:
        try:
            return (await r.resolve(name, family)).addresses
        except DnsFailure:
            return "failure"

    assert await addresses("v4.test", "AUTO") == ("127.0.0.2",)  # AAAA refused: A
    assert await addresses("v6.test", "AUTO") == ("::1",)
    assert await addresses("both.test", "AUTO") == ("::2",)  # IPv6 first
    assert await addresses("both.test", "V4_PREFERRED") == ("127.0.0.3",)
    assert await addresses("v6.test", "V4_PREFERRED") == ("::1",)
    assert await addresses("both.test", "ALL") == ("127.0.0.3", "::2")
    assert await addresses("v4.test", "ALL") == "failure"  # the AAAA query was refused
    assert await addresses("v6.test", "V4_ONLY") == "failure"
    assert await addresses("nope.test", "V4_ONLY") == "failure"
    # IP literals need no query; a literal of the wrong family gives nothing.
    assert await addresses("127.0.0.9", "V4_ONLY") == ("127.0.0.9",)
    assert await addresses("::1", "V4_ONLY") == ()


async def test_tls_to_dns_hosts_presents_and_verifies_the_name(
    dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    """Hosts are dialled by address; TLS still sends (and verifies) the DNS name."""
    pki = Pki(tmp_path / "ca")
    leaf = pki.issue("svc.test")
    async with trio.open_nursery() as n, httpx.AsyncClient() as client:
        up = await n.start(TlsUpstream("tls", leaf.cert, leaf.key).run)
        await dnsmasq.set({"svc.test": ["127.0.0.1"]})
        await dnsmasq.wait_answers("svc.test", {"127.0.0.1"})
        svc = cluster(
            "svc",
            f"svc.test:{up.port}",
            dns_resolvers=[dnsmasq.address],
            dns_lookup_family="V4_ONLY",
        ).tls(ca=pki.ca_file)
        m = mesh(listener("ingress", "127.0.0.1:0").route(prefix("/"), svc)).compile()
        server = await start_proxy(n, m)
        assert await _servers_seen(client, server, 2) == {"tls"}
        assert up.server_names and set(up.server_names) == {"svc.test"}
        n.cancel_scope.cancel()
