"""Access-log sinks and loggers: the I/O half of access logging.

What lives here: `AccessLogSink`, which buffers finished lines in memory and
writes them from a worker thread (Envoy's "file flusher thread", so the event
loop never blocks on disk); `AccessLogger`, one configured access log (a
compiled format plus a sink); and `AccessLogManager`, which shares one sink
per path and runs them all.

What must not: parsing or formatting. Format strings are compiled by the
sans-IO `trioproxy.codec.access_log_format`; this module only writes text.

Hot path: `AccessLogger.log()` formats and `AccessLogSink.write()` appends to
a list. Neither awaits, blocks nor allocates beyond the line itself.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import sys
import threading
from typing import BinaryIO, Final

import attrs
import trio

from trioproxy.codec.access_log_format import Formatter, compile_format, compile_json_format
from trioproxy.codec.stream import StreamInfo
from trioproxy.config import AccessLog
from trioproxy.observe.access_log_filter import Predicate, RuntimeReader, compile_filter

__all__ = [
    "AccessLogManager",
    "AccessLogSink",
    "AccessLogSinkStatistics",
    "AccessLogger",
]

logger = logging.getLogger("trioproxy.access_log")

# Flush as soon as this much text is buffered, without waiting for the
# interval: Envoy's file access log flushes at 64 KiB (MIN_FLUSH_SIZE).
FLUSH_THRESHOLD: Final = 64 * 1024
# Flush at least this often. Envoy's --file-flush-interval-msec defaults to
# 10 s; we flush every second so `tail -f` shows requests promptly, at a cost
# of one thread hop per second per sink.
DEFAULT_FLUSH_INTERVAL: Final = 1.0
# Memory bound: once this many characters (= bytes for ASCII lines) wait
# for the writer (the disk is stuck or far slower than traffic), new lines
# are dropped and counted in `dropped` rather than growing without limit.
# 16 MiB is ~100k default-format lines, many seconds of a busy proxy's
# traffic. Besides the buffer, normally only the chunk being written is in
# flight (the run task flushes one chunk at a time), so a sink holds about
# twice this at worst.
MAX_BUFFER: Final = 16 * 1024 * 1024
# On shutdown the final flush gets this long; a writer stuck on a dead disk is
# then abandoned (its thread finishes on its own) so shutdown is bounded.
FINAL_FLUSH_TIMEOUT: Final = 5.0

_STDOUT_PATHS: Final = frozenset({"-", "/dev/stdout"})
_STDERR_PATHS: Final = frozenset({"/dev/stderr"})


class _Control:
    """A command queued between chunks, so it runs in order with the writes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_REOPEN: Final = _Control("reopen")
_CLOSE: Final = _Control("close")


@attrs.frozen(kw_only=True)
class AccessLogSinkStatistics:
    """A snapshot of one sink.

    Attributes:
        buffered: characters written but not yet handed to the writer thread.
        dropped: lines dropped because the buffer was full.
        write_errors: chunks lost to an OSError opening or writing the file.
        flushes: how many times the buffer was handed to the writer thread.
    """

    buffered: int
    dropped: int
    write_errors: int
    flushes: int


def _normalize(path: str) -> str:
    if path in _STDOUT_PATHS:
        return "/dev/stdout"
    return path


class AccessLogSink:
    """One output (stdout, stderr or a file), buffered and written off-loop.

    `write()` only appends to memory. `run()` is the background task that
    hands the buffer to a worker thread every `flush_interval` seconds, or as
    soon as `flush_threshold` characters are waiting. Lines are written in the
    order they were given, UTF-8 encoded. Files are opened for append, lazily,
    by the writer thread.

    Args:
        path: "-" or "/dev/stdout" for stdout, "/dev/stderr" for stderr,
            anything else is a file path.
        flush_interval: seconds between flushes.
        flush_threshold: buffered characters that trigger an early flush.
        max_buffer: buffered characters past which new lines are dropped.
        final_flush_timeout: seconds the final flush may take on shutdown.
    """

    def __init__(
        self,
        path: str,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        flush_threshold: int = FLUSH_THRESHOLD,
        max_buffer: int = MAX_BUFFER,
        final_flush_timeout: float = FINAL_FLUSH_TIMEOUT,
    ) -> None:
        self.path = path
        self._stream = (
            "stdout" if path in _STDOUT_PATHS else "stderr" if path in _STDERR_PATHS else None
        )
        self._flush_interval = flush_interval
        self._flush_threshold = flush_threshold
        self._max_buffer = max_buffer
        self._final_flush_timeout = final_flush_timeout
        # Owned by the trio thread.
        self._buffer: list[str] = []
        self._buffered = 0
        self._wakeup = trio.Event()
        self._running = False
        self._flushes = 0
        self.dropped = 0
        # Shared with writer threads. The trio thread only appends to
        # `_pending`; writer threads pop from it while holding `_io_lock`, so
        # chunks are written in order even if an abandoned writer (cancelled
        # flush) is still running when the next one starts.
        self._pending: collections.deque[str | _Control] = collections.deque()
        self._io_lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._write_errors = 0

    # -- hot path ---------------------------------------------------------

    def write(self, line: str) -> None:
        """Buffer `line` (which carries its own newline). Never blocks.

        Call from the trio thread. If the buffer is over `max_buffer`, the
        line is dropped and counted in `dropped`.
        """
        size = self._buffered
        if size >= self._max_buffer:
            self.dropped += 1
            return
        self._buffer.append(line)
        self._buffered = size + len(line)
        if size < self._flush_threshold <= self._buffered:
            self._wakeup.set()

    # -- control ----------------------------------------------------------

    def reopen(self) -> None:
        """Close and reopen the file on the next flush (log rotation, SIGUSR1).

        Lines written before the call still go to the old file.
        """
        self._hand_over()
        self._pending.append(_REOPEN)

    def statistics(self) -> AccessLogSinkStatistics:
        return AccessLogSinkStatistics(
            buffered=self._buffered,
            dropped=self.dropped,
            write_errors=self._write_errors,
            flushes=self._flushes,
        )

    async def flush(self) -> None:
        """Write everything buffered so far and wait until it is written.

        Cancelling this abandons the wait, not the write: the worker thread
        finishes writing in the background.
        """
        self._hand_over()
        # Also wait behind a writer abandoned by an earlier cancelled flush.
        if self._pending or self._io_lock.locked():
            await trio.to_thread.run_sync(self._drain, abandon_on_cancel=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush periodically until cancelled, then flush once more and close.

        The final flush is shielded from the cancellation and bounded by
        `final_flush_timeout`.

        Raises:
            RuntimeError: if this sink's `run()` is already running.
        """
        if self._running:
            raise RuntimeError(f"AccessLogSink({self.path!r}).run() is already running")
        self._running = True
        try:
            task_status.started()
            while True:
                if self._buffered < self._flush_threshold:
                    self._wakeup = trio.Event()
                    with trio.move_on_after(self._flush_interval):
                        await self._wakeup.wait()
                await self.flush()
        finally:
            self._running = False
            with trio.move_on_after(self._final_flush_timeout, shield=True) as scope:
                self._hand_over()
                self._pending.append(_CLOSE)
                await trio.to_thread.run_sync(self._drain, abandon_on_cancel=True)
            if scope.cancelled_caught:
                logger.warning(
                    "access log %s: final flush did not finish in %.1f s; abandoned",
                    self.path,
                    self._final_flush_timeout,
                )

    # -- internals --------------------------------------------------------

    def _hand_over(self) -> None:
        """Move the buffer to the writer queue."""
        if self._buffer:
            self._pending.append("".join(self._buffer))
            self._buffer = []
            self._buffered = 0
            self._flushes += 1

    def _drain(self) -> None:
        """Worker thread: write every pending chunk, in order."""
        with self._io_lock:
            pending = self._pending
            while pending:
                item = pending.popleft()
                if isinstance(item, _Control):
                    self._close_file()
                else:
                    self._write_chunk(item)

    def _write_chunk(self, chunk: str) -> None:
        try:
            if self._stream is not None:
                # Looked up per write so redirection (and pytest capture) works.
                stream = sys.stdout if self._stream == "stdout" else sys.stderr
                stream.write(chunk)
                stream.flush()
                return
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 (kept open across flushes)
            self._file.write(chunk.encode("utf-8", "replace"))
            self._file.flush()
        except (OSError, ValueError) as exc:
            # The chunk is lost; keep serving traffic. Reopen on the next write.
            self._write_errors += 1
            logger.warning("access log %s: write failed: %s", self.path, exc)
            self._close_file()

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                self._write_errors += 1
                logger.warning("access log %s: close failed: %s", self.path, exc)

    def __repr__(self) -> str:
        return f"<AccessLogSink {self.path!r} buffered={self._buffered}>"


class AccessLogger:
    """One configured access log: a compiled format writing to a sink.

    Args:
        config: the access log's config (`path`, `format`).
        sink: where lines go; usually `AccessLogManager.logger()` picks it.
        hostname: the value of `%HOSTNAME%`.

    Raises:
        trioproxy.codec.access_log_format.FormatError: a bad format string.
    """

    __slots__ = ("_filter", "_format", "config", "sink")

    def __init__(
        self,
        config: AccessLog,
        sink: AccessLogSink,
        *,
        hostname: str = "-",
        runtime: RuntimeReader | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        if config.json_format is not None:
            fields = json.loads(config.json_format)
            self._format: Formatter = compile_json_format(fields, hostname=hostname)
        else:
            self._format = compile_format(config.format, hostname=hostname)
        self._filter: Predicate | None = (
            None if config.filter is None else compile_filter(config.filter, runtime)
        )

    def log(self, info: StreamInfo) -> None:
        """Format `info` (if the filter passes it) and buffer the line. Never blocks."""
        if self._filter is None or self._filter(info):
            self.sink.write(self._format(info))


class AccessLogManager:
    """Shares one sink per output path among loggers and runs the sinks.

    Sinks created while `run()` is running are started in its nursery.

    Args:
        hostname: the value of `%HOSTNAME%`; defaults to the machine's name.
        flush_interval: passed to every sink.
    """

    def __init__(
        self,
        *,
        hostname: str | None = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        runtime: RuntimeReader | None = None,
    ) -> None:
        self.hostname = socket.gethostname() if hostname is None else hostname
        self._runtime = runtime
        self._flush_interval = flush_interval
        self._sinks: dict[str, AccessLogSink] = {}
        self._nursery: trio.Nursery | None = None
        self._running = False

    def sink(self, path: str) -> AccessLogSink:
        """The sink for `path` ("-" and "/dev/stdout" are the same sink)."""
        key = _normalize(path)
        sink = self._sinks.get(key)
        if sink is None:
            sink = AccessLogSink(path, flush_interval=self._flush_interval)
            self._sinks[key] = sink
            if self._nursery is not None:
                self._nursery.start_soon(sink.run)
        return sink

    def logger(self, config: AccessLog) -> AccessLogger:
        """A logger for `config`, sharing the sink of any other logger on its path."""
        return AccessLogger(
            config, self.sink(config.path), hostname=self.hostname, runtime=self._runtime
        )

    def sinks(self) -> tuple[AccessLogSink, ...]:
        return tuple(self._sinks.values())

    def reopen(self) -> None:
        """Reopen every file on its next flush (SIGUSR1, POST /reopen_logs)."""
        for sink in self._sinks.values():
            sink.reopen()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink until cancelled; each flushes and closes on the way out.

        Raises:
            RuntimeError: if already running.
        """
        if self._running:
            raise RuntimeError("AccessLogManager.run() is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                # Sinks created from here on are started by `sink()`.
                self._nursery = nursery
                for sink in list(self._sinks.values()):
                    await nursery.start(sink.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._running = False
