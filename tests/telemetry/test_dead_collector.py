"""A collector that is down costs dropped telemetry, never a failed or stalled request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.telemetry.providers import setup_telemetry
from tests.conftest import make_settings
from tests.harness import free_port

SYMBOLS = ["AAPL", "AMZN", "GOOGL", "MSFT", "NVDA"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_requests_succeed_and_shutdown_is_bounded_with_the_collector_down(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every export is refused
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", dead)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")  # export (and fail) often
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # seconds: bounds each failed export
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp,prometheus")  # /metrics too, to look at
    settings = make_settings(data_dir)
    telemetry = setup_telemetry(settings)
    statuses = []
    with TestClient(create_app(settings, telemetry)) as client:
        for _ in range(40):
            for symbol in SYMBOLS:
                statuses.append(client.post("/predict", json={"symbol": symbol}).status_code)
        # the app still measures, whatever happens to the exports
        assert "predictions_total" in client.get("/metrics").text
    assert set(statuses) == {200}
    started = time.monotonic()
    telemetry.shutdown()  # flushes: each signal gives up on the dead endpoint within its timeout
    assert time.monotonic() - started < 30
