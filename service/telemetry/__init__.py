"""Telemetry: OpenTelemetry providers and exporters, the service's instruments, JSON logs, and the
instrumentation of the SQL engine and the Redis client.
"""

import os

# The contract (docs/telemetry.md) uses the stable HTTP semantic conventions, which FastAPI's own
# telemetry emits; contrib's instrumentations emit them only when opted in, and read this variable
# once per process, when the first of them initialises: so it is set here, before any can.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
