"""WebSocket through trioproxy: every path, upgrades allowed, to one upstream.

    trioproxy serve examples/websocket.py
    # a WebSocket server on 127.0.0.1:9002, then connect a client to
    # ws://127.0.0.1:10001/ (e.g. `python -m websockets ws://127.0.0.1:10001/`)

After the upstream answers `101 Switching Protocols` the proxy copies bytes
both ways until either side closes (half-close passed through); the stream
idle timeout (5 min) ends a silent tunnel. Upgrades are on by default;
`upgrades=False` on a route refuses them with 403.
"""

from trioproxy.dsl import admin, cluster, http, listener, mesh, prefix

chat = cluster("ws_backend", "127.0.0.1:9002")

MESH = mesh(
    listener("websocket", "127.0.0.1:10001")
    .chain(http(stat_prefix="websocket").access_log("-"))
    # A WebSocket lives longer than a request: no route timeout.
    .route(prefix("/"), chat, timeout=0, upgrades=True),
    admin("127.0.0.1:8001"),
)
