"""`FrameWriter`: the one task that writes an HTTP/2 connection's output.

h2 queues frames in memory; something must send them. If streams sent them
themselves, a stream blocked on a full socket would block every other stream,
and if the connection's reader sent its own acknowledgements it could
deadlock against a peer that is itself blocked writing to us. So each HTTP/2
connection (downstream and upstream) has a reader task that never waits on a
write (the downstream reader only stops reading while more than 1 MiB waits
for a peer that does not read; see `backlog`), and this writer task:

- `kick()` (no checkpoint) asks for a write soon: the reader uses it for
  SETTINGS/PING acks and WINDOW_UPDATEs;
- `await flush()` asks for a write and waits until the bytes queued so far are
  in the kernel: streams use it so a slow peer slows its writers (the memory
  held is bounded by the peer's flow-control windows);
- `backlog` is the number of bytes taken from h2 and not yet written, and
  `await wait_backlog_below(n)` lets the reader stop reading while the peer
  does not read what we answer (PING acks, RST_STREAM, WINDOW_UPDATE are all
  caused by input, so this bounds them).

`kick()` moves h2's queued bytes into the writer's own buffer at once, so the
backlog is known without reaching into h2.

With a `FloodGuard` (downstream connections), the writer also tells it when
the frames it counted have been written, so the frames still waiting are
known (Envoy's `max_outbound_frames` accounting).

If a write fails the writer records the error, wakes every waiter and ends;
`flush()` then raises the connection's error type.
"""

from __future__ import annotations

from collections.abc import Callable

import h2.connection
import trio

from trioproxy.codec.http2 import FloodGuard
from trioproxy.net.errors import ProxyIOError
from trioproxy.net.network import Connection

__all__ = ["FrameWriter"]


class FrameWriter:
    def __init__(
        self,
        h2conn: h2.connection.H2Connection,
        conn: Connection,
        error: type[ProxyIOError],
        *,
        on_bytes: Callable[[int], None] | None = None,
        guard: FloodGuard | None = None,
    ) -> None:
        self._h2 = h2conn
        self._guard = guard
        self._conn = conn
        self._error = error
        self._on_bytes = on_bytes
        self._wake = trio.Event()
        self._done = trio.Event()
        self._queue: list[bytes] = []  # taken from h2, not yet handed to the socket
        self._queued = 0
        self._sending = 0  # bytes handed to the socket and not yet written
        self._requested = 0
        self._written = 0
        self.failed: str | None = None
        self.stopped = False

    @property
    def backlog(self) -> int:
        """Bytes taken from h2 and not yet written to the socket."""
        return self._queued + self._sending

    def kick(self) -> None:
        """Ask for the queued frames to be sent; returns at once."""
        data = self._h2.data_to_send()
        if data:
            self._queue.append(data)
            self._queued += len(data)
        self._requested += 1
        self._wake.set()

    async def flush(self) -> None:
        """Send the queued frames and wait until they are written.

        Raises:
            the connection's error type if the connection failed.
        """
        self.kick()
        target = self._requested
        while self._written < target:
            if self.failed is not None or self.stopped:
                raise self._error(self.failed or "connection closed")
            await self._done.wait()
        if self.failed is not None:
            raise self._error(self.failed)

    async def wait_backlog_below(self, limit: int) -> None:
        """Wait until fewer than `limit` bytes wait to be written (or the
        writer stopped: the caller then finds the connection closed)."""
        while self.backlog >= limit and not self.stopped:
            await self._done.wait()

    async def run(self) -> None:
        """Write until cancelled or the connection fails."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                target = self._requested
                more = self._h2.data_to_send()
                if more:
                    self._queue.append(more)
                    self._queued += len(more)
                if self._queue:
                    # Everything h2 has counted is in this batch now.
                    guard = self._guard
                    mark = guard.mark() if guard is not None else (0, 0)
                    queue, self._queue = self._queue, []
                    data = queue[0] if len(queue) == 1 else b"".join(queue)
                    self._queued = 0
                    self._sending = len(data)
                    try:
                        await self._conn.send_all(data)
                    except ProxyIOError as exc:
                        self.failed = str(exc) or "write failed"
                        return
                    finally:
                        self._sending = 0
                    if self._on_bytes is not None:
                        self._on_bytes(len(data))
                    if guard is not None:
                        guard.mark_written(mark)
                self._written = target
                done, self._done = self._done, trio.Event()
                done.set()
        finally:
            self.stopped = True
            self._done.set()
