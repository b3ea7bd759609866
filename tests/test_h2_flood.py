"""HTTP/2 floods are bounded (issue 7, item 2).

Each test is a hostile client writing raw frames (hyperframe + hpack, via
`RawH2`) over a real 127.0.0.1 socket to a real proxy with a real upstream.
Each checks the defence (GOAWAY and close, or a stream error), the stat that
counts it, that the proxy's memory stayed within a stated bound while it was
attacked, and that a well-behaved client is served during and after.

Memory is measured with tracemalloc around the flood: the proxy, its
upstream and the clients share this process and trio loop, so the figure is
the peak of everything traced in the process above the baseline taken just
before the flood (an upper bound for the proxy's share; the flood bytes are
built before the baseline). Run with `-s` to see the figures:

    PYTHONPATH=. python -m pytest -q -s -p no:cacheprovider tests/test_h2_flood.py
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import h2.errors
import hpack
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conftest import counter, settle
from tests.h2client import H2Client
from tests.test_h2_conformance import RawH2, h2_proxy, is_goaway, is_rst, request_block

E = h2.errors.ErrorCodes
KiB = 1024
MiB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


class Memory:
    """Peak traced memory of this process above a baseline (see the module
    docstring for what that covers)."""

    def __init__(self) -> None:
        self.base = 0

    def start(self) -> None:
        gc.collect()
        self.base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()

    @property
    def peak(self) -> int:
        return max(0, tracemalloc.get_traced_memory()[1] - self.base)

    def live_outside_tests(self) -> int:
        """Memory held now by allocations not made in tests/ (the proxy and
        the libraries; a test upstream's response bodies are left out)."""
        snap = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, "*/tests/*"),
                tracemalloc.Filter(False, tracemalloc.__file__),
            ]
        )
        return sum(t.size for t in snap.traces)


@pytest.fixture
def memory() -> Iterator[Memory]:
    tracemalloc.start()
    try:
        yield Memory()
    finally:
        tracemalloc.stop()


def report(what: str, mem: Memory, bound: int, **figures: object) -> None:
    extra = "".join(f", {k}={v}" for k, v in figures.items())
    print(
        f"\n[h2 flood] {what}: peak {mem.peak / KiB:.0f} KiB (bound {bound / KiB:.0f} KiB){extra}"
    )
    assert mem.peak < bound, f"{what}: {mem.peak} bytes over the baseline"


async def served(port: int, path: str = "/good") -> int:
    """A well-behaved client on its own connection; its status."""
    with trio.fail_after(10):
        async with await H2Client.connect(port) as c:
            r = await c.request("GET", path)
    return r.status


@asynccontextmanager
async def served_meanwhile(port: int) -> AsyncIterator[list[int]]:
    """Good requests, one after another on new connections, while the body
    runs; at the end, waits for the one in flight (and at least one)."""
    statuses: list[int] = []
    stop = False

    async def loop() -> None:
        while not stop or not statuses:
            statuses.append(await served(port, "/meanwhile"))
            await trio.sleep(0.01)

    async with trio.open_nursery() as n:
        n.start_soon(loop)
        yield statuses
        stop = True


async def send_until_closed(c: RawH2, data: bytes, times: int) -> int:
    """Write `data` up to `times` times; the bytes written before the
    proxy closed the connection."""
    sent = 0
    try:
        for _ in range(times):
            await c.stream.send_all(data)
            sent += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


async def goaway_and_close(c: RawH2) -> GoAwayFrame:
    g = await c.expect(is_goaway)
    assert isinstance(g, GoAwayFrame)
    await c.expect_closed()
    return g


def frames(*fs: Frame) -> bytes:
    return b"".join(f.serialize() for f in fs)


def rst(sid: int, code: int = E.CANCEL) -> RstStreamFrame:
    f = RstStreamFrame(sid)
    f.error_code = code
    return f


def window_update(sid: int, n: int = 1) -> WindowUpdateFrame:
    f = WindowUpdateFrame(sid)
    f.window_increment = n
    return f


# --------------------------------------------------------------------------- rapid reset


@pytest.mark.parametrize("rst_later", [False, True], ids=["same-write", "rst-later"])
async def test_rapid_reset_gets_goaway_after_the_premature_reset_budget(
    nursery: trio.Nursery, memory: Memory, rst_later: bool
) -> None:
    server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.expect(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    memory.start()
    # CVE-2023-44487: HEADERS then RST_STREAM, 50 streams per write, for up
    # to 5000 streams. With `rst_later` the resets follow in a second write,
    # so some requests may have reached the router first.
    sid, opened = 1, 0
    async with served_meanwhile(port) as meanwhile:
        try:
            while opened < 5000:
                batch = list(range(sid, sid + 100, 2))
                sid += 100
                heads = [c.headers_frame(s, request_block(f"/rr{s}")) for s in batch]
                resets = [rst(s) for s in batch]
                if rst_later:
                    await c.send(*heads)
                    await trio.sleep(0.001)
                    await c.send(*resets)
                else:
                    await c.send(*[f for pair in zip(heads, resets, strict=True) for f in pair])
                opened += len(batch)
                await trio.sleep(0)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    await settle(server)
    started = counter(server, "http.ingress_http.downstream_rq_total")
    report(
        f"rapid reset ({'rst later' if rst_later else 'same write'})",
        mem=memory,
        bound=8 * MiB,
        streams_sent=opened,
        streams_started=started,
        upstream_requests=len(up.requests),
    )
    assert counter(server, "http.ingress_http.downstream_rq_too_many_premature_resets") == 1
    # Envoy's budget: 250 premature resets (half of 500) close the connection
    # (the stream whose reset was the 250th's successor may have started).
    assert started <= 251
    if not rst_later:
        # Reset before their task ran: no upstream request was opened.
        assert not [r for r in up.requests if r["path"].startswith("/rr")]
    assert len(up.requests) <= 250 + len(meanwhile)
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_resets_below_half_of_the_streams_keep_the_connection(
    nursery: trio.Nursery,
) -> None:
    server, _up, port = await h2_proxy(nursery, premature_reset_total_stream_count=20)
    c = await RawH2.connect(port)
    # 15 answered streams, then 5 reset at once: 5 of 20 is not half.
    for sid in range(1, 31, 2):
        await c.request(sid, "/ok")
        assert (await c.response(sid))[0] == 200
    for sid in range(31, 41, 2):
        await c.send(c.headers_frame(sid, request_block("/r")), rst(sid))
    await still_alive(c, 41)
    # Five more: 10 premature of 27 streams is still under half ...
    for sid in range(43, 53, 2):
        await c.send(c.headers_frame(sid, request_block("/r")), rst(sid))
    await still_alive(c, 53)
    # ... and 7 more (17 of 34) make half: GOAWAY. One write, so the proxy
    # has read it all when it closes.
    await c.send(
        *[f for s in range(55, 69, 2) for f in (c.headers_frame(s, request_block("/r")), rst(s))]
    )
    g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    assert counter(server, "http.ingress_http.downstream_rq_too_many_premature_resets") == 1


async def still_alive(c: RawH2, sid: int) -> None:
    await c.request(sid, "/alive")
    assert (await c.response(sid))[0] == 200
    assert not any(isinstance(f, GoAwayFrame) for f in c.frames)


async def test_rapid_reset_limit_can_be_disabled(nursery: trio.Nursery) -> None:
    server, _up, port = await h2_proxy(nursery, premature_reset_total_stream_count=0)
    c = await RawH2.connect(port)
    pairs = [
        f for s in range(1, 1201, 2) for f in (c.headers_frame(s, request_block("/r")), rst(s))
    ]
    await c.send(*pairs)
    await still_alive(c, 1201)
    assert counter(server, "http.ingress_http.downstream_rq_too_many_premature_resets") == 0
    await c.aclose()


# --------------------------------------------------------------------------- CONTINUATION


def _headers_start(c: RawH2, sid: int, payload: bytes) -> HeadersFrame:
    f = HeadersFrame(sid)
    f.data = payload
    f.flags.add("END_STREAM")
    return f


def _continuation(sid: int, payload: bytes, *, end: bool = False) -> ContinuationFrame:
    f = ContinuationFrame(sid)
    f.data = payload
    if end:
        f.flags.add("END_HEADERS")
    return f


@pytest.mark.parametrize(
    ("what", "payload", "n", "stat"),
    [
        # 2024's CONTINUATION flood: 16 KiB frames that never end the block;
        # the fifth passes 60 KiB + one frame of compressed block.
        ("16 KiB frames", b"\x00" * 16384, 5, "header_overflow"),
        # Tiny frames: the CONTINUATION count (64) binds first.
        ("1-byte frames", b"\x00", 64, "header_overflow"),
        # Empty frames: Envoy's consecutive empty-payload limit (1).
        ("empty frames", b"", 2, "inbound_empty_frames_flood"),
    ],
    ids=["16KiB", "1B", "empty"],
)
async def test_continuation_flood_is_a_connection_error(
    nursery: trio.Nursery, memory: Memory, what: str, payload: bytes, n: int, stat: str
) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    # Exactly as many frames as it takes, so the proxy has read everything
    # when it closes and the GOAWAY reaches us (unread input makes a TCP RST).
    flood = frames(
        _headers_start(c, 1, c.encoder.encode(request_block("/cont"))),
        *[_continuation(1, payload) for _ in range(n)],
    )
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        await c.stream.send_all(flood)
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report(f"CONTINUATION flood, {what}", memory, 2 * MiB)
    assert counter(server, f"http2.{stat}") == 1
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_endless_continuation_flood_is_cut_off(nursery: trio.Nursery, memory: Memory) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    start = frames(_headers_start(c, 1, c.encoder.encode(request_block("/cont"))))
    burst = frames(*[_continuation(1, b"\x00" * 16384) for _ in range(4)])
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        await c.stream.send_all(start)
        # Up to 64 MiB without END_HEADERS; the proxy closes long before.
        sent = len(start) + await send_until_closed(c, burst, 1024)
        await c.expect_closed()
    report("endless CONTINUATION flood", memory, 2 * MiB, client_sent_kib=sent // KiB)
    assert sent < 64 * MiB
    assert counter(server, "http2.header_overflow") == 1
    # When the GOAWAY outran the reset that unread input causes, it says why.
    assert all(f.error_code == E.ENHANCE_YOUR_CALM for f in c.frames if isinstance(f, GoAwayFrame))
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_large_header_block_within_the_limit_over_continuations(
    nursery: trio.Nursery,
) -> None:
    _server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(40)]  # about 41 KiB
    block = c.encoder.encode([*request_block("/big"), *big], huffman=False)
    parts = [block[i : i + 10000] for i in range(0, len(block), 10000)]
    first = _headers_start(c, 1, parts[0])
    rest = [_continuation(1, p, end=i == len(parts) - 2) for i, p in enumerate(parts[1:])]
    await c.send(first, *rest)
    assert (await c.response(1))[0] == 200
    assert up.requests[-1]["path"] == "/big"
    await c.aclose()


# --------------------------------------------------------------------------- control frames


@pytest.mark.parametrize("kind", ["SETTINGS", "PING"])
async def test_control_frame_flood_gets_goaway(
    nursery: trio.Nursery, memory: Memory, kind: str
) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.expect(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    if kind == "SETTINGS":
        one: Frame = SettingsFrame(0)
    else:
        one = PingFrame(0)
        one.opaque_data = b"floodfld"
    # 2000 frames in one write: more acks than max_outbound_control_frames
    # (1000) are queued before any can be written.
    flood = one.serialize() * 2000
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        await c.stream.send_all(flood)
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report(f"{kind} flood", memory, 2 * MiB)
    assert counter(server, "http2.outbound_control_flood") == 1
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_max_outbound_frames_counts_every_frame(nursery: trio.Nursery) -> None:
    # With max_outbound_frames lowered, 500 PING acks (under the control
    # limit) are a flood of frames.
    server, _up, port = await h2_proxy(nursery, max_outbound_frames=100)
    c = await RawH2.connect(port)
    await c.expect(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    await c.stream.send_all(ping.serialize() * 500)
    g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    assert counter(server, "http2.outbound_flood") == 1
    assert counter(server, "http2.outbound_control_flood") == 0


async def test_a_few_pings_and_settings_are_fine(nursery: trio.Nursery) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    await c.stream.send_all(ping.serialize() * 100 + SettingsFrame(0).serialize() * 100)
    await still_alive(c, 1)
    await c.aclose()
    assert (
        sum(counter(server, f"http2.{k}") for k in ("outbound_flood", "outbound_control_flood"))
        == 0
    )


# --------------------------------------------------------------------------- inbound frame limits


async def test_empty_data_frames_flood_gets_goaway(nursery: trio.Nursery, memory: Memory) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/upload", method=b"POST", end_stream=False, extra=[(b"x-test-echo", b"1")])
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        # One empty DATA frame is allowed (Envoy's default is 1) ...
        await c.data(1, b"")
        await c.data(1, b"abc")
        await c.data(1, b"")
        # ... two in a row are not.
        await c.send(DataFrame(1))
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report("empty DATA flood", memory, 2 * MiB)
    assert counter(server, "http2.inbound_empty_frames_flood") == 1
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_priority_flood_gets_goaway(nursery: trio.Nursery, memory: Memory) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.request(1, "/one")
    assert (await c.response(1))[0] == 200

    def priority(sid: int) -> PriorityFrame:
        p = PriorityFrame(sid)
        p.depends_on = 0
        p.stream_weight = 16
        return p

    # One stream opened: 100 * (1 + 1) PRIORITY frames are allowed ...
    await c.send(*[priority(s) for s in range(3, 403, 2)])
    await still_alive(c, 403)
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        # ... (now 300 with two streams) and then no more.
        await c.send(*[priority(s) for s in range(405, 607, 2)])
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report("PRIORITY flood", memory, 2 * MiB)
    assert counter(server, "http2.inbound_priority_frames_flood") == 1
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_window_update_flood_gets_goaway(nursery: trio.Nursery, memory: Memory) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    await c.expect(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        # No stream and no DATA sent: 1 WINDOW_UPDATE is allowed, 2 are not.
        await c.send(window_update(0), window_update(0))
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report("WINDOW_UPDATE flood", memory, 2 * MiB)
    assert counter(server, "http2.inbound_window_update_frames_flood") == 1
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_window_updates_for_received_data_are_fine(nursery: trio.Nursery) -> None:
    server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    # RawH2 credits every DATA frame back on both windows: 2 per frame.
    await c.request(1, "/big", extra=[(b"x-test-body-size", b"%d" % (2 * MiB))])
    status, body = await c.response(1, timeout=20)
    assert status == 200 and len(body) == 2 * MiB
    await still_alive(c, 3)
    await c.aclose()
    assert counter(server, "http2.inbound_window_update_frames_flood") == 0


# --------------------------------------------------------------------------- HPACK bombs


async def test_hpack_dynamic_table_bomb(nursery: trio.Nursery, memory: Memory) -> None:
    server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    first = await c.expect(lambda f: isinstance(f, SettingsFrame))
    assert isinstance(first, SettingsFrame)
    # We advertise SETTINGS_HEADER_TABLE_SIZE 4096 (the RFC's default): it
    # bounds the client's dynamic table, so one entry is at most about 4 KiB.
    assert first.settings.get(SettingsFrame.HEADER_TABLE_SIZE, 4096) == 4096
    entry = (b"x-bomb", b"b" * 4000)
    # Twenty references decode to about 80 KiB: over max_request_headers_kb,
    # a stream error; the connection (and its HPACK state) carries on.
    block = c.encoder.encode([*request_block("/bomb"), *[entry] * 20], huffman=False)
    assert len(block) < 4200
    await c.send(_headers_block(1, block))
    await c.expect(is_rst(1, E.INTERNAL_ERROR))
    await still_alive(c, 3)
    # A thousand references (about 4 MiB decoded from 1 KiB on the wire):
    # decoding stops at the hard cap (256 KiB) with a connection error.
    bomb = c.encoder.encode([*request_block("/bomb"), *[entry] * 1000], huffman=False)
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        await c.send(_headers_block(5, bomb))
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report("HPACK dynamic-table bomb", memory, 2 * MiB, wire_bytes=len(bomb))
    assert counter(server, "http2.header_overflow") == 2
    assert not [r for r in up.requests if r["path"] == "/bomb"]
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


def _headers_block(sid: int, block: bytes) -> HeadersFrame:
    f = HeadersFrame(sid)
    f.data = block
    f.flags.add("END_HEADERS")
    f.flags.add("END_STREAM")
    return f


async def test_hpack_table_size_above_our_setting_is_a_compression_error(
    nursery: trio.Nursery,
) -> None:
    _server, _up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    # A dynamic table size update to 1 MiB (RFC 7541 6.3) is over the 4096
    # we allow: COMPRESSION_ERROR, no table grows.
    enc = hpack.Encoder()
    enc.header_table_size = 1 * MiB
    await c.send(_headers_block(1, enc.encode(request_block("/t"))))
    g = await goaway_and_close(c)
    assert g.error_code == E.COMPRESSION_ERROR


@pytest.mark.parametrize(
    ("count", "connection_error"), [(2000, False), (20000, True)], ids=["2000", "20000"]
)
async def test_many_small_headers(
    nursery: trio.Nursery, memory: Memory, count: int, connection_error: bool
) -> None:
    server, up, port = await h2_proxy(nursery)
    c = await RawH2.connect(port)
    # Indexed static-table fields, one byte each on the wire (0x90 is
    # "accept-encoding: gzip, deflate"): `count` headers from `count` bytes.
    block = c.encoder.encode(request_block("/many")) + b"\x90" * count
    frame_data = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    fs: list[Frame] = [_headers_start(c, 1, frame_data[0])]
    fs += [_continuation(1, p, end=i == len(frame_data) - 2) for i, p in enumerate(frame_data[1:])]
    if len(frame_data) == 1:
        fs[0].flags.add("END_HEADERS")
    memory.start()
    await c.send(*fs)
    if connection_error:
        # 20000 fields of 32+ bytes each: past the decoding hard cap.
        g = await goaway_and_close(c)
        assert g.error_code == E.ENHANCE_YOUR_CALM
    else:
        # Over max_headers_count (100): a stream error, as for HTTP/1.1's 431.
        await c.expect(is_rst(1, E.INTERNAL_ERROR))
        await still_alive(c, 3)
        await c.aclose()
    report(f"{count} one-byte headers", memory, 4 * MiB)
    assert not [r for r in up.requests if r["path"] == "/many"]
    assert counter(server, "http2.header_overflow") == 1
    assert await served(port) == 200


# --------------------------------------------------------------------------- streams


async def test_streams_beyond_max_concurrent_streams_flood(
    nursery: trio.Nursery, memory: Memory
) -> None:
    server, up, port = await h2_proxy(nursery, max_concurrent_streams=10)
    c = await RawH2.connect(port)
    hang = [(b"x-test-hang", b"1")]
    await c.send(*[c.headers_frame(s, request_block("/hang", extra=hang)) for s in range(1, 21, 2)])
    with trio.fail_after(5):
        while len(up.requests) < 10:
            await trio.sleep(0.01)
    memory.start()
    async with served_meanwhile(port) as meanwhile:
        # 100 more at once: each is refused (RST_STREAM REFUSED_STREAM) ...
        await c.send(*[c.headers_frame(s, request_block("/x")) for s in range(21, 221, 2)])
        for s in range(21, 221, 2):
            await c.expect(is_rst(s, E.REFUSED_STREAM))
        # ... and 2000 in one write queue more RST_STREAMs than
        # max_outbound_control_frames: GOAWAY.
        await c.send(*[c.headers_frame(s, request_block("/x")) for s in range(221, 5221, 2)])
        g = await goaway_and_close(c)
    assert g.error_code == E.ENHANCE_YOUR_CALM
    report("streams beyond max_concurrent_streams", memory, 4 * MiB)
    assert counter(server, "http2.outbound_control_flood") == 1
    assert len(up.requests) == 10 + len(meanwhile)
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


@pytest.mark.parametrize("streams", [1, 20])
async def test_zero_window_stall_ends_with_the_idle_timeouts(
    nursery: trio.Nursery, memory: Memory, streams: int
) -> None:
    server, _up, port = await h2_proxy(nursery, stream_idle_timeout=0.5, idle_timeout=0.5)
    # The client opens no window at all: nothing can be sent to it.
    c = await RawH2.connect(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    c.auto_window = False
    memory.start()
    before = memory.live_outside_tests()
    body = b"%d" % MiB
    sids = list(range(1, 2 * streams + 1, 2))
    async with served_meanwhile(port) as meanwhile:
        extra = [(b"x-test-body-size", body)]
        await c.send(*[c.headers_frame(s, request_block("/stall", extra=extra)) for s in sids])
        # Stalled: the upstream has sent what the sockets take; the proxy
        # holds at most a chunk per stream.
        await trio.sleep(0.3)
        stalled = memory.live_outside_tests() - before
        # The stream idle timeout (SI) resets each stalled stream ...
        for s in sids:
            await c.expect(is_rst(s), timeout=10)
        # ... and the connection idle timeout then closes the connection.
        g = await goaway_and_close(c)
    assert g.error_code == E.NO_ERROR
    await settle(server)
    bound = 1 * MiB + streams * 256 * KiB
    print(
        f"\n[h2 flood] zero-window stall, {streams} x 1 MiB responses: held outside tests/ "
        f"{stalled / KiB:.0f} KiB (bound {bound / KiB:.0f} KiB)"
    )
    assert stalled < bound
    assert counter(server, "http.ingress_http.downstream_rq_idle_timeout") == streams
    assert counter(server, "http.ingress_http.downstream_cx_idle_timeout") >= 1
    assert meanwhile and set(meanwhile) == {200}
    assert await served(port) == 200


async def test_zero_window_stall_before_the_response_head(nursery: trio.Nursery) -> None:
    # The stream idle timeout fires before the upstream answers: the 408
    # local reply cannot be sent into a zero window either, so it is bounded
    # by the same timeout (Envoy's tx_flush_timeout) and the stream is reset.
    server, _up, port = await h2_proxy(nursery, stream_idle_timeout=0.5, idle_timeout=0.5)
    c = await RawH2.connect(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    c.auto_window = False
    await c.request(1, "/slow", extra=[(b"x-test-delay", b"2")])
    head = await c.expect(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    assert dict(head.decoded)[b":status"] == b"408"  # type: ignore[attr-defined]
    await c.expect(is_rst(1))
    g = await goaway_and_close(c)
    assert g.error_code == E.NO_ERROR
    await settle(server)
    assert counter(server, "http.ingress_http.downstream_rq_idle_timeout") == 1
    assert await served(port) == 200
