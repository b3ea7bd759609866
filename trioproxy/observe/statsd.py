"""The StatsD sink (Envoy's `envoy.stat_sinks.statsd`, and with tags its
`dog_statsd`): at every stats flush, used counters as deltas (`name:N|c`),
used gauges (`name:N|g`) and each histogram value recorded since the last
flush as a timer (`name:V|ms`), all under a prefix (`envoy` by default).

`StatsdFormatter` is the sans-IO part: store in, lines and datagrams out.
`StatsdSink` sends them through a `DatagramSender`, which never waits: a
datagram that cannot be sent at once is dropped and counted
(`stats_sinks.statsd.datagrams_dropped`), so a dead or slow collector
never slows the proxy.
"""

from __future__ import annotations

from trioproxy.config import StatsdSink as StatsdSinkConfig
from trioproxy.net.network import DatagramSender
from trioproxy.observe.stats import StatsStore
from trioproxy.observe.tags import TagCache

__all__ = ["MAX_DATAGRAM_BYTES", "StatsdFormatter", "StatsdSink", "pack_lines"]

# Lines are batched into datagrams of at most this size (newline-separated,
# which StatsD servers and the Datadog agent accept). 1432 bytes keeps a
# datagram inside one Ethernet frame (1500 MTU - IPv6 40 - UDP 8 - slack),
# the size DogStatsD clients use by default. A single longer line is sent
# alone.
MAX_DATAGRAM_BYTES = 1432


def _tag_text(tags: tuple[tuple[str, str], ...]) -> str:
    return "|#" + ",".join(f"{k}:{v}" for k, v in tags) if tags else ""


class StatsdFormatter:
    """Builds one flush's lines; remembers counter values to send deltas."""

    def __init__(self, prefix: str = "envoy", *, tags: bool = False) -> None:
        self.prefix = prefix + "." if prefix else ""
        self.tags = tags
        self._tag_cache = TagCache()
        self._last: dict[str, int] = {}
        self._names: dict[str, tuple[str, str]] = {}  # stat name -> (name, tag suffix)

    def _name(self, stat: str) -> tuple[str, str]:
        got = self._names.get(stat)
        if got is None:
            if self.tags:
                t = self._tag_cache.get(stat)
                got = (self.prefix + t.name, _tag_text(t.tags))
            else:
                got = (self.prefix + stat, "")
            self._names[stat] = got
        return got

    def lines(self, store: StatsStore, samples: dict[str, list[float]]) -> list[str]:
        """This flush's lines; `samples` are the histogram values recorded
        since the last flush (`take_samples()`, taken once for all sinks)."""
        out: list[str] = []
        last = self._last
        for c in store.counters.values():
            if not c.used:
                continue
            before = last.get(c.name, 0)
            # After /reset_counters the value restarts below what was sent.
            delta = c.value - before if c.value >= before else c.value
            last[c.name] = c.value
            name, tags = self._name(c.name)
            out.append(f"{name}:{delta}|c{tags}")
        for g in store.gauges.values():
            if g.used:
                name, tags = self._name(g.name)
                out.append(f"{name}:{g.value}|g{tags}")
        for hname, values in samples.items():
            name, tags = self._name(hname)
            out.extend(f"{name}:{v:g}|ms{tags}" for v in values)
        return out


def pack_lines(lines: list[str], max_bytes: int = MAX_DATAGRAM_BYTES) -> list[bytes]:
    """Join lines with newlines into datagrams of at most `max_bytes`."""
    out: list[bytes] = []
    buf = bytearray()
    for line in lines:
        b = line.encode()
        if buf and len(buf) + 1 + len(b) > max_bytes:
            out.append(bytes(buf))
            buf.clear()
        if buf:
            buf += b"\n"
        buf += b
    if buf:
        out.append(bytes(buf))
    return out


class StatsdSink:
    """One configured StatsD sink; `flush()` is called by the server's
    stats flush loop (every `stats_flush_interval`, 5 s by default)."""

    def __init__(self, config: StatsdSinkConfig, store: StatsStore, sender: DatagramSender) -> None:
        self.config = config
        self._store = store
        self._sender = sender
        self._formatter = StatsdFormatter(config.prefix, tags=config.tags)
        store.keep_samples()
        self.sent = store.counter("stats_sinks.statsd.datagrams_sent")
        self.dropped = store.counter("stats_sinks.statsd.datagrams_dropped")

    def flush(self, samples: dict[str, list[float]]) -> None:
        sent = dropped = 0
        for datagram in pack_lines(self._formatter.lines(self._store, samples)):
            if self._sender.send_nowait(datagram):
                sent += 1
            else:
                dropped += 1
        self.sent.inc(sent)
        if dropped:
            self.dropped.inc(dropped)

    def close(self) -> None:
        self._sender.close()
