"""JSON log lines, each with the trace and span id of the request that wrote it."""

from __future__ import annotations

import logging
import os
import sys

from opentelemetry import trace

from service.config import Settings


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
