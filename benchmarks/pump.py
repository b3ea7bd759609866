"""A bare trio byte pump: accept, connect, copy bytes both ways; no HTTP.

    python benchmarks/pump.py --listen 28091 --backend 28080

The ceiling for any trio proxy on this machine (issue 8): one upstream
connection per downstream connection, two copy tasks each, 64 KiB reads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial

import trio

BUFSIZE = 65536


async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(BUFSIZE):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(0):
            await dst.send_eof()


async def _handle(backend_port: int, down: trio.SocketStream) -> None:
    try:
        up = await trio.open_tcp_stream("127.0.0.1", backend_port)
    except OSError:
        await down.aclose()
        return
    async with down, up, trio.open_nursery() as nursery:
        nursery.start_soon(_copy, down, up)
        nursery.start_soon(_copy, up, down)


async def _serve(listen_port: int, backend_port: int) -> None:
    await trio.serve_tcp(partial(_handle, backend_port), listen_port, host="127.0.0.1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="port to listen on")
    parser.add_argument("--backend", type=int, required=True, help="backend port")
    opts = parser.parse_args(argv)
    try:
        trio.run(_serve, opts.listen, opts.backend)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
