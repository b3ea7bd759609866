"""The admin's live dashboard: `GET /` (one self-contained HTML page, no
build step, no external URL) fed by `GET /events` (server-sent events, one
JSON snapshot a second).

`snapshot(server)` reads what the admin's other endpoints read (listeners,
clusters and their hosts, Envoy's counters and histograms); the page turns
consecutive snapshots into rates, so the server keeps no extra state and the
request path pays nothing for the dashboard.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trioproxy.runtime.server import Server

__all__ = ["PAGE", "event_stream", "snapshot"]

# Envoy's response flags and the counters that count them (summed over
# clusters / connection managers). A request can raise more than one.
FLAG_COUNTERS: dict[str, str] = {
    "UF": ".upstream_cx_connect_fail",
    "UH": ".upstream_cx_none_healthy",
    "UT": ".upstream_rq_timeout",
    "UO": ".upstream_rq_pending_overflow",
    "NR": ".no_route",
}

_QUANTILES = ((0.5, "P50"), (0.9, "P90"), (0.99, "P99"))


def _latency(server: Server, name: str) -> dict[str, float | None]:
    h = server.stats.histograms.get(name)
    if h is None or h.count == 0:
        return {label: None for _, label in _QUANTILES}
    return {label: h.quantile(q) for q, label in _QUANTILES}


def _count(server: Server, name: str) -> int:
    c = server.stats.counters.get(name)
    return c.value if c is not None else 0


def snapshot(server: Server) -> dict[str, Any]:
    """One JSON-ready view of the server for the dashboard."""
    clusters = []
    for name, c in server.clusters.clusters.items():
        p = f"cluster.{name}."
        clusters.append(
            {
                "name": name,
                "rq_total": _count(server, p + "upstream_rq_total"),
                "rq_5xx": _count(server, p + "upstream_rq_5xx"),
                "latency_ms": _latency(server, p + "upstream_rq_time"),
                "hosts": [
                    {
                        "address": h.address,
                        "healthy": bool(h.healthy and not h.outlier_ejected),
                        "rq_total": h.rq_total,
                        "rq_active": h.active_requests,
                    }
                    for h in c.hosts
                ],
            }
        )
    suffix = ".downstream_rq_total"
    http = sorted(
        n[len("http.") : -len(suffix)]
        for n in server.stats.counters
        if n.startswith("http.") and n.endswith(suffix)
    )
    return {
        "time": time.time(),
        "version": server.version,
        "state": server.state,
        "listeners": [
            {"name": name, "address": str(lr.bound) if lr.bound is not None else "-"}
            for name, lr in server.listeners.items()
        ],
        "http": [
            {
                "stat_prefix": p,
                "rq_total": _count(server, f"http.{p}.downstream_rq_total"),
                "rq_5xx": _count(server, f"http.{p}.downstream_rq_5xx"),
                "latency_ms": _latency(server, f"http.{p}.downstream_rq_time"),
            }
            for p in http
        ],
        "clusters": clusters,
        "errors_by_flag": {
            flag: sum(c.value for n, c in server.stats.counters.items() if n.endswith(suffix))
            for flag, suffix in FLAG_COUNTERS.items()
        },
    }


async def event_stream(
    server: Server, interval: float = 1.0, count: int | None = None
) -> AsyncIterator[bytes]:
    """Server-sent events: a snapshot now, then one every `interval` seconds
    (`count` of them, or until the client goes away)."""
    sent = 0
    yield b"retry: 2000\n\n"
    while count is None or sent < count:
        data = json.dumps(snapshot(server), separators=(",", ":"))
        yield f"event: snapshot\ndata: {data}\n\n".encode()
        sent += 1
        if count is not None and sent >= count:
            return
        await trio.sleep(interval)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>trioproxy dashboard</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.ok{color:#080}.bad{color:#b00;font-weight:bold}#status{color:#666}
</style></head><body>
<h1>trioproxy <span id="version"></span> — <span id="state">connecting…</span></h1>
<p id="status">waiting for /events</p>
<h2>Listeners</h2><table id="listeners"><tr><th>name</th><th>address</th></tr></table>
<h2>HTTP connection managers</h2>
<table id="http"><tr><th>stat prefix</th><th>requests</th><th>req/s</th><th>5xx</th>
<th>P50 ms</th><th>P90 ms</th><th>P99 ms</th></tr></table>
<h2>Clusters</h2>
<table id="clusters"><tr><th>cluster</th><th>requests</th><th>req/s</th><th>5xx</th>
<th>P50 ms</th><th>P90 ms</th><th>P99 ms</th><th>hosts</th></tr></table>
<h2>Errors by response flag</h2>
<table id="flags"><tr><th>flag</th><th>total</th><th>last second</th></tr></table>
<p><a href="/help">admin endpoints</a> · <a href="/stats">/stats</a> ·
<a href="/clusters">/clusters</a> · <a href="/explain">/explain</a></p>
<script>
"use strict";
let prev = null;
const ENT={"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"};
function esc(s){return String(s).replace(/[&<>"]/g,c=>ENT[c]);}
function ms(v){return v===null||v===undefined?"-":(+v).toFixed(1);}
function rate(now, before, dt){return before===undefined||dt<=0?"-":((now-before)/dt).toFixed(1);}
function fill(id, rows){
  const t=document.getElementById(id);
  while(t.rows.length>1)t.deleteRow(1);
  for(const r of rows){const tr=t.insertRow();tr.innerHTML=r;}
}
function render(s){
  const dt=prev?s.time-prev.time:0;
  const pc=prev?Object.fromEntries(prev.clusters.map(c=>[c.name,c])):{};
  const ph=prev?Object.fromEntries(prev.http.map(h=>[h.stat_prefix,h])):{};
  document.getElementById("version").textContent=s.version;
  document.getElementById("state").textContent=s.state;
  document.getElementById("status").textContent="updated "+new Date(s.time*1000).toISOString();
  fill("listeners", s.listeners.map(l=>`<td>${esc(l.name)}</td><td>${esc(l.address)}</td>`));
  fill("http", s.http.map(h=>`<td>${esc(h.stat_prefix)}</td><td class="rq">${h.rq_total}</td>`+
    `<td>${rate(h.rq_total,(ph[h.stat_prefix]||{}).rq_total,dt)}</td><td>${h.rq_5xx}</td>`+
    `<td>${ms(h.latency_ms.P50)}</td><td>${ms(h.latency_ms.P90)}</td><td>${ms(h.latency_ms.P99)}</td>`));
  fill("clusters", s.clusters.map(c=>{
    const before=pc[c.name]||{hosts:[]};
    const hb=Object.fromEntries(before.hosts.map(h=>[h.address,h]));
    const hosts=c.hosts.map(h=>`<span class="${h.healthy?"ok":"bad"}">${esc(h.address)} `+
      `${h.healthy?"healthy":"UNHEALTHY"} `+
      `${rate(h.rq_total,(hb[h.address]||{}).rq_total,dt)} req/s</span>`).join("<br>");
    return `<td class="cluster">${esc(c.name)}</td>`+
      `<td class="rq" data-cluster="${esc(c.name)}">${c.rq_total}</td>`+
      `<td>${rate(c.rq_total,before.rq_total,dt)}</td><td>${c.rq_5xx}</td><td>${ms(c.latency_ms.P50)}</td>`+
      `<td>${ms(c.latency_ms.P90)}</td><td>${ms(c.latency_ms.P99)}</td><td>${hosts}</td>`;}));
  fill("flags", Object.entries(s.errors_by_flag).map(([f,n])=>`<td>${f}</td><td>${n}</td>`+
    `<td>${prev?n-prev.errors_by_flag[f]:"-"}</td>`));
  prev=s;
}
// "/?interval=S&count=N" passes through to /events; after N snapshots the
// page stops listening (a finite page, for headless browsers and printing).
const limit=+new URLSearchParams(location.search).get("count")||0;
let seen=0;
const es=new EventSource("/events"+location.search);
es.addEventListener("snapshot", e=>{
  render(JSON.parse(e.data));
  if(limit&&++seen>=limit)es.close();
});
es.onerror=()=>{document.getElementById("status").textContent="disconnected; retrying";};
</script></body></html>
"""
