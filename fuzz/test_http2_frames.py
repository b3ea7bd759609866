"""Invariant: whatever frame sequence an HTTP/2 client sends, the proxy answers
with valid HTTP/2 or closes with GOAWAY; it never crashes, leaks a stream
task or a gauge, and keeps serving other connections.

After the connection preface and a SETTINGS frame, the client sends a drawn
sequence of frames built with the hyperframe and hpack encoders (then
half-closes, or leaves the connection open for the idle timeouts to end):
HEADERS with drawn header lists (valid requests; missing, repeated, unknown
and misplaced pseudo-headers; upper-case names; connection-specific fields;
oversized and overlong lists; trailers), with or without END_STREAM and
END_HEADERS, padded or with a priority; CONTINUATION (in place and stray);
DATA with and without END_STREAM; RST_STREAM; PRIORITY (self-dependent
too); WINDOW_UPDATE (0, and overflowing); PING; SETTINGS with drawn values
(invalid ones included) and ACKs; GOAWAY; unknown frame types; stream ids
that are new, reused, even, 0 or the largest one.

1. everything the proxy writes parses as HTTP/2 frames of known types (the
   server preface SETTINGS first), connection frames on stream 0, stream
   frames only on streams the client opened, header blocks that HPACK-decode
   into valid response headers or trailers (h2's own validation, as an h2
   client would apply it), no frame for a stream after it ended, nothing
   after a GOAWAY with an error code, no partial frame at the close;
2. `server.connection_task_errors` stays 0, no trioproxy task outlives the
   connection, every `*_active` gauge is back to 0 and no pool connection
   is lent;
3. a new HTTP/2 connection still gets a 200.

Each example runs a fresh proxy and upstream on the in-memory network under
`MockClock(autojump_threshold=0)`.
"""

from __future__ import annotations

from typing import Any

import attrs
import h2.exceptions
import h2.utilities
import hpack
import trio
import trio.testing
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz._harness import Records, check_no_crash, quiet, run
from fuzz.conftest import fuzz_settings, time_capped
from tests.conftest import cluster, route_to, simple_mesh, start_proxy, start_upstream
from tests.h2client import H2Client
from tests.memnet import MemoryNetwork
from trioproxy.codec.http2 import PREFACE

KIB = 1024

# --------------------------------------------------------------------------- client frames

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
BLOCKS: dict[str, list[tuple[bytes, bytes]]] = {
    "get": GET,
    "post": [(b":method", b"POST"), *GET[1:], (b"content-length", b"3")],
    "no_path": GET[:3],
    "no_method": GET[1:],
    "two_methods": [*GET, (b":method", b"PUT")],
    "unknown_pseudo": [*GET, (b":foo", b"x")],
    "pseudo_after": [*GET[:2], (b"x-a", b"1"), *GET[2:]],
    "upper": [*GET, (b"X-Upper", b"1")],
    "connection": [*GET, (b"connection", b"keep-alive")],
    "te_gzip": [*GET, (b"te", b"gzip")],
    "te_trailers": [*GET, (b"te", b"trailers")],
    "status": [(b":status", b"200"), *GET],
    "empty": [],
    "trailers": [(b"x-trailer", b"yes")],
    "bad_value": [*GET, (b"x-a", b"a\r\nb")],
    "big": [*GET, (b"x-big", b"v" * (70 * KIB))],
    "many": [*GET, *[(b"x-%d" % i, b"v") for i in range(150)]],
    "cl_mismatch": [(b":method", b"POST"), *GET[1:], (b"content-length", b"1")],
    "connect": [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    "host_only": [*GET[:2], (b":path", b"/"), (b"host", b"b")],
}
ERROR_CODES = st.sampled_from([0, 1, 2, 7, 8, 11, 0xFF, 2**32 - 1])


@attrs.frozen
class Send:
    """One frame to send: a kind and its drawn fields."""

    kind: str
    sid: str = "new"  # new | current | old | even | zero | huge
    fields: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.fields).get(name, default)


def _send(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Send]:
    names = sorted(fields)
    return st.builds(
        lambda sid, *values: Send(kind, sid, tuple(zip(names, values, strict=True))),
        st.sampled_from(["new", "new", "current", "current", "old", "even", "zero", "huge"]),
        *(fields[n] for n in names),
    )


FRAMES = st.one_of(
    _send(
        "headers",
        block=st.sampled_from(sorted(BLOCKS)),
        end_stream=st.booleans(),
        end_headers=st.sampled_from([True, True, True, False]),
        continuation=st.sampled_from([True, True, False]),
        padded=st.booleans(),
        priority=st.sampled_from([None, None, 0, "self"]),
    ),
    _send("continuation", end_headers=st.booleans()),
    _send("data", payload=st.binary(max_size=100), end_stream=st.booleans(), padded=st.booleans()),
    _send("rst", code=ERROR_CODES),
    _send("priority", depends=st.sampled_from([0, 1, "self"]), weight=st.integers(1, 256)),
    _send("window", increment=st.sampled_from([0, 1, 65535, 2**31 - 1])),
    _send("ping", ack=st.booleans()),
    _send(
        "settings",
        ack=st.sampled_from([False, False, False, True]),
        values=st.lists(
            st.tuples(
                st.sampled_from([1, 2, 3, 4, 5, 6, 8, 0xFF]),
                st.sampled_from([0, 1, 2, 100, 16384, 65535, 2**24 - 1, 2**31 - 1, 2**31]),
            ),
            max_size=3,
        ),
    ),
    _send("goaway", code=ERROR_CODES, last=st.sampled_from([0, 1, 2**31 - 1])),
    _send("unknown", ftype=st.integers(10, 255), flags=st.integers(0, 255), payload=st.binary()),
    _send("garbage", payload=st.binary(min_size=1, max_size=20)),
)


class Writer:
    """Turns `Send`s into bytes, keeping HPACK state and stream ids as a client would."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()
        self.next_sid = 1
        self.current = 0
        self.opened: set[int] = set()

    def sid(self, kind: str) -> int:
        if kind == "new":
            self.current, self.next_sid = self.next_sid, self.next_sid + 2
            return self.current
        return {
            "current": self.current or 1,
            "old": 1,
            "even": 2,
            "zero": 0,
            "huge": 2**31 - 1,
        }[kind]

    def frame(self, s: Send) -> bytes:
        if s.kind == "garbage":
            return bytes(s.get("payload"))
        sid = (
            self.sid(s.sid)
            if s.kind == "headers"
            else self.sid("current" if s.sid == "new" else s.sid)
        )
        out: list[Frame] = []
        if s.kind == "headers":
            block = self.encoder.encode(BLOCKS[s.get("block")])
            f = HeadersFrame(1)
            cut = len(block) // 2 if not s.get("end_headers") else len(block)
            f.data = block[:cut]
            if s.get("end_stream"):
                f.flags.add("END_STREAM")
            if s.get("end_headers"):
                f.flags.add("END_HEADERS")
            if s.get("padded"):
                f.flags.add("PADDED")
                f.pad_length = 7
            if s.get("priority") is not None:
                f.flags.add("PRIORITY")
                f.depends_on = sid if s.get("priority") == "self" else 0
                f.stream_weight = 15
            out.append(f)
            if sid % 2 and sid:
                self.opened.add(sid)
            if not s.get("end_headers") and s.get("continuation"):
                c = ContinuationFrame(1, data=block[cut:])
                c.flags.add("END_HEADERS")
                out.append(c)
        elif s.kind == "continuation":
            c = ContinuationFrame(1, data=self.encoder.encode([(b"x-c", b"1")]))
            if s.get("end_headers"):
                c.flags.add("END_HEADERS")
            out.append(c)
        elif s.kind == "data":
            f = DataFrame(1, data=s.get("payload"))
            if s.get("end_stream"):
                f.flags.add("END_STREAM")
            if s.get("padded"):
                f.flags.add("PADDED")
                f.pad_length = 3
            out.append(f)
        elif s.kind == "rst":
            out.append(RstStreamFrame(1, error_code=s.get("code")))
        elif s.kind == "priority":
            dep = sid if s.get("depends") == "self" else s.get("depends")
            out.append(PriorityFrame(1, depends_on=dep, stream_weight=s.get("weight") - 1))
        elif s.kind == "window":
            out.append(WindowUpdateFrame(1, window_increment=s.get("increment")))
            sid = 0 if s.sid in ("zero", "new") else sid
        elif s.kind == "ping":
            out.append(PingFrame(0, opaque_data=b"12345678", flags=["ACK"] if s.get("ack") else []))
            sid = 0 if s.sid != "huge" else sid
        elif s.kind == "settings":
            if s.get("ack"):
                out.append(SettingsFrame(0, flags=["ACK"]))
            else:
                out.append(SettingsFrame(0, settings=dict(s.get("values"))))
            sid = 0 if s.sid != "current" else sid
        elif s.kind == "goaway":
            out.append(GoAwayFrame(0, last_stream_id=s.get("last"), error_code=s.get("code")))
            sid = 0 if s.sid != "even" else sid
        else:
            out.append(
                ExtensionFrame(s.get("ftype"), 1, flag_byte=s.get("flags"), body=s.get("payload"))
            )
        data = bytearray()
        for f in out:
            raw = bytearray(f.serialize())
            raw[5:9] = sid.to_bytes(4, "big")
            data += raw
        return bytes(data)


# --------------------------------------------------------------------------- checking the answer


class AnswerChecker:
    """Reads what the proxy wrote as an h2 client would, failing on anything invalid."""

    def __init__(self, opened: set[int]) -> None:
        self.opened = opened
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 2**31
        self.ended: set[int] = set()
        self.finals: set[int] = set()
        self.block: tuple[int, bytearray, bool] | None = None  # sid, fragments, end_stream
        self.goaway_error: int | None = None
        self.statuses: dict[int, int] = {}

    def check(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        first = True
        while pos < len(view):
            assert len(view) - pos >= 9, f"partial frame header at the close: {bytes(view[pos:])!r}"
            frame, length = Frame.parse_frame_header(view[pos : pos + 9])
            assert len(view) - pos - 9 >= length, "partial frame at the close"
            frame.parse_body(view[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if first:
                assert isinstance(frame, SettingsFrame) and "ACK" not in frame.flags, frame
                first = False
            self.frame(frame)
        assert self.block is None, "a header block was left open"

    def frame(self, f: Frame) -> None:
        assert not isinstance(f, ExtensionFrame), f"unknown frame type {f.type}"
        assert self.goaway_error in (None, 0), f"{f} after GOAWAY with error {self.goaway_error}"
        if self.block is not None:
            assert isinstance(f, ContinuationFrame) and f.stream_id == self.block[0], (
                f"{f} inside a header block"
            )
        if isinstance(f, SettingsFrame | PingFrame | GoAwayFrame):
            assert f.stream_id == 0, f
            if isinstance(f, GoAwayFrame):
                self.goaway_error = f.error_code
            return
        if isinstance(f, WindowUpdateFrame):
            assert f.window_increment >= 1
            if f.stream_id == 0:
                return
        sid = f.stream_id
        assert sid in self.opened, f"{f} on stream {sid}, which the client never opened"
        if isinstance(f, RstStreamFrame):
            # Allowed on a closed stream too: the answer to a frame received
            # after the stream ended is a STREAM_CLOSED stream error (RFC 9113 5.1).
            self.ended.add(sid)
            return
        assert sid not in self.ended, f"{f} after stream {sid} ended"
        if isinstance(f, HeadersFrame):
            self.block = (sid, bytearray(f.data), "END_STREAM" in f.flags)
            if "END_HEADERS" in f.flags:
                self.header_block()
        elif isinstance(f, ContinuationFrame):
            assert self.block is not None, "CONTINUATION without HEADERS"
            self.block[1].extend(f.data)
            if "END_HEADERS" in f.flags:
                self.header_block()
        elif isinstance(f, DataFrame):
            assert sid in self.finals, f"DATA before the response head on stream {sid}"
            if "END_STREAM" in f.flags:
                self.ended.add(sid)
        else:
            assert isinstance(f, WindowUpdateFrame), f"unexpected {f}"

    def header_block(self) -> None:
        assert self.block is not None
        sid, fragments, end_stream = self.block
        self.block = None
        headers = self.decoder.decode(bytes(fragments), raw=True)
        trailer = sid in self.finals
        flags = h2.utilities.HeaderValidationFlags(
            is_client=True,
            is_trailer=trailer,
            is_response_header=not trailer,
            is_push_promise=False,
        )
        try:
            for _ in h2.utilities.validate_headers(headers, flags):
                pass
        except h2.exceptions.ProtocolError as exc:
            raise AssertionError(
                f"invalid header block on stream {sid}: {exc}: {headers}"
            ) from None
        if trailer:
            assert end_stream, "trailers without END_STREAM"
        else:
            status = int(dict(headers)[b":status"])
            if status >= 200:
                self.finals.add(sid)
                self.statuses[sid] = status
            else:
                assert not end_stream, "an informational response ended the stream"
        if end_stream:
            self.ended.add(sid)


# --------------------------------------------------------------------------- harness


def _proxy_tasks() -> list[str]:
    """Names of every running task of trioproxy's own code."""
    names: list[str] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task.name.startswith("trioproxy."):
            names.append(task.name)
        todo.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return sorted(names)


async def _fuzz_one(frames: list[Send], half_close: bool, logs: Records) -> None:
    net = MemoryNetwork()
    with trio.fail_after(4 * 3600):  # virtual time: a hang fails at once
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, network=net)
            mesh = simple_mesh(
                [route_to("svc")],
                [cluster("svc", up)],
                idle_timeout=30.0,
                stream_idle_timeout=30.0,
            )
            server = await start_proxy(nursery, mesh, net)
            port = server.listener_address("ingress").port
            await quiet()
            baseline = _proxy_tasks()

            writer = Writer()
            payload = PREFACE + SettingsFrame(0).serialize()
            payload += b"".join(writer.frame(f) for f in frames)
            client = await net.connect_tcp("127.0.0.1", port, timeout=0)
            try:
                await client.send_all(payload)
                await trio.testing.wait_all_tasks_blocked()
                if half_close:
                    await client.send_eof()  # type: ignore[attr-defined]
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            received = bytearray()
            while chunk := await client.receive_some(65536):
                received += chunk
            await client.aclose()
            await quiet()

            AnswerChecker(writer.opened).check(bytes(received))
            check_no_crash(server, logs)
            assert _proxy_tasks() == baseline, "a task outlived its connection"
            pool = server.clusters.get("svc").hosts[0].pool  # type: ignore[union-attr]
            assert pool.active == pool.idle_count, "a pool connection is still lent"

            async with H2Client(await net.connect_tcp("127.0.0.1", port, timeout=0)) as c:
                resp = await c.request("GET", "/after")
                assert resp.status == 200, resp
            await quiet()
            check_no_crash(server, logs)
            nursery.cancel_scope.cancel()


def fuzz_one(frames: list[Send], half_close: bool) -> None:
    run(_fuzz_one, frames, half_close)


# --------------------------------------------------------------------------- targets


def H(block: str, sid: str = "new", **kw: Any) -> Send:
    fields = {"end_stream": True, "end_headers": True, "continuation": True, "padded": False}
    fields.update(kw, block=block)
    fields.setdefault("priority", None)
    return Send("headers", sid, tuple(sorted(fields.items())))


@fuzz_settings()
@given(frames=st.lists(FRAMES, max_size=12), half_close=st.booleans())
@example(frames=[], half_close=True)
@example(frames=[H("get")], half_close=False)
@example(frames=[H("post", end_stream=False), Send("data", "current", (("payload", b"abc"),
         ("end_stream", True), ("padded", False)))], half_close=True)  # fmt: skip
@example(frames=[H("get", end_headers=False, continuation=False), H("get")], half_close=True)
@example(frames=[H("get", priority="self")], half_close=True)
@example(frames=[H("get", end_stream=False), H("trailers", "current", end_stream=False)],
         half_close=False)  # fmt: skip
@time_capped
def test_frame_sequences(frames: list[Send], half_close: bool) -> None:
    fuzz_one(frames, half_close)


@fuzz_settings()
@given(
    frames=st.lists(
        st.one_of(
            st.builds(H, st.sampled_from(["get", "post", "te_trailers", "host_only"])), FRAMES
        ),
        max_size=20,
    ),
    half_close=st.booleans(),
)
@example(frames=[H("get"), H("post", end_stream=False)], half_close=True)
@time_capped
def test_mostly_valid_requests(frames: list[Send], half_close: bool) -> None:
    fuzz_one(frames, half_close)
