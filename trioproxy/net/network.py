"""The one door to the network: dial, listen (and later, resolve).

Only this module opens sockets. The runtime receives a `Network` object and
uses nothing else, so tests (and a deterministic simulator) can swap in
in-memory streams under `MockClock` without changing the proxy.

`Connection` wraps a byte stream and translates trio/OS errors into the
`net.errors` tree exactly once, here.
"""

from __future__ import annotations

import errno
import os
import select
import socket as stdlib_socket
from typing import Any, Protocol

import trio

from trioproxy.net.errors import (
    ConnectFailure,
    ConnectTimeout,
    ProxyIOError,
)

__all__ = [
    "Connection",
    "DatagramSender",
    "Network",
    "TrioNetwork",
    "UdpSender",
    "accept_queued",
    "close_stream_nowait",
    "socket_of",
]

# errno values of a write on a closed socket (trio's SocketStream maps them
# to ClosedResourceError, every other OSError to BrokenResourceError).
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})

# One receive: 64 KiB, the same read size Envoy's socket reads use. It bounds
# how much one `receive_some` can pull into memory.
RECEIVE_SIZE = 65536


class Network(Protocol):
    """What the runtime may do with the network; nothing else opens sockets."""

    async def connect_tcp(self, host: str, port: int, *, timeout: float) -> trio.abc.Stream: ...

    async def listen_tcp(
        self, host: str, port: int, *, reuse_port: bool = True, backlog: int = 1024
    ) -> tuple[trio.abc.Listener[trio.abc.Stream], tuple[str, int]]:
        """A listener and the (host, port) it is bound to (the real port for 0)."""
        ...

    def addresses(self, stream: trio.abc.Stream) -> tuple[str, str]:
        """`(remote, local)` of an accepted stream as `host:port` text."""
        ...

    def open_udp(self, host: str, port: int) -> DatagramSender:
        """A datagram sender to a numeric `host:port` (stats sinks)."""
        ...


class DatagramSender(Protocol):
    """Fire-and-forget datagrams: `send_nowait` never waits and never raises."""

    def send_nowait(self, data: bytes) -> bool:
        """Send one datagram; False if it was dropped (buffer full, refused...)."""
        ...

    def close(self) -> None: ...


class UdpSender:
    """A connected, non-blocking UDP socket. A send that would block, or
    fails (e.g. ICMP port unreachable from an earlier datagram), drops the
    datagram: a stats sink must never slow the proxy down."""

    def __init__(self, host: str, port: int) -> None:
        family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
        self._sock = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        try:
            # Numeric addresses only (compile checks): no DNS on the loop.
            self._sock.connect((host, port))
        except OSError:
            self._sock.close()
            raise

    def send_nowait(self, data: bytes) -> bool:
        try:
            self._sock.send(data)
        except OSError:  # BlockingIOError, ConnectionRefusedError, ...
            return False
        return True

    def close(self) -> None:
        self._sock.close()


class TrioNetwork:
    """Real sockets through trio."""

    async def connect_tcp(self, host: str, port: int, *, timeout: float) -> trio.abc.Stream:
        """Connect within `timeout` seconds (0 = no limit).

        Raises:
            ConnectTimeout: the timeout elapsed.
            ConnectFailure: refused, unreachable, or any other OS error.
        """
        with trio.move_on_after(timeout if timeout > 0 else float("inf")) as scope:
            try:
                return await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise ConnectFailure(_describe(exc)) from None
        assert scope.cancelled_caught
        raise ConnectTimeout(f"connect to {host}:{port} timed out after {timeout}s")

    async def listen_tcp(
        self, host: str, port: int, *, reuse_port: bool = True, backlog: int = 1024
    ) -> tuple[trio.abc.Listener[trio.abc.Stream], tuple[str, int]]:
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(trio.socket, "SO_REUSEPORT"):
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            await sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        return trio.SocketListener(sock), (host, port)

    def open_udp(self, host: str, port: int) -> UdpSender:
        return UdpSender(host, port)

    def addresses(self, stream: trio.abc.Stream) -> tuple[str, str]:
        sock: Any = socket_of(stream)
        return _fmt_addr(sock.getpeername()), _fmt_addr(sock.getsockname())


def socket_of(stream: object) -> object | None:
    """The OS socket under `stream`, looking through wrappers (TLS, replayed
    bytes) by their `transport_stream`; None for memory streams."""
    for _ in range(8):  # wrappers nest a few deep at most
        sock: object | None = getattr(stream, "socket", None)
        if sock is not None:
            return sock
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return None
        stream = inner
    return None


def close_stream_nowait(stream: object) -> None:
    """Close `stream` at once, without a checkpoint (for `finally` blocks
    under cancellation). A TLS stream is closed without close_notify."""
    sock = socket_of(stream)
    if sock is not None:
        sock.close()  # type: ignore[attr-defined]
        return
    for _ in range(8):
        close = getattr(stream, "close", None)  # trio's memory streams
        if callable(close):
            close()
            return
        halves = (getattr(stream, "send_stream", None), getattr(stream, "receive_stream", None))
        if all(callable(getattr(h, "close", None)) for h in halves):
            for half in halves:  # a trio.StapledStream of memory streams
                half.close()  # type: ignore[union-attr]
            return
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return
        stream = inner


def _fmt_addr(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name} {exc.strerror or exc}".strip()


class Connection:
    """A byte stream whose errors are mapped to one `ProxyIOError` subclass.

    Args:
        stream: the trio stream.
        error: the exception type raised when the peer goes away
            (`UpstreamReset` for upstreams, `DownstreamReset` for clients).
    """

    __slots__ = ("_error", "_sending", "_sock", "closed", "stream")

    def __init__(self, stream: trio.abc.Stream, error: type[ProxyIOError]) -> None:
        self.stream = stream
        self._error = error
        self.closed = False
        # The trio socket of a plain TCP stream, for `send_all`'s direct
        # write; None for TLS and memory streams (they always take trio's path).
        self._sock: trio.socket.SocketType | None = (
            stream.socket if type(stream) is trio.SocketStream else None
        )
        self._sending = False  # a send is waiting in trio's path

    async def receive_some(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._error(str(exc) or type(exc).__name__) from None
        # trio's socket streams return bytes; memory streams may not.
        return data if type(data) is bytes else bytes(data)

    async def send_all(self, data: bytes) -> None:
        """Send all of `data`.

        On a plain TCP stream the bytes are first written directly: when the
        kernel takes them all (the usual case for a proxied message), no
        trio schedule point follows. trio's `send_all` would yield to the
        scheduler after every write that did not block; that round trip
        costs about as much as the rest of a small send. It is still a
        cancellation point (`checkpoint_if_cancelled`, as trio's send starts
        with), and whatever the kernel does not take at once goes through
        trio's `send_all`, which waits for room.
        """
        sock = self._sock
        if sock is not None and not self._sending and not sock.did_shutdown_SHUT_WR:
            await trio.lowlevel.checkpoint_if_cancelled()
            if not data:
                # Nothing to write (e.g. the empty end of a sized body): no
                # schedule point either, only trio's closed check.
                if sock.fileno() == -1:
                    raise self._error("socket was already closed")
                return
            try:
                # fileno() is -1 once closed: EBADF, "already closed" below.
                sent = os.write(sock.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                # The messages trio's SocketStream gives for the same errors.
                if exc.errno in _CLOSED_ERRNOS:
                    raise self._error("this socket was already closed") from None
                raise self._error(f"socket connection broken: {exc}") from None
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        busy = self._sending  # a second sender: trio raises BusyResourceError
        self._sending = True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._error(str(exc) or type(exc).__name__) from None
        finally:
            self._sending = busy

    async def send_eof(self) -> None:
        """Shut our write half (half-close) if the stream can; TLS streams cannot."""
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None:
            return
        try:
            await send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._error(str(exc) or type(exc).__name__) from None

    async def aclose(self) -> None:
        """Close at once (never waits on the peer); safe to call twice."""
        if self.closed:
            return
        self.closed = True
        await trio.aclose_forcefully(self.stream)

    def close_nowait(self) -> None:
        """Close without a checkpoint, for `finally` blocks under cancellation."""
        if self.closed:
            return
        self.closed = True
        close_stream_nowait(self.stream)

    def peer_closed(self) -> bool:
        """True if the peer has closed or sent unexpected bytes (idle-pool check).

        A pooled idle connection must have nothing to read; readable means EOF,
        a reset, or garbage, and in every case it must not be reused.
        """
        sock = socket_of(self.stream)
        if sock is None:
            return False
        try:
            fd = sock.fileno()  # type: ignore[attr-defined]
        except OSError:
            return True
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))


def accept_queued(
    listener: trio.abc.Listener[trio.abc.Stream],
) -> tuple[list[trio.abc.Stream], str]:
    """Accept, without waiting, every connection queued on a real listening
    socket (none for other listeners), and say why it stopped if not because
    the queue was empty ("" then). No checkpoint: the socket can be closed
    right after, with nothing new queued in between but what the kernel adds
    within microseconds (a drain's last look at its accept queue)."""
    if not isinstance(listener, trio.SocketListener):
        return [], ""
    raw = stdlib_socket.socket(fileno=os.dup(listener.socket.fileno()))
    taken: list[trio.abc.Stream] = []
    try:
        raw.setblocking(False)
        while True:
            try:
                conn, _ = raw.accept()
            except (BlockingIOError, InterruptedError):
                return taken, ""
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                return taken, str(exc)
            taken.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
    finally:
        raw.close()
