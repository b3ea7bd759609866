"""A canary release, from the `canary` recipe: 10 % of requests to v2.

    trioproxy serve examples/canary.py
    for i in $(seq 20); do curl -s localhost:8000/; echo; done   # mostly v1, some v2
    curl -H 'x-canary: always' localhost:8000/                    # always v2
    curl localhost:8001/stats?filter=upstream_rq_2xx             # the split, counted

Change `percent` and reload to roll forward. The two versions are demo
services started by trioproxy itself.
"""

from trioproxy.dsl import demo_service
from trioproxy.recipes import canary

MESH = canary("127.0.0.1:8081", "127.0.0.1:8082", percent=10).add(
    demo_service("v1", "127.0.0.1:8081"),
    demo_service("v2", "127.0.0.1:8082"),
)
