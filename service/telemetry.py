"""OpenTelemetry set-up: providers, exporters, the service's instruments, JSON logs.

Names follow OpenTelemetry style (`prediction.duration`, unit `s`) and translate to the Prometheus
names of docs/telemetry.md (`prediction_duration_seconds`). Ratio-like values (confidence,
accuracy, status gauges) deliberately have no unit: unit `1` would add a `_ratio` suffix.

Two paths out:
- `/metrics`: a Prometheus reader on a per-app registry, for direct scraping (no exemplars: the
  Python Prometheus exporter never writes them).
- OTLP, when the standard `OTEL_EXPORTER_OTLP_*` variables are set: metrics every 5 s (matching
  the Prometheus scrape interval) and batched spans. Exemplars travel this way.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from prometheus_client import CollectorRegistry

from service import __version__
from service.config import Settings

# Seconds. 2 s and 5 s are the seed's latency SLO / alert thresholds, so they are boundaries and
# `histogram_quantile` is exact there; below 10 ms the L1-hit path lives.
LATENCY_BUCKETS: Sequence[float] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
# Probability of the predicted class is never below 0.5 for a binary model.
CONFIDENCE_BUCKETS: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
COMPUTATION_BUCKETS: Sequence[float] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

DEFAULT_EXPORT_INTERVAL_MS = 5000
INSTRUMENTATION_SCOPE = "service"


class ServiceMetrics:
    """Every custom instrument of the service, created once per meter provider."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.predictions = meter.create_counter(
            "predictions", unit="{prediction}", description="Predictions served."
        )
        self.prediction_duration = meter.create_histogram(
            "prediction.duration",
            unit="s",
            description="Server-side time of one prediction, end to end.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.prediction_confidence = meter.create_histogram(
            "prediction.confidence",
            description="Probability of the predicted class.",
            explicit_bucket_boundaries_advisory=CONFIDENCE_BUCKETS,
        )
        self.prediction_errors = meter.create_counter(
            "prediction.errors", unit="{error}", description="Failed prediction requests, by reason."
        )
        self.model_accuracy = meter.create_gauge(
            "model.accuracy", description="Share right over the rolling window of resolved predictions."
        )
        self.model_resolved = meter.create_gauge(
            "model.resolved_predictions",
            unit="{prediction}",
            description="Resolved predictions inside the accuracy window.",
        )
        self.model_pending = meter.create_gauge(
            "model.pending_predictions",
            unit="{prediction}",
            description="Predictions whose outcome is not known yet.",
        )
        self.model_info = meter.create_gauge("model.info", description="The model version served (value 1).")
        self.model_reloads = meter.create_counter(
            "model.reloads", unit="{reload}", description="Champion model loads, by outcome."
        )
        self.model_feature_importance = meter.create_gauge(
            "model.feature_importance", description="Importance of each feature in the served model."
        )
        self.model_drift_score = meter.create_gauge(
            "model.drift_score", description="Largest feature PSI of the served window vs training."
        )
        self.model_feature_drift = meter.create_gauge(
            "model.feature_drift", description="PSI of one feature's served window vs training."
        )
        self.model_prediction_drift = meter.create_gauge(
            "model.prediction_drift", description="PSI of the served confidence vs training."
        )
        self.feature_store_hits = meter.create_counter(
            "feature_store.hits", unit="{lookup}", description="Feature lookups answered by a cache level."
        )
        self.feature_store_misses = meter.create_counter(
            "feature_store.misses", unit="{lookup}", description="Feature lookups that computed features."
        )
        self.feature_computation_duration = meter.create_histogram(
            "feature.computation.duration",
            unit="s",
            description="Time to compute one symbol's features from the database.",
            explicit_bucket_boundaries_advisory=COMPUTATION_BUCKETS,
        )
        self.database_operations = meter.create_counter(
            "database.operations", unit="{operation}", description="SQL operations issued by the service."
        )
        self.redis_status = meter.create_gauge(
            "redis.connection.status", description="1 when Redis answers, 0 when not."
        )
        self.database_status = meter.create_gauge(
            "database.connection.status", description="1 when the database answers, 0 when not."
        )
        self.mlflow_status = meter.create_gauge(
            "mlflow.connection.status", description="1 when the model registry answers, 0 when not."
        )
        self.health_status = meter.create_gauge(
            "service.health.status", description="2 ok, 1 degraded, 0 cannot predict."
        )


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
    """
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


# --- logs ----------------------------------------------------------------------------------------


class TraceContextFilter(logging.Filter):
    """Adds the current trace_id and span_id so a log line leads to its trace.

    Also drops uvicorn's `color_message` (the message again, with terminal colour codes).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        context = trace.get_current_span().get_span_context()
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        record.span_id = format(context.span_id, "016x") if context.is_valid else ""
        return True


def configure_logging(settings: Settings) -> None:
    """JSON lines on stderr (or plain text when LOG_JSON=false), each with trace and span ids."""
    # MLflow installs its own handler and level when imported (after this runs); let its records
    # flow through ours instead, so every line stays JSON. Explicit environment values still win.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    if settings.LOG_JSON:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.LOG_LEVEL.upper())
    for noisy in ("alembic", "mlflow", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- auto-instrumentation of the objects we own ----------------------------------------------------

KNOWN_TABLES = frozenset({"market_bars", "predictions", "alembic_version"})
_SQL_VERBS = {"SELECT": "select", "INSERT": "insert", "UPDATE": "update", "DELETE": "delete"}


def instrument_engine(engine: Any, telemetry: Telemetry) -> None:
    """SQL spans for every statement (contrib's EngineTracer) and `database.operations` counts.

    The contrib instrumentor's `instrument()` is a process-wide singleton; attaching its
    EngineTracer to this engine instead lets every engine (and every test) use its own provider.
    Calling this twice on one engine is harmless.
    """
    if getattr(engine, "_stockpred_instrumented", False):
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as contrib_version
    from sqlalchemy import event

    tracer = telemetry.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", contrib_version)
    meter = telemetry.meter_provider.get_meter("opentelemetry.instrumentation.sqlalchemy", contrib_version)
    connections = meter.create_up_down_counter(
        "db.client.connections.usage", unit="{connection}", description="Connections by state."
    )
    EngineTracer(tracer, engine, connections)  # type: ignore[no-untyped-call]
    counter = telemetry.metrics.database_operations

    def after_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        counter.add(1, {**classify_statement(statement), "outcome": "success"})

    def on_error(context: Any) -> None:
        counter.add(1, {**classify_statement(context.statement or ""), "outcome": "error"})

    event.listen(engine, "after_cursor_execute", after_execute)
    event.listen(engine, "handle_error", on_error)
    engine._stockpred_instrumented = True


def classify_statement(statement: str) -> dict[str, str]:
    """Operation and table of a SQL statement, from bounded sets (unknown tables become `other`)."""
    words = statement.replace("(", " ").replace(",", " ").split()
    if not words:
        return {"operation": "other", "table": "other"}
    operation = _SQL_VERBS.get(words[0].upper(), "other")
    table = "other"
    anchor = {"select": "FROM", "insert": "INTO", "delete": "FROM"}.get(operation)
    upper = [word.upper() for word in words]
    if operation == "update" and len(words) > 1:
        table = words[1]
    elif anchor and anchor in upper:
        position = upper.index(anchor) + 1
        table = words[position] if position < len(words) else "other"
    table = table.strip('"').lower()
    return {"operation": operation, "table": table if table in KNOWN_TABLES else "other"}


def instrument_redis_client(client: Any, telemetry: Telemetry) -> None:
    """A span per Redis command of this client only, on this app's tracer provider."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=telemetry.tracer_provider)
