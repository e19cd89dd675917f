"""OpenTelemetry providers and exporters for one app.

Two paths out:
- `/metrics`: a Prometheus reader on a per-app registry, for direct scraping (no exemplars: the
  Python Prometheus exporter never writes them).
- OTLP, when the standard `OTEL_EXPORTER_OTLP_*` variables are set: metrics every 5 s (matching
  the Prometheus scrape interval) and batched spans. Exemplars travel this way.
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
    prometheus_endpoint: bool = True,
    sampler: Sampler | None = None,
) -> Telemetry:
    """Providers for one app. Tests pass in-memory readers/exporters; production sets OTEL_* env.

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
    if prometheus_endpoint:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    otlp_metrics = _otlp_metric_exporter()
    if otlp_metrics is not None:
        interval = int(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_EXPORT_INTERVAL_MS))
        readers.append(PeriodicExportingMetricReader(otlp_metrics, export_interval_millis=interval))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    for exporter in extra_span_exporters:
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    otlp_spans = _otlp_span_exporter()
    if otlp_spans is not None:
        # Batches in a background thread with a bounded queue: a dead collector drops spans, no more.
        tracer_provider.add_span_processor(BatchSpanProcessor(otlp_spans))

    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metrics=ServiceMetrics(meter_provider.get_meter(INSTRUMENTATION_SCOPE, __version__)),
        tracer=tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__),
        prometheus_registry=registry,
        _owned=[meter_provider, tracer_provider],
    )


def sdk_disabled() -> bool:
    """The standard switch, read the way the SDK reads it (case-insensitive "true")."""
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def _otlp_enabled(signal: str) -> bool:
    if os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def _otlp_protocol(signal: str) -> str:
    return os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )


def _otlp_metric_exporter() -> Any:
    if not _otlp_enabled("metrics"):
        return None
    if _otlp_protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()


def _otlp_span_exporter() -> Any:
    if not _otlp_enabled("traces"):
        return None
    if _otlp_protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()
