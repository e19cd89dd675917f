"""OpenTelemetry providers for one app, with the outlets exporters.py selects.

- `/metrics`: a Prometheus reader on a per-app registry, for direct scraping (no exemplars: the
  Python Prometheus exporter never writes them). One process per scrape: see `stockpred serve`.
- OTLP: metrics every OTEL_METRIC_EXPORT_INTERVAL (5 s, the Prometheus scrape interval) and
  batched spans. Exemplars travel this way.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from prometheus_client import CollectorRegistry

from service import __version__
from service.config import Settings
from service.telemetry.exporters import (
    metric_exporters,
    otlp_metric_exporter,
    otlp_span_exporter,
    trace_exporters,
)
from service.telemetry.instruments import ServiceMetrics

DEFAULT_EXPORT_INTERVAL_MS = 5000
INSTRUMENTATION_SCOPE = "service"


@dataclass
class Telemetry:
    """Providers and instruments of one app; `shutdown` flushes and releases them."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    metrics: ServiceMetrics
    tracer: trace.Tracer
    prometheus_registry: CollectorRegistry | None = None
    _owned: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        for provider in self._owned:
            provider.shutdown()
        self._owned.clear()


def noop_telemetry() -> Telemetry:
    """Instruments that record nothing: for library use and unit tests that do not look."""
    tracer_provider = trace.NoOpTracerProvider()
    meter_provider = metrics.NoOpMeterProvider()
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metrics=ServiceMetrics(meter_provider.get_meter(INSTRUMENTATION_SCOPE)),
        tracer=tracer_provider.get_tracer(INSTRUMENTATION_SCOPE),
    )


def build_resource(settings: Settings) -> Resource:
    """service.instance.id is per process so several workers never overwrite each other's series."""
    attributes = {
        "service.name": settings.SERVICE_NAME,
        "service.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
        "deployment.environment": settings.DEPLOYMENT_ENVIRONMENT,
        "deployment.environment.name": settings.DEPLOYMENT_ENVIRONMENT,
    }
    # OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME still win, as the spec says they should.
    return Resource.create(attributes)


def setup_telemetry(
    settings: Settings,
    *,
    extra_metric_readers: Iterable[MetricReader] = (),
    extra_span_exporters: Iterable[SpanExporter] = (),
    prometheus_endpoint: bool | None = None,
    sampler: Sampler | None = None,
) -> Telemetry:
    """Providers for one app. Tests pass in-memory readers/exporters; production sets OTEL_* env.

    Outlets follow OTEL_METRICS_EXPORTER / OTEL_TRACES_EXPORTER (exporters.py);
    `prometheus_endpoint` forces the `/metrics` reader on or off (tests).

    The sampler is the argument if given, else what OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
    say (the SDK reads them), else parent-based always-on.

    OTEL_SDK_DISABLED=true (the SDK's own switch) gives no-op providers: no instrument records, no
    span is made, no reader or exporter thread runs, FastAPI's telemetry skips itself, and
    `/metrics` answers an empty exposition.
    """
    if sdk_disabled():
        return noop_telemetry()
    resource = build_resource(settings)
    readers: list[MetricReader] = list(extra_metric_readers)
    registry: CollectorRegistry | None = None
    outlets = metric_exporters()
    if prometheus_endpoint is None:
        prometheus_endpoint = "prometheus" in outlets
    if prometheus_endpoint:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    if "otlp" in outlets:
        interval = int(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_EXPORT_INTERVAL_MS))
        readers.append(PeriodicExportingMetricReader(otlp_metric_exporter(), export_interval_millis=interval))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    for exporter in extra_span_exporters:
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    if "otlp" in trace_exporters():
        # Batches in a background thread with a bounded queue: a dead collector drops spans, no more.
        tracer_provider.add_span_processor(_batch_processor())

    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metrics=ServiceMetrics(meter_provider.get_meter(INSTRUMENTATION_SCOPE, __version__)),
        tracer=tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__),
        prometheus_registry=registry,
        _owned=[meter_provider, tracer_provider],
    )


# Small batches, often: encoding a span holds the GIL, and the SDK's default (512 spans every 5 s)
# stalls every request queued behind the encoding of a whole batch (measured: p99 at one
# connection +190 ms). 64 spans every 100 ms costs the same CPU and no stall. OTEL_BSP_* win.
BSP_SCHEDULE_DELAY_MS = 100
BSP_MAX_EXPORT_BATCH_SIZE = 64


def _batch_processor() -> BatchSpanProcessor:
    return BatchSpanProcessor(
        otlp_span_exporter(),
        schedule_delay_millis=float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", BSP_SCHEDULE_DELAY_MS)),
        max_export_batch_size=int(
            os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BSP_MAX_EXPORT_BATCH_SIZE)
        ),
    )


def sdk_disabled() -> bool:
    """The standard switch, read the way the SDK reads it (case-insensitive "true")."""
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"
