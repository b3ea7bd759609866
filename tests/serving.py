"""The serving half every test server shares: listen on 127.0.0.1 (a real
port) or on a `MemoryNetwork`, record the port, and hand each connection to
the subclass's `_handle`."""

from __future__ import annotations

from typing import Any, Self

import trio


class LoopbackServer:
    host = "127.0.0.1"  # any 127.0.0.x works on Linux loopback
    port = 0  # 0: any free port, known once `run` has started

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(
        self,
        network: Any = None,
        *,
        task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a real loopback port, or on `network` (a MemoryNetwork)."""
        if network is None:
            listeners: list[Any] = await trio.open_tcp_listeners(self.port, host=self.host)
            self.port = listeners[0].socket.getsockname()[1]
        else:
            listener, (_, self.port) = await network.listen_tcp("127.0.0.1", 0)
            listeners = [listener]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        raise NotImplementedError
