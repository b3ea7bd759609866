"""Access-log filters and JSON formats: DSL compile (with file:line errors)
and real traffic through a proxy, each filter deciding which lines land in
the file."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import pytest
import trio
from trioproxy.dsl import (
    MeshBuilder,
    MeshError,
    admin,
    and_filter,
    cluster,
    direct_response,
    duration_filter,
    http,
    listener,
    mesh,
    not_health_check_filter,
    or_filter,
    prefix,
    response_flag_filter,
    runtime,
    runtime_filter,
    status_code_filter,
)

from tests.conftest import proxy_url, start_proxy, start_upstream
from trioproxy.config import (
    AndFilter,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    RuntimeFilter,
    StatusCodeFilter,
)
from trioproxy.runtime.server import Server

# --------------------------------------------------------------------------- compile


def with_log(**kw: object) -> MeshBuilder:
    return mesh(
        listener("l", ":0")
        .chain(http().access_log("-", **kw))  # type: ignore[arg-type]
        .route(prefix("/"), direct_response(200))
    )


def errors(m: MeshBuilder) -> list[str]:
    with pytest.raises(MeshError) as info:
        m.compile()
    return [i.message for i in info.value.issues]


def test_bad_operator_is_a_compile_error_at_the_call() -> None:
    h = http().access_log("-", "%REQ(:PATH)% %NOPE%\n")
    line = h._access_logs[0].location.line  # type: ignore[union-attr]
    m = mesh(listener("l", ":0").chain(h).route(prefix("/"), direct_response(200)))
    with pytest.raises(MeshError) as info:
        m.compile()
    assert f"test_access_log_filters.py:{line}: bad access_log format: unknown operator NOPE" in (
        str(info.value)
    )
    assert errors(with_log(json_format={"code": "%RESPONSE_CODE(x)%"})) != []
    assert errors(with_log(json_format=["%PROTOCOL%"])) == [
        "access_log json_format must be a dict, got list"
    ]


def test_filters_compile_to_plain_data() -> None:
    f = and_filter(
        status_code_filter(">=", 500),
        not_health_check_filter(),
        or_filter(response_flag_filter("UF", "UH"), runtime_filter("log.sample", 10)),
    )
    built = with_log(filter=f, json_format={"code": "%RESPONSE_CODE%"}).compile()
    log = built.listeners[0].filter_chains[0].filters[0].access_logs[0]  # type: ignore[attr-defined]
    assert log.filter == AndFilter(
        filters=(
            StatusCodeFilter(op="GE", value=500),
            NotHealthCheckFilter(),
            OrFilter(
                filters=(
                    ResponseFlagFilter(flags=("UF", "UH")),
                    RuntimeFilter(runtime_key="log.sample", numerator=10),
                )
            ),
        )
    )
    assert json.loads(log.json_format) == {"code": "%RESPONSE_CODE%"}


def test_filter_errors() -> None:
    assert errors(with_log(filter=status_code_filter(">", 500))) == [
        "status_code_filter: bad comparison '>' (==, >= or <=)"
    ]
    assert errors(with_log(filter=duration_filter(">=", -1))) == [
        "duration_filter: value must be a non-negative integer, got -1"
    ]
    assert errors(with_log(filter=runtime_filter("k", 1, 7))) == [
        "runtime_filter: bad denominator 7 (100, 10000 or 1000000)"
    ]
    assert errors(with_log(filter=and_filter())) == ["AndFilter needs at least one filter"]
    assert errors(with_log(filter="status>=500")) == [
        "access_log filter must be an access-log filter, got str"
    ]


# --------------------------------------------------------------------------- traffic


async def serve(nursery: trio.Nursery, tmp_path: Path, **log: object) -> tuple[Server, Path]:
    """A proxy: `/` to a real upstream, `/dead` to a closed port (UF),
    `/healthz` answered by the health_check filter; one access log."""
    up = await start_upstream(nursery)
    path = tmp_path / "access.log"
    log.setdefault("format", "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n")
    m = mesh(
        listener("ingress", "127.0.0.1:0")
        .chain(http().health_check("/healthz").access_log(str(path), **log))  # type: ignore[arg-type]
        .route(prefix("/dead"), cluster("dead", "127.0.0.1:1"))
        .route(prefix("/"), cluster("svc", f"127.0.0.1:{up.port}")),
        admin("127.0.0.1:0"),
        runtime({"log.sample": 0}),
    ).compile()
    return await start_proxy(nursery, m), path


async def send(server: Server, *requests: tuple[str, int]) -> None:
    async with httpx.AsyncClient() as c:
        for p, status in requests:
            headers = {"x-test-status": str(status)} if status != 200 else {}
            r = await c.get(proxy_url(server, p), headers=headers)
            assert r.status_code == status, (p, r.status_code)


async def logged(server: Server, path: Path, marker: str = "/end") -> list[str]:
    """Send `marker` (always logged by the filters under test: a 599 from
    the upstream) and wait until it is in the file; the lines before it."""
    await send(server, (marker, 599))
    with trio.fail_after(10):
        while not (path.exists() and marker in path.read_text()):
            await trio.sleep(0.05)
    lines = path.read_text().splitlines()
    return lines[: lines.index(next(x for x in lines if x.startswith(marker)))]


async def test_status_code_filter(nursery: trio.Nursery, tmp_path: Path) -> None:
    server, path = await serve(nursery, tmp_path, filter=status_code_filter(">=", 500))
    await send(server, ("/ok", 200), ("/missing", 404), ("/boom", 503), ("/dead", 503))
    assert await logged(server, path) == ["/boom 503 -", "/dead 503 UF"]


async def test_response_flag_and_health_check_filters(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    f = or_filter(
        response_flag_filter("UF"),
        and_filter(not_health_check_filter(), status_code_filter("==", 599)),
    )
    server, path = await serve(nursery, tmp_path, filter=f)
    await send(server, ("/ok", 200), ("/healthz", 200), ("/dead", 503), ("/x", 599))
    assert await logged(server, path) == ["/dead 503 UF", "/x 599 -"]


async def test_not_health_check_filter(nursery: trio.Nursery, tmp_path: Path) -> None:
    server, path = await serve(nursery, tmp_path, filter=not_health_check_filter())
    await send(server, ("/healthz", 200), ("/ok", 200), ("/healthz", 200))
    assert await logged(server, path) == ["/ok 200 -"]


async def test_duration_filter(nursery: trio.Nursery, tmp_path: Path) -> None:
    f = or_filter(duration_filter(">=", 10_000), status_code_filter("==", 599))
    server, path = await serve(nursery, tmp_path, filter=f)
    await send(server, ("/fast", 200))
    assert await logged(server, path) == []
    f = or_filter(duration_filter("<=", 10_000), status_code_filter("==", 599))
    server, path = await serve(nursery, tmp_path / "..", filter=f)
    await send(server, ("/fast", 200))
    assert await logged(server, path) == ["/fast 200 -"]


async def test_runtime_filter_follows_runtime_modify(nursery: trio.Nursery, tmp_path: Path) -> None:
    f = or_filter(runtime_filter("log.sample", 100), status_code_filter("==", 599))
    server, path = await serve(nursery, tmp_path, filter=f)
    await send(server, ("/a", 200), ("/b", 200))  # static layer: log.sample = 0 (%)
    assert await logged(server, path, "/end1") == []
    bound = server.admin_bound
    assert bound is not None
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://{bound.host}:{bound.port}/runtime_modify?log.sample=100")
        assert r.status_code == 200
    await send(server, ("/c", 200))
    lines = path.read_text().splitlines()
    assert lines[0].startswith("/end1 ")
    assert (await logged(server, path, "/end2"))[1:] == ["/c 200 -"]


async def test_json_format_keeps_types_and_nulls(nursery: trio.Nursery, tmp_path: Path) -> None:
    fields = {
        "code": "%RESPONSE_CODE%",
        "path": "%REQ(:PATH)%",
        "flags": "%RESPONSE_FLAGS%",
        "cluster": "%UPSTREAM_CLUSTER%",
        "missing": "%REQ(X-NOT-SENT)%",
        "both": "%REQ(:METHOD)% %RESPONSE_CODE%",
        "nested": {"sent": "%BYTES_SENT%"},
    }
    server, path = await serve(nursery, tmp_path, format=None, json_format=fields)
    await send(server, ("/j", 200), ("/end", 599))
    with trio.fail_after(10):
        while not (path.exists() and path.read_text().count("\n") >= 2):
            await trio.sleep(0.05)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["code"] == 200 and first["path"] == "/j" and first["cluster"] == "svc"
    assert first["flags"] == "-"  # as Envoy: no flag prints "-", even in JSON
    assert first["missing"] is None
    assert first["both"] == "GET 200"
    assert isinstance(first["nested"]["sent"], int) and first["nested"]["sent"] > 0


async def test_every_operator_through_real_traffic(nursery: trio.Nursery, tmp_path: Path) -> None:
    ops = [
        "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f)%",
        "%REQ(X-MISSING?X-LONG):4%",
        "%RESP(CONTENT-TYPE)%",
        "%TRAILER(X-TRAILER)%",
        "%PROTOCOL%",
        "%RESPONSE_CODE%",
        "%RESPONSE_CODE_DETAILS%",
        "%RESPONSE_FLAGS%",
        "%BYTES_RECEIVED%",
        "%BYTES_SENT%",
        "%DURATION%",
        "%REQUEST_DURATION%",
        "%RESPONSE_DURATION%",
        "%UPSTREAM_HOST%",
        "%UPSTREAM_CLUSTER%",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "%DOWNSTREAM_REMOTE_ADDRESS%",
        "%DOWNSTREAM_LOCAL_ADDRESS%",
        "%ROUTE_NAME%",
        "%HOSTNAME%",
    ]
    server, path = await serve(nursery, tmp_path, format="|".join(ops) + "\n")
    async with httpx.AsyncClient() as c:
        r = await c.post(
            proxy_url(server, "/all"),
            content=b"12345",
            headers={"x-long": "abcdefgh", "x-test-trailers": "1"},
        )
        assert r.status_code == 200
    with trio.fail_after(10):
        while not (path.exists() and path.read_text().endswith("\n")):
            await trio.sleep(0.05)
    f = dict(zip(ops, path.read_text().rstrip("\n").split("|"), strict=True))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", f[ops[0]])
    assert f["%REQ(X-MISSING?X-LONG):4%"] == "abcd"
    assert f["%RESP(CONTENT-TYPE)%"] != "-"
    assert f["%TRAILER(X-TRAILER)%"] == "yes"
    assert (f["%PROTOCOL%"], f["%RESPONSE_CODE%"], f["%RESPONSE_FLAGS%"]) == (
        "HTTP/1.1",
        "200",
        "-",
    )
    assert f["%RESPONSE_CODE_DETAILS%"] == "via_upstream"
    assert f["%BYTES_RECEIVED%"] == "5" and int(f["%BYTES_SENT%"]) > 0
    for d in ("%DURATION%", "%REQUEST_DURATION%", "%RESPONSE_DURATION%"):
        assert f[d].isdigit(), (d, f[d])
    assert f["%UPSTREAM_HOST%"].startswith("127.0.0.1:") and f["%UPSTREAM_CLUSTER%"] == "svc"
    assert f["%UPSTREAM_TRANSPORT_FAILURE_REASON%"] == "-"
    assert f["%DOWNSTREAM_REMOTE_ADDRESS%"].startswith("127.0.0.1:")
    assert f["%DOWNSTREAM_LOCAL_ADDRESS%"] == f"127.0.0.1:{server.listener_address('ingress').port}"
    assert f["%ROUTE_NAME%"] != ""
    assert f["%HOSTNAME%"] == socket.gethostname()
