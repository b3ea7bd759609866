"""The DSL's `hedge(...)` route option: compiled to `HedgePolicy`, mistakes
reported as `file:line: message` like every other builder."""

from __future__ import annotations

import re

import pytest
from trioproxy.dsl import (
    HedgeBuilder,
    MeshError,
    cluster,
    direct_response,
    hedge,
    listener,
    mesh,
    prefix,
    retry,
)

from trioproxy.config import HedgePolicy, Mesh, RouteAction

HERE = __file__
S1 = cluster("service1", "127.0.0.1:8081")


def action_of(m: Mesh) -> object:
    manager = m.listeners[0].filter_chains[0].filters[0]
    return manager.route_config.virtual_hosts[0].routes[0].action  # type: ignore[attr-defined]


def errors(**opts: object) -> list[str]:
    m = mesh(listener("l", ":0").route(prefix("/"), "service1", **opts), S1)  # type: ignore[arg-type]
    with pytest.raises(MeshError) as info:
        m.compile()
    for issue in info.value.issues:
        assert issue.location is not None and issue.location.file == HERE, issue
    return [re.sub(re.escape(HERE) + r":\d+", "HERE", i.message) for i in info.value.issues]


def test_hedge_compiles_to_a_hedge_policy() -> None:
    m = mesh(
        listener("l", ":0").route(
            prefix("/"),
            S1,
            retry=retry("5xx", per_try_timeout="100ms"),
            hedge=hedge(initial=2, delay="50ms", on_per_try_timeout=True),
        ),
        S1,
    ).compile()
    action = action_of(m)
    assert isinstance(action, RouteAction)
    assert action.hedge_policy == HedgePolicy(
        initial_requests=2, additional_request_delay=0.05, hedge_on_per_try_timeout=True
    )


def test_racing_needs_no_retry_policy() -> None:
    m = mesh(listener("l", ":0").route(prefix("/"), S1, hedge=hedge(initial=3)), S1).compile()
    action = action_of(m)
    assert isinstance(action, RouteAction)
    assert action.hedge_policy == HedgePolicy(initial_requests=3)
    assert action.retry_policy is None


def test_one_try_is_no_hedge() -> None:
    m = mesh(listener("l", ":0").route(prefix("/"), S1, hedge=hedge()), S1).compile()
    action = action_of(m)
    assert isinstance(action, RouteAction) and action.hedge_policy is None


def test_hedge_mistakes() -> None:
    assert errors(hedge=hedge(on_per_try_timeout=True)) == [
        "hedge(on_per_try_timeout=True) needs the route's retry(per_try_timeout=...)"
        " (it hedges when that timeout fires)"
    ]
    assert errors(hedge=hedge(initial=0)) == ["bad hedge initial 0 (expected an integer >= 1)"]
    assert errors(hedge=hedge(initial=1, delay="10ms")) == [
        "hedge(delay=...) needs initial >= 2 (the tries it spaces out)"
    ]
    assert errors(hedge=hedge(initial=2, delay="soon")) != []
    assert errors(hedge="fast") == ["route option hedge= takes hedge(...), got str"]


def test_hedge_needs_a_forwarding_route() -> None:
    m = mesh(
        listener("l", ":0").route(prefix("/"), direct_response(200), hedge=hedge(initial=2)), S1
    )
    with pytest.raises(MeshError) as info:
        m.compile()
    assert [i.message for i in info.value.issues] == [
        "route option hedge= needs a cluster or weighted() target, not direct_response()"
    ]


def test_builder_is_exported() -> None:
    assert isinstance(hedge(initial=2), HedgeBuilder)
