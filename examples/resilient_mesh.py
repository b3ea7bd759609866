"""A mesh that keeps requests alive when upstreams misbehave.

    trioproxy serve examples/resilient_mesh.py
    curl localhost:10000/api/orders          # retried, hedged, health-checked
    curl localhost:10000/search?q=trio       # two tries race, the first answer wins
    curl -H 'x-user-id: 42' localhost:10000/profile   # the same user, the same host
    curl localhost:9901/clusters             # per-host health flags
    curl -X POST localhost:9901/healthcheck/fail      # take this proxy out of its LB

Each upstream here is a small demo server that trioproxy starts itself, so the
example runs on its own. Replace the `demo_service(...)` lines and the
addresses with your services.

What each piece does, from the outside in:

- `http(...).health_check("/lb-health")`: the load balancer in front of this
  proxy probes `/lb-health`. The proxy answers it itself: 200 while healthy,
  503 after `POST /healthcheck/fail` on the admin port, so an operator can
  drain this node before a restart.
- `retry(...)`: a failed try (a 5xx, a reset, a refused connection, or a try
  slower than `per_try_timeout`) is tried again on another host, with
  Envoy's jittered back-off (25 ms base, 250 ms cap). `timeout` on the route
  bounds all tries together.
- `hedge(on_per_try_timeout=True)`: when a try is slow, do not give up on
  it: start a second try beside it and take whichever answers first.
- `hedge(initial=2, delay="20ms")`: request racing. Send a second try if the
  first has not answered within 20 ms; the loser is cancelled.
- `.circuit_breakers(...)`: at most this many connections and requests to
  the cluster; beyond that the proxy answers 503 at once (flag UO) instead
  of piling work on a struggling service.
- `.health_check(...)`: the proxy probes every host every 5 s; a host that
  fails twice in a row leaves the load balancer until it passes again.
- `.outlier_detection(...)`: a host that answers 5xx five times in a row is
  ejected for 30 s (longer each time it happens again).
- `lb="ring_hash"` with `hash_policy`: requests carrying the same
  `x-user-id` (or, without it, the same `session` cookie, which the proxy
  sets when missing) go to the same host, and only ~1/N of users move when a
  host comes or goes.
"""

from trioproxy.dsl import (
    admin,
    cluster,
    demo_service,
    hash_cookie,
    hash_header,
    hedge,
    http,
    listener,
    mesh,
    prefix,
    retry,
)

api = (
    cluster("api", "127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103", lb="least_request")
    .circuit_breakers(max_connections=256, max_pending_requests=128, max_requests=512)
    .health_check("/healthz", interval="5s", timeout="1s", unhealthy_threshold=2)
    .outlier_detection(consecutive_5xx=5, base_ejection_time="30s", max_ejection_percent=34)
)

search = (
    cluster("search", "127.0.0.1:8104", "127.0.0.1:8105")
    .health_check("/healthz", interval="5s")
    .outlier_detection()
)

profiles = cluster(
    "profiles", "127.0.0.1:8106", "127.0.0.1:8107", "127.0.0.1:8108", lb="ring_hash"
).health_check("/healthz", interval="5s")

MESH = mesh(
    listener("ingress", ":10000")
    .chain(http(stat_prefix="ingress_http").health_check("/lb-health").access_log("-"))
    .route(
        prefix("/api"),
        api,
        timeout="5s",
        retry=retry(on="5xx,reset,connect-failure", num_retries=2, per_try_timeout="1s"),
        hedge=hedge(on_per_try_timeout=True),
    )
    .route(
        prefix("/search"),
        search,
        timeout="2s",
        retry=retry(on="5xx,reset,connect-failure", num_retries=1),
        hedge=hedge(initial=2, delay="20ms"),
    )
    .route(
        prefix("/profile"),
        profiles,
        retry=retry(on="connect-failure,reset"),
        hash_policy=[hash_header("x-user-id", terminal=True), hash_cookie("session", ttl="1h")],
    ),
    admin("127.0.0.1:9901"),
    *(demo_service(f"api {i}", f"127.0.0.1:{8100 + i}") for i in (1, 2, 3)),
    *(demo_service(f"search {i}", f"127.0.0.1:{8103 + i}") for i in (1, 2)),
    *(demo_service(f"profiles {i}", f"127.0.0.1:{8105 + i}") for i in (1, 2, 3)),
)
