"""OTEL_SDK_DISABLED=true, the SDK's standard switch: telemetry off, everything else unchanged."""

from __future__ import annotations

import pytest
from opentelemetry import metrics, trace

from service.config import Settings
from service.telemetry.providers import setup_telemetry
from tests.conftest import ClientFactory


def test_the_switch_gives_no_op_providers_and_no_exposition(
    monkeypatch: pytest.MonkeyPatch, make_client: ClientFactory, settings: Settings
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_telemetry(settings)
    assert isinstance(telemetry.tracer_provider, trace.NoOpTracerProvider)
    assert isinstance(telemetry.meter_provider, metrics.NoOpMeterProvider)
    assert telemetry.prometheus_registry is None

    client = make_client(settings)  # the app builds its telemetry from the environment too
    response = client.post("/predict", json={"symbol": "AAPL"})
    assert response.status_code == 200
    assert response.json()["trace_id"] is None, "no span was made for the request"
    exposition = client.get("/metrics")
    assert exposition.status_code == 200
    assert exposition.text == ""
