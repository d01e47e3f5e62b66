"""The adaptive hold's state reaches each process's Prometheus gauges."""

from __future__ import annotations

from prometheus_client import REGISTRY

from backends.metered import sidecar_metrics
from gateway.telemetry import export_pace


def test_the_gateway_exports_its_hold_and_loop_lag() -> None:
    export_pace(0.025, 0.004)
    assert REGISTRY.get_sample_value("llmgw_gateway_stream_hold_seconds") == 0.025
    assert REGISTRY.get_sample_value("llmgw_gateway_event_loop_lag_seconds") == 0.004
    export_pace(0.0, 0.0)
    assert REGISTRY.get_sample_value("llmgw_gateway_stream_hold_seconds") == 0.0


def test_the_sidecar_exports_its_hold_and_loop_lag() -> None:
    sidecar_metrics().export_pace(0.03, 0.006)
    assert REGISTRY.get_sample_value("llmgw_sidecar_stream_hold_seconds") == 0.03
    assert REGISTRY.get_sample_value("llmgw_sidecar_event_loop_lag_seconds") == 0.006
