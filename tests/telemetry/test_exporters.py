"""Outlets from the standard variables: OTEL_METRICS_EXPORTER, OTEL_TRACES_EXPORTER, the endpoint."""

from __future__ import annotations

import subprocess

import pytest

from service.telemetry.exporters import UnsupportedExporterError, metric_exporters, trace_exporters
from tests.harness.service import STOCKPRED

OTEL_VARIABLES = (
    "OTEL_METRICS_EXPORTER",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_without_a_collector_metrics_go_to_the_endpoint_and_spans_nowhere() -> None:
    assert metric_exporters() == {"prometheus"}
    assert trace_exporters() == set()


def test_an_otlp_endpoint_makes_otlp_the_one_outlet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert metric_exporters() == {"otlp"}, "one reader, not two aggregating every measurement"
    assert trace_exporters() == {"otlp"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("otlp,prometheus", {"otlp", "prometheus"}), (" Prometheus ", {"prometheus"}), ("none", set())],
)
def test_the_variable_wins(monkeypatch: pytest.MonkeyPatch, value: str, expected: set[str]) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", value)
    assert metric_exporters() == expected


def test_a_misspelt_exporter_is_an_error_not_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otpl")
    with pytest.raises(UnsupportedExporterError, match="otpl"):
        trace_exporters()


def test_several_workers_refuse_the_prometheus_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker has its own registry: a scrape would see one of them at random."""
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    result = subprocess.run(
        [str(STOCKPRED), "serve", "--workers", "2", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2
    assert "OTEL_METRICS_EXPORTER=otlp" in result.stdout + result.stderr
