"""Discovery tasks: they keep a DNS or EDS-file cluster's host set current.

Each runs in the cluster manager's nursery (cancelled with it on drain and
shutdown), registers by cluster type in `DISCOVERY`, reports `started` after
its first attempt (answered or failed) so the server listens only once the
clusters have warmed, and applies every new host set through
`ClusterRuntime.set_endpoints` — the one path static clusters take too.

- strict_dns: every refresh resolves each endpoint's name (`net.dns`); every
  address is a host on that endpoint's port. A name whose lookup fails keeps
  its last addresses.
- logical_dns: one name; the first address is the one host, so each new
  connection goes to the address the last refresh found.
- eds (file): polls the file's (mtime, inode, size, device) every
  `watch_interval` and re-reads it when they change, so both an atomic
  rename (os.replace) and an in-place rewrite are seen. A file that changed
  while it was read is read again on the next poll; a malformed one is
  rejected (logged with the file and the problem, `update_rejected`) and
  the last good endpoints stay.

Stats (Envoy's names): `cluster.<name>.update_attempt`, `update_success`,
`update_failure`, `update_rejected`, `update_empty`, `update_no_rebuild`,
`membership_change`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from trioproxy.config import DnsDiscovery, Endpoint
from trioproxy.net.dns import DnsFailure, DnsResolver
from trioproxy.upstream.eds import EdsError, parse_load_assignment
from trioproxy.upstream.membership import RefreshSchedule, dns_endpoints

if TYPE_CHECKING:
    from trioproxy.upstream.cluster_manager import ClusterRuntime

__all__ = ["DISCOVERY", "run_dns_discovery", "run_eds_file"]

log = logging.getLogger("trioproxy.discovery")

Discovery = Callable[..., Awaitable[None]]


async def run_dns_discovery(
    cluster: ClusterRuntime,
    rng: random.Random,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Resolve a strict_dns / logical_dns cluster's names until cancelled."""
    cfg = cluster.config.dns or DnsDiscovery()  # a hand-built graph may leave it out
    stats = cluster.discovery
    assert stats is not None
    # (Without resolvers it reads /etc/resolv.conf: off the event loop.)
    resolver = await trio.to_thread.run_sync(
        lambda: DnsResolver(cfg.resolvers, timeout=cfg.timeout)
    )
    schedule = RefreshSchedule(cfg, rng)
    targets = cluster.config.endpoints
    logical = cluster.config.type == "logical_dns"
    # The last good addresses per target: a failed lookup keeps them.
    last: list[tuple[str, ...]] = [() for _ in targets]
    started = False
    was_failing = False
    while True:
        failed = False
        ttls: list[float] = []
        for i, target in enumerate(targets):
            name = target.address.host
            stats.update_attempt.inc()
            try:
                answer = await resolver.resolve(name, cfg.lookup_family)
            except DnsFailure as exc:
                failed = True
                stats.update_failure.inc()
                # Once per outage, not once per refresh.
                log.log(
                    logging.DEBUG if was_failing else logging.WARNING,
                    "cluster %r: DNS lookup failed, keeping its hosts: %s",
                    cluster.name,
                    exc,
                )
                continue
            stats.update_success.inc()
            if answer.ttl is not None:
                ttls.append(answer.ttl)
            last[i] = answer.addresses
        if logical:  # one target (the compiler checks); its first address
            endpoints: tuple[Endpoint, ...] = dns_endpoints(targets[:1], [a[:1] for a in last[:1]])
        else:
            endpoints = dns_endpoints(targets, last)
        if not cluster.set_endpoints(endpoints):
            stats.update_no_rebuild.inc()
        if was_failing and not failed:
            log.info("cluster %r: DNS lookups answer again", cluster.name)
        was_failing = failed
        if not started:
            started = True
            task_status.started()
        delay = (
            schedule.after_failure() if failed else schedule.after_success(min(ttls, default=None))
        )
        await trio.sleep(delay)


def _signature(st: Any) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_ino, st.st_size, st.st_dev)


async def run_eds_file(
    cluster: ClusterRuntime,
    rng: random.Random,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply the cluster's EDS file whenever it changes, until cancelled."""
    src = cluster.config.eds_file
    stats = cluster.discovery
    assert src is not None and stats is not None
    path = trio.Path(src.path)
    seen: tuple[int, int, int, int] | None = None
    missing_logged = False
    started = False
    while True:
        try:
            sig = _signature(await path.stat())
        except OSError as exc:
            if not missing_logged:
                stats.update_failure.inc()
                log.error("cluster %r: cannot read %s: %s", cluster.name, src.path, exc)
                missing_logged = True
            sig = None
        if sig is not None and sig != seen:
            missing_logged = False
            try:
                data = await path.read_bytes()
                after = _signature(await path.stat())
            except OSError as exc:
                stats.update_failure.inc()
                log.error("cluster %r: cannot read %s: %s", cluster.name, src.path, exc)
            else:
                if after == sig:  # else: written while we read; again next poll
                    seen = sig
                    _apply(cluster, data, src.path)
        if not started:
            started = True
            task_status.started()
        await trio.sleep(src.watch_interval)


def _apply(cluster: ClusterRuntime, data: bytes, path: str) -> None:
    stats = cluster.discovery
    assert stats is not None
    stats.update_attempt.inc()
    try:
        endpoints = parse_load_assignment(data, path, cluster.name)
    except EdsError as exc:
        stats.update_rejected.inc()
        log.error(
            "cluster %r: rejected endpoints, keeping the last good ones: %s", cluster.name, exc
        )
        return
    stats.update_success.inc()
    if not endpoints:
        stats.update_empty.inc()
    if not cluster.set_endpoints(endpoints):
        stats.update_no_rebuild.inc()
    log.info("cluster %r: %d endpoint(s) from %s", cluster.name, len(endpoints), path)


# The discovery task of each cluster type (static clusters have none).
DISCOVERY: dict[str, Discovery] = {
    "strict_dns": run_dns_discovery,
    "logical_dns": run_dns_discovery,
    "eds": run_eds_file,
}
