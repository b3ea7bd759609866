"""A small keep-alive HTTP/1.1 server: the benchmark's backend when nginx is missing.

    python benchmarks/backend.py --port 8080

Serves `GET /small` (the 6-byte body "hello\\n") and `GET /16k` (16 KiB),
the same two paths as the nginx config in templates/nginx.conf.in, and 404
for anything else. It answers pipelined requests in order and honours
`Connection: close` and HTTP/1.0.

It is written on asyncio's `Protocol` callbacks rather than on trio on
purpose: the backend must cost as little CPU as possible so that the proxied
run measures trioproxy, not a second copy of trio's per-checkpoint cost.

What it is not: a general server. Request bodies are skipped by
Content-Length, chunked request bodies are refused with 501, and header
values are not validated beyond what keep-alive and framing need.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import NamedTuple

__all__ = ["BODY_16K", "BODY_SMALL", "main"]

BODY_SMALL = b"hello\n"
BODY_16K = (b"0123456789abcdef" * 1024)[:-1] + b"\n"
assert len(BODY_16K) == 16 * 1024

# A request head larger than this is refused with 431, as nginx does past its
# large_client_header_buffers (4 x 8 KiB); wrk sends about 60 bytes.
MAX_HEAD = 32 * 1024


def _response(status: bytes, body: bytes, content_type: bytes, *, close: bool) -> bytes:
    head = [
        b"HTTP/1.1 " + status,
        b"Server: trioproxy-bench-backend",
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n"


# Heads are built once: (head keep-alive, head close, body) per path.
_ROUTES: dict[bytes, tuple[bytes, bytes, bytes]] = {
    path: (
        _response(b"200 OK", body, ctype, close=False),
        _response(b"200 OK", body, ctype, close=True),
        body,
    )
    for path, body, ctype in (
        (b"/small", BODY_SMALL, b"text/plain"),
        (b"/16k", BODY_16K, b"application/octet-stream"),
    )
}
_NOT_FOUND = (
    _response(b"404 Not Found", b"", b"text/plain", close=False),
    _response(b"404 Not Found", b"", b"text/plain", close=True),
    b"",
)


def _error(status: bytes) -> bytes:
    return _response(status, b"", b"text/plain", close=True)


class _Answer(NamedTuple):
    response: bytes
    body_length: int  # request body bytes to discard after the head
    close: bool


class _HttpProtocol(asyncio.Protocol):
    """One connection: parse request heads, answer each from `_ROUTES`."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._skip = 0  # request body bytes still to discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf += data
        out: list[bytes] = []
        close = False
        while not self._skip:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    out.append(_error(b"431 Request Header Fields Too Large"))
                    close = True
                break
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            answer = _answer(head)
            out.append(answer.response)
            body_now = min(answer.body_length, len(self._buf))
            del self._buf[:body_now]
            self._skip = answer.body_length - body_now
            if answer.close:
                close = True
                break
        if out:
            transport.write(b"".join(out))
        if close:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _answer(head: bytes) -> _Answer:
    """What to send for one request head (without its "\\r\\n\\r\\n")."""
    request_line, _, header_block = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _Answer(_error(b"400 Bad Request"), 0, True)
    method, target, version = parts
    connection = b""
    length = 0
    for line in header_block.split(b"\r\n") if header_block else ():
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if not sep:
            return _Answer(_error(b"400 Bad Request"), 0, True)
        if name == b"connection":
            connection = value.strip().lower()
        elif name == b"content-length":
            if not value.strip().isdigit():
                return _Answer(_error(b"400 Bad Request"), 0, True)
            length = int(value)
        elif name == b"transfer-encoding":
            return _Answer(_error(b"501 Not Implemented"), 0, True)
    # HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 the reverse.
    http11 = version == b"HTTP/1.1"
    close = b"close" in connection if http11 else b"keep-alive" not in connection
    keep_head, close_head, body = _ROUTES.get(target.partition(b"?")[0], _NOT_FOUND)
    response = (close_head if close else keep_head) + (b"" if method == b"HEAD" else body)
    return _Answer(response, length, close)


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_HttpProtocol, host, port, reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"backend listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
