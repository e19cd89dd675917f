"""Telemetry tests: the metric contract, traces, exemplars, the Prometheus exposition and JSON logs.

Every test runs the real app (TestClient, lifespan entered) on a private copy of the seeded data
directory, with the SDK's in-memory reader and span exporter added next to the app's own
Prometheus reader. The helpers below are shared by the modules of this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.api.schemas import Bar
from service.config import Settings
from service.market.synthetic import synthetic_bars_after
from service.serving.feature_store import FeatureStore
from service.telemetry.providers import Telemetry, setup_telemetry

# Generous: background loops run every 0.2 s in test settings, so a deadline is only hit on a bug.
MONITOR_DEADLINE_SECONDS = 10.0


@dataclass
class Recorded:
    """An app's telemetry with in-memory outlets the test can read."""

    telemetry: Telemetry
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter


def recorded_telemetry(settings: Settings, *, prometheus_endpoint: bool = True) -> Recorded:
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        settings,
        extra_metric_readers=[reader],
        extra_span_exporters=[exporter],
        prometheus_endpoint=prometheus_endpoint,
    )
    return Recorded(telemetry, reader, exporter)


# --- metrics ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Collected:
    """One instrument as the reader saw it, with the scope that created it."""

    scope: str
    metric: Metric

    @property
    def points(self) -> list[Any]:
        return list(self.metric.data.data_points)


def collect(reader: InMemoryMetricReader) -> dict[str, Collected]:
    """Every instrument of one collection, by OpenTelemetry name.

    Each call is a collection: histogram exemplars are handed out once and then reset.
    """
    found: dict[str, Collected] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                assert metric.name not in found, f"{metric.name} is emitted by two scopes"
                found[metric.name] = Collected(scope_metrics.scope.name, metric)
    return found


def label_values(collected: dict[str, Collected]) -> Iterator[tuple[str, str, object]]:
    """(instrument, label key, label value) for every data point of every instrument."""
    for name, instrument in collected.items():
        for point in instrument.points:
            for key, value in (point.attributes or {}).items():
                yield name, key, value


# --- spans -----------------------------------------------------------------------------------------


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.context.trace_id == trace_id]


def hex_trace_id(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def hex_span_id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


# --- app interactions ------------------------------------------------------------------------------


def flush_feature_keys(redis_url: str) -> None:
    """Drop every cached feature vector so the next lookups go to Redis, then to the database."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=FeatureStore.redis_key("*"), count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def predict(client: TestClient, symbol: str, **headers: str) -> dict[str, Any]:
    response = client.post("/predict", json={"symbol": symbol}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def next_bar_batch(symbol: str, *, after: str, seed: int) -> dict[str, Any]:
    """The synthetic market's next bar after `after` (a prediction's as_of), as a POST body."""
    bars = synthetic_bars_after(symbol, after=datetime.fromisoformat(after), count=1, seed=seed)
    assert bars, f"the synthetic market has no bar after {after}"
    return {"bars": [Bar.from_bar_in(bar).model_dump(mode="json") for bar in bars]}
