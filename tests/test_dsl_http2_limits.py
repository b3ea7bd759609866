"""`http(...).http2_limits(...)`: the HTTP/2 flood limits reach the config
graph with Envoy's defaults, and bad values are compile errors."""

from __future__ import annotations

import pytest
from trioproxy.dsl import HttpBuilder, MeshError, cluster, http, listener, mesh, prefix

from trioproxy.config import HttpConnectionManager, Mesh


def _hcm(chain: HttpBuilder) -> HttpConnectionManager:
    ingress = listener("ingress", "127.0.0.1:0").chain(chain)
    compiled: Mesh = mesh(ingress.route(prefix("/"), cluster("svc", "127.0.0.1:8081"))).compile()
    hcm = compiled.listeners[0].filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    return hcm


def test_defaults_are_envoys() -> None:
    hcm = _hcm(http("in"))
    assert hcm.max_outbound_frames == 10000
    assert hcm.max_outbound_control_frames == 1000
    assert hcm.max_consecutive_inbound_frames_with_empty_payload == 1
    assert hcm.max_inbound_priority_frames_per_stream == 100
    assert hcm.max_inbound_window_update_frames_per_data_frame_sent == 10
    assert hcm.premature_reset_total_stream_count == 500
    assert hcm.premature_reset_min_stream_lifetime == 1.0


def test_limits_are_set() -> None:
    hcm = _hcm(
        http("in").http2_limits(
            max_outbound_frames=500,
            premature_reset_total_stream_count=0,
            premature_reset_min_stream_lifetime="250ms",
        )
    )
    assert hcm.max_outbound_frames == 500
    assert hcm.max_outbound_control_frames == 1000
    assert hcm.premature_reset_total_stream_count == 0
    assert hcm.premature_reset_min_stream_lifetime == 0.25


@pytest.mark.parametrize(
    "kw",
    [{"max_outbound_frames": 0}, {"max_inbound_priority_frames_per_stream": -1}],
    ids=["zero", "negative"],
)
def test_bad_limits_are_compile_errors(kw: dict[str, int]) -> None:
    with pytest.raises(MeshError, match=next(iter(kw))):
        _hcm(http("in").http2_limits(**kw))
