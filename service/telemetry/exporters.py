"""Which outlets telemetry goes to, from the standard OpenTelemetry variables.

- `OTEL_METRICS_EXPORTER`: a comma list of `prometheus` (the `/metrics` endpoint), `otlp`, `none`.
  Unset: `otlp` when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: compose, `make stack`), else `prometheus` (`make run`,
  nothing to send to). Every reader aggregates every measurement again, so one outlet is the
  default, not both; `otlp,prometheus` gives both.
- `OTEL_TRACES_EXPORTER`: `otlp` or `none`. Unset: `otlp` when an OTLP endpoint is configured,
  else `none` (spans are still made, and their trace ids logged and answered, just not sent).
- `OTEL_EXPORTER_OTLP_PROTOCOL` (and the per-signal variants): `http/protobuf` (default) or
  `grpc`; endpoints, headers, timeouts and the batch processor's `OTEL_BSP_*` are read by the SDK.

The SDK reads these variables itself only through its auto-configuration (`opentelemetry-
instrument`), which the service does not use: it builds its providers in code so that tests can
add in-memory readers. This module reads them the way the specification defines them.
"""

from __future__ import annotations

import os
from typing import Any

KNOWN_METRIC_EXPORTERS = frozenset({"otlp", "prometheus", "none"})
KNOWN_TRACE_EXPORTERS = frozenset({"otlp", "none"})


class UnsupportedExporterError(ValueError):
    """An exporter name the service does not provide (a typo must not silently mean "none")."""


def _otlp_endpoint_configured(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def _names(variable: str, known: frozenset[str], default: str) -> frozenset[str]:
    raw = os.environ.get(variable, "").strip().lower()
    names = frozenset(part.strip() for part in (raw or default).split(",") if part.strip())
    unknown = names - known
    if unknown:
        raise UnsupportedExporterError(f"{variable}: unsupported {sorted(unknown)}; use {sorted(known)}")
    return names - {"none"}


def metric_exporters() -> frozenset[str]:
    """The metric outlets: a subset of {"otlp", "prometheus"}."""
    default = "otlp" if _otlp_endpoint_configured("metrics") else "prometheus"
    return _names("OTEL_METRICS_EXPORTER", KNOWN_METRIC_EXPORTERS, default)


def trace_exporters() -> frozenset[str]:
    """The span outlets: {"otlp"} or nothing."""
    default = "otlp" if _otlp_endpoint_configured("traces") else "none"
    return _names("OTEL_TRACES_EXPORTER", KNOWN_TRACE_EXPORTERS, default)


def _protocol(signal: str) -> str:
    return os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )


def otlp_metric_exporter() -> Any:
    """The OTLP metric exporter for the configured protocol (endpoint etc. from its variables)."""
    if _protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()


def otlp_span_exporter() -> Any:
    if _protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()
