"""`trioproxy serve --takeover`: hot restart through the old process's admin.

    new process                                old process (serving)
    ─ compile + validate the mesh (invalid: exit 1, nothing bound)
    ─ GET  /server_info ──────────────────────▶ (found; token checked)
    ─ bind every listener (SO_REUSEPORT)        both accept now
    ─ POST /takeover ─────────────────────────▶ close admin; drain (as SIGTERM):
                                                stop accepting, take the queued
                                                connections, connection: close /
                                                GOAWAY, exit 0 once empty
    ─ bind admin (retried until the old one freed it, bounded)

This module is the client side (`find_old`, `take_over`) and a minimal
HTTP/1.1 client for the two admin calls; the old side is `Server.hand_over`
behind admin `POST /takeover`. Why not Envoy's shared-memory hot restart:
docs/decisions.md.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import TYPE_CHECKING, Any

import h11
import trio

from trioproxy.config import SocketAddress
from trioproxy.net.errors import ConnectFailure
from trioproxy.net.network import Network, TrioNetwork

if TYPE_CHECKING:
    from trioproxy.runtime.server import Server

__all__ = ["TakeoverError", "find_old", "take_over"]

log = logging.getLogger("trioproxy")

# Each admin call must answer within this (the old process is on this host).
_CALL_TIMEOUT = 10.0
# Between attempts to bind the admin address the old process is freeing.
_BIND_RETRY = 0.05


class TakeoverError(Exception):
    """Something answers at the old admin address but will not hand over
    (refuses our token, is not trioproxy, fails the request)."""


def _dial(address: SocketAddress) -> str:
    # An admin bound to the wildcard address is reached on loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)


async def _call(
    address: SocketAddress, method: str, target: str, token: str | None, network: Network
) -> tuple[int, bytes]:
    """One admin request on a fresh connection: (status, body).

    Raises:
        OSError: nothing listens at `address` (or the connection broke).
        TakeoverError: no answer within _CALL_TIMEOUT, or not HTTP.
    """
    host = _dial(address)
    headers = [
        ("host", f"{host}:{address.port}"),
        ("connection", "close"),
        ("content-length", "0"),
    ]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    conn = h11.Connection(h11.CLIENT)
    status = 0
    body = bytearray()
    with trio.move_on_after(_CALL_TIMEOUT) as scope:
        stream = await network.connect_tcp(host, address.port, timeout=0)
        async with stream:
            try:
                await stream.send_all(
                    conn.send(h11.Request(method=method, target=target, headers=headers))
                    + conn.send(h11.EndOfMessage())
                )
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
            except h11.ProtocolError as exc:
                raise TakeoverError(f"{address} does not answer as trioproxy admin: {exc}") from exc
            except trio.BrokenResourceError as exc:
                raise OSError(errno.ECONNRESET, f"{address} closed the connection") from exc
    if scope.cancelled_caught:
        raise TakeoverError(f"{address} did not answer {method} {target} in {_CALL_TIMEOUT:g}s")
    return status, bytes(body)


def _refused(address: SocketAddress, what: str, status: int, body: bytes) -> TakeoverError:
    hint = " (the new mesh's admin token is not the old one's)" if status == 401 else ""
    text = body.decode(errors="replace").strip()
    return TakeoverError(f"{address} answered {what} with {status}{hint}: {text}")


async def find_old(
    address: SocketAddress, token: str | None, network: Network | None = None
) -> dict[str, Any] | None:
    """The `/server_info` of the trioproxy whose admin is at `address`, or
    None if nothing listens there.

    Raises:
        TakeoverError: something answers, but not as a trioproxy admin that
            accepts `token`.
    """
    try:
        status, body = await _call(address, "GET", "/server_info", token, network or TrioNetwork())
    except (OSError, ConnectFailure):
        return None
    if status != 200:
        raise _refused(address, "GET /server_info", status, body)
    try:
        info = json.loads(body)
    except ValueError:
        info = None
    if not isinstance(info, dict) or not str(info.get("version", "")).startswith("trioproxy/"):
        raise TakeoverError(f"{address} is not a trioproxy admin (GET /server_info: {body[:80]!r})")
    return info


async def take_over(server: Server, old: SocketAddress, token: str | None, timeout: float) -> None:
    """Once `server` is LIVE (every listener bound, in every worker), ask the
    old process at `old` to hand over, then bind `server`'s admin, retrying
    while the old process frees the address, for up to `timeout` seconds.

    Raises:
        TakeoverError: the old process refused the handover (nothing was
            drained; the caller should stop and leave it serving).
    """
    # Polling: LIVE is a state (the supervisor's depends on its workers'
    # snapshots), not an event; this runs once per start.
    while server.state != "LIVE":
        await trio.sleep(0.01)
    try:
        status, body = await _call(old, "POST", "/takeover", token, server.network)
    except (OSError, ConnectFailure) as exc:
        log.warning("the old process at %s went away before the takeover (%s)", old, exc)
    else:
        if status != 200:
            raise _refused(old, "POST /takeover", status, body)
        log.info("took over from pid %s; it is draining", json.loads(body).get("pid"))
    if server.admin_address is None:
        return
    with trio.move_on_after(timeout):
        while True:
            try:
                await server.start_admin()
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
            await trio.sleep(_BIND_RETRY)
    # Serving matters more than admin: the old process is already draining.
    log.error(
        "admin address %s still in use after %gs; serving without admin",
        server.admin_address,
        timeout,
    )
