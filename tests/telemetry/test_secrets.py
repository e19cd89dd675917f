"""Secrets and request bodies stay out of every telemetry outlet.

The app runs with an API key and a PostgreSQL URL holding a password (the test server trusts
loopback, so any password connects: what matters is that it is configured). Traffic carries
distinctive markers in bodies, symbols, a wrong key and unparsable JSON. Then neither the key,
nor the password, nor any marker may appear in a full `/metrics` scrape, in an exported span
(every attribute, event and link, as the SDK serialises it) or in a captured log record (message
and extra fields).
"""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.conftest import ClientFactory, make_settings
from tests.telemetry import recorded_telemetry

pytestmark = pytest.mark.integration

API_KEY = "apikey-SECRET-9f3a61"
PASSWORD = "dbpass-SECRET-27c4e0"
MARKERS = ("MRKQZA", "MRKQZB", "body-marker-5b1d", "json-marker-83ea", "feedback-marker-c07e")


def test_no_secret_or_body_reaches_metrics_spans_or_logs(
    make_client: ClientFactory, data_dir: object, fresh_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database_url = fresh_postgres_url.replace("stockpred:stockpred@", f"stockpred:{PASSWORD}@")
    assert PASSWORD in database_url
    settings = make_settings(data_dir, DATABASE_URL=database_url, API_KEY=API_KEY)  # type: ignore[arg-type]
    recorded = recorded_telemetry(settings)
    with caplog.at_level(logging.DEBUG):
        client = make_client(settings, recorded.telemetry)
        key = {"X-API-Key": API_KEY}
        bar = {
            "symbol": "MRKQZB",
            "timestamp": "2020-06-01T21:00:00Z",
            "open": 10.0,
            "high": 11.0,
            "low": 9.5,
            "close": 10.5,
            "volume": 1000,
        }
        assert client.post("/predict", json={"symbol": "AAPL"}).status_code == 200
        assert client.post("/predict", json={"symbol": "MRKQZA"}).status_code == 404
        assert client.post("/predict", json={"symbol": "body-marker-5b1d"}).status_code == 422
        assert client.post("/market-data", json={"bars": [bar]}, headers=key).status_code == 200
        assert (
            client.post("/market-data", json={"bars": [bar]}, headers={"X-API-Key": "MRKQZA"}).status_code
            == 401
        )
        unparsable = b'{"symbol": json-marker-83ea}'
        response = client.post("/predict", content=unparsable, headers={"content-type": "application/json"})
        assert response.status_code == 400
        feedback = {"prediction_id": str(uuid.uuid4()), "actual_direction": "feedback-marker-c07e"}
        assert client.post("/feedback", json=feedback, headers=key).status_code == 422
        # (a path is not a body: its text is the span's url.path, as semantic conventions say)
        assert client.get("/feature-store/metadata/ZZZZ").status_code == 404
        assert client.get("/health").status_code == 200
        scrape = client.get("/metrics").text
    recorded.telemetry.tracer_provider.force_flush()  # type: ignore[attr-defined]
    spans = [span.to_json() for span in recorded.exporter.get_finished_spans()]
    logs = [f"{record.getMessage()} {record.__dict__}" for record in caplog.records]
    assert spans, "no spans were exported"
    assert logs, "no logs were captured"
    assert "predictions_total" in scrape
    for secret in (API_KEY, PASSWORD, *MARKERS):
        assert secret not in scrape, f"{secret!r} in /metrics"
        leaking = [span for span in spans if secret in span]
        assert not leaking, f"{secret!r} in a span: {leaking[0][:2000]}"
        leaking = [line for line in logs if secret in line]
        assert not leaking, f"{secret!r} in a log record: {leaking[0][:2000]}"
