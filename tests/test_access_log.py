"""Access-log sinks and loggers: buffering, flushing, shutdown, reopen."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import IN_CI
from trioproxy.codec.stream import RequestHead, StreamInfo
from trioproxy.config import AccessLog
from trioproxy.observe.access_log import (
    FLUSH_THRESHOLD,
    AccessLogManager,
    AccessLogSink,
)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def stop_autojump(clock: trio.testing.MockClock) -> None:
    # The autojump clock jumps whenever every task waits, including while a
    # worker thread writes; stop it before the final flush so its timeout does
    # not fire in fake time and abandon the write.
    clock.autojump_threshold = math.inf


def request_info(path: bytes = b"/") -> StreamInfo:
    info = StreamInfo(start_time=1460751420.310, start_monotonic=0.0)
    info.request = RequestHead(method=b"GET", path=path, authority=b"example.com")
    info.response_code = 200
    return info


async def test_lines_appear_after_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLogSink(str(path))
    sink.write("one\n")
    sink.write("two\n")
    assert read(path) == ""
    assert sink.statistics().buffered == 8
    await sink.flush()
    assert read(path) == "one\ntwo\n"
    sink.write("three\n")
    await sink.flush()
    assert read(path) == "one\ntwo\nthree\n"


async def test_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old\n")
    sink = AccessLogSink(str(path))
    sink.write("new\n")
    await sink.flush()
    assert read(path) == "old\nnew\n"


async def test_flush_interval(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLogSink(str(path), flush_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.write("line\n")
        await trio.sleep(0.9)
        # Not yet: the interval has not elapsed and the buffer is small.
        assert sink.statistics().flushes == 0
        assert sink.statistics().buffered == 5
        await trio.sleep(0.2)
        # At t=1.0 the run task handed the buffer to the writer thread.
        assert sink.statistics().flushes == 1
        assert sink.statistics().buffered == 0
        await sink.flush()  # wait for the thread's write to land
        assert read(path) == "line\n"
        stop_autojump(autojump_clock)
        nursery.cancel_scope.cancel()


async def test_threshold_flushes_early(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    sink = AccessLogSink(str(path), flush_interval=3600.0)
    line = "x" * 1023 + "\n"
    count = FLUSH_THRESHOLD // len(line)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        for _ in range(count - 1):
            sink.write(line)
        await trio.testing.wait_all_tasks_blocked()
        assert sink.statistics().flushes == 0
        sink.write(line)  # crosses 64 KiB
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 0
        assert sink.statistics().flushes == 1
        await sink.flush()
        assert read(path) == line * count
        stop_autojump(autojump_clock)
        nursery.cancel_scope.cancel()


async def test_cancelling_run_flushes_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLogSink(str(path), flush_interval=3600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        for i in range(100):
            sink.write(f"{i}\n")
        nursery.cancel_scope.cancel()
    assert read(path) == "".join(f"{i}\n" for i in range(100))
    assert sink.statistics().buffered == 0
    # The sink can run again afterwards; the file is reopened lazily.
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.write("again\n")
        nursery.cancel_scope.cancel()
    assert read(path).endswith("99\nagain\n")


async def test_run_twice_is_an_error(tmp_path: Path) -> None:
    sink = AccessLogSink(str(tmp_path / "access.log"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        with pytest.raises(RuntimeError, match="already running"):
            await sink.run()
        nursery.cancel_scope.cancel()


async def test_reopen_after_move_writes_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    sink = AccessLogSink(str(path))
    sink.write("before\n")
    await sink.flush()
    path.rename(rotated)
    sink.write("still old\n")  # buffered before reopen(): goes to the old file
    sink.reopen()
    sink.write("after\n")
    await sink.flush()
    assert read(rotated) == "before\nstill old\n"
    assert read(path) == "after\n"


async def test_without_reopen_writes_follow_the_moved_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    sink = AccessLogSink(str(path))
    sink.write("before\n")
    await sink.flush()
    path.rename(rotated)
    sink.write("after\n")
    await sink.flush()
    assert read(rotated) == "before\nafter\n"
    assert not path.exists()


async def test_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLogSink(str(path), max_buffer=10)
    sink.write("12345\n")
    sink.write("12345\n")  # 6 < 10 when written: accepted
    sink.write("12345\n")  # 12 >= 10: dropped
    assert sink.dropped == 1
    assert sink.statistics().dropped == 1
    await sink.flush()
    assert read(path) == "12345\n12345\n"
    sink.write("ok\n")  # room again after the flush
    await sink.flush()
    assert read(path) == "12345\n12345\nok\n"


async def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "access.log"
    sink = AccessLogSink(str(path))
    sink.write("lost\n")
    await sink.flush()
    assert sink.statistics().write_errors == 1
    path.parent.mkdir()
    sink.write("kept\n")
    await sink.flush()
    assert read(path) == "kept\n"


async def test_stdout_and_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    out = AccessLogSink("-")
    err = AccessLogSink("/dev/stderr")
    out.write("to stdout\n")
    err.write("to stderr\n")
    out.reopen()  # meaningless for a stream; must not break it
    await out.flush()
    await err.flush()
    captured = capsys.readouterr()
    assert captured.out == "to stdout\n"
    assert captured.err == "to stderr\n"


# A platform capability (POSIX FIFOs); CI runs on Linux, where it must run.
@pytest.mark.skipif(not IN_CI and not hasattr(os, "mkfifo"), reason="needs a FIFO")
async def test_final_flush_is_bounded_when_the_writer_is_stuck(tmp_path: Path) -> None:
    # Opening a FIFO with no reader blocks: a real stuck writer.
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)
    sink = AccessLogSink(str(fifo), final_flush_timeout=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.write("eventually\n")
        nursery.cancel_scope.cancel()
    # run() returned although the write could not happen; the abandoned
    # thread writes once a reader appears.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = b""
        deadline = time.monotonic() + 10
        while not data.endswith(b"\n") and time.monotonic() < deadline:
            try:
                data += os.read(fd, 100)
            except BlockingIOError:
                pass
            await trio.sleep(0.01)
        assert data == b"eventually\n"
    finally:
        os.close(fd)


async def test_manager_shares_sinks_and_runs_them(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    manager = AccessLogManager(hostname="proxy-1")
    a = manager.logger(AccessLog(path=str(path), format="a %REQ(:PATH)% %HOSTNAME%\n"))
    b = manager.logger(AccessLog(path=str(path), format="b %RESPONSE_CODE%\n"))
    assert a.sink is b.sink
    assert manager.sink("-") is manager.sink("/dev/stdout")
    assert manager.sink("/dev/stderr") is not manager.sink("-")

    late_path = tmp_path / "late.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with pytest.raises(RuntimeError, match="already running"):
            await manager.run()
        a.log(request_info(b"/x"))
        b.log(request_info())
        # A sink created while running is started in the manager's nursery.
        late = manager.logger(AccessLog(path=str(late_path), format="%REQ(:METHOD)%\n"))
        late.log(request_info())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert read(path) == "a /x proxy-1\nb 200\n"
    assert read(late_path) == "GET\n"


async def test_manager_reopen(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    manager = AccessLogManager(hostname="h")
    log = manager.logger(AccessLog(path=str(path), format="%REQ(:PATH)%\n"))
    log.log(request_info(b"/1"))
    await log.sink.flush()
    path.rename(tmp_path / "old.log")
    manager.reopen()
    log.log(request_info(b"/2"))
    await log.sink.flush()
    assert read(tmp_path / "old.log") == "/1\n"
    assert read(path) == "/2\n"


def test_manager_default_hostname_is_the_machines() -> None:
    import socket

    assert AccessLogManager().hostname == socket.gethostname()
