"""JSON log lines carry the trace and span of the request that wrote them, and nothing outside one.

`configure_logging` installs one stderr handler on the root logger; the tests point that handler
at a StringIO and restore the logging set-up afterwards. The lines come from the service's own
log calls on real failure paths (Redis refusing connections, a table gone), not from the test.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.telemetry.logs import configure_logging
from tests.conftest import make_settings
from tests.harness import free_port
from tests.telemetry import hex_span_id, hex_trace_id, predict, recorded_telemetry, server_spans

ClientFactory = Callable[..., TestClient]
QUIETED = ("alembic", "mlflow", "urllib3", "httpx")


@pytest.fixture
def json_settings(data_dir: Path) -> Settings:
    # Nothing listens on this port: every Redis call of the feature store fails fast and logs.
    return make_settings(
        data_dir, LOG_JSON=True, LOG_LEVEL="INFO", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )


@pytest.fixture
def log_stream(json_settings: Settings) -> Iterator[io.StringIO]:
    """The service's JSON handler, writing into a buffer; the previous logging set-up comes back after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in QUIETED}
    configure_logging(json_settings)
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, each of which must be one JSON object."""
    lines = []
    for raw in stream.getvalue().splitlines():
        record = json.loads(raw)
        assert isinstance(record, dict), raw
        assert {"time", "level", "logger", "message", "trace_id", "span_id"} <= set(record), raw
        lines.append(record)
    return lines


def _with_message(lines: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    found = [line for line in lines if line["message"] == message]
    assert found, f"no {message!r} line in {[line['message'] for line in lines]}"
    return found


def test_lines_inside_request_spans_carry_their_ids_and_lines_outside_carry_none(
    log_stream: io.StringIO, json_settings: Settings, make_client: ClientFactory
) -> None:
    recorded = recorded_telemetry(json_settings)
    client = make_client(json_settings, recorded.telemetry)

    # Start-up runs outside any span.
    for line in _with_message(_lines(log_stream), "serving model"):
        assert line["trace_id"] == ""
        assert line["span_id"] == ""
        assert line["level"] == "INFO"

    # Inside a nested span: the feature store finds Redis down during its lookup.
    recorded.exporter.clear()
    served = predict(client, "AAPL")
    (lookup,) = [s for s in recorded.exporter.get_finished_spans() if s.name == "feature_store.lookup"]
    assert served["trace_id"] == hex_trace_id(lookup)
    for line in _with_message(_lines(log_stream), "redis unavailable, serving without L2"):
        assert line["level"] == "WARNING"
        assert line["trace_id"] == hex_trace_id(lookup)
        assert line["span_id"] == hex_span_id(lookup)

    # In the server span itself: the app's handler reports the database failure it turns into a 503.
    with sqlite3.connect(json_settings.DATA_DIR / "stockpred.db") as connection:
        connection.execute("DROP TABLE market_bars")
    recorded.exporter.clear()
    assert client.post("/predict", json={"symbol": "MSFT"}).status_code == 503
    (server,) = server_spans(recorded.exporter)
    (line,) = _with_message(_lines(log_stream), "database unavailable")
    assert line["level"] == "ERROR"
    assert line["trace_id"] == hex_trace_id(server)
    assert line["span_id"] == hex_span_id(server)
    assert line["path"] == "/predict"


def test_a_line_logged_by_app_code_in_a_span_of_the_app_tracer(
    log_stream: io.StringIO, json_settings: Settings
) -> None:
    recorded = recorded_telemetry(json_settings, prometheus_endpoint=False)
    log = logging.getLogger("service.test")
    try:
        with recorded.telemetry.tracer.start_as_current_span("work") as span:
            log.info("inside", extra={"symbol": "AAPL"})
        log.info("outside")
    finally:
        recorded.telemetry.shutdown()
    inside, outside = _lines(log_stream)[-2:]
    context = span.get_span_context()
    assert inside["message"] == "inside"
    assert inside["symbol"] == "AAPL"
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert outside["message"] == "outside"
    assert (outside["trace_id"], outside["span_id"]) == ("", "")
