"""The service's instruments against the contract of docs/telemetry.md, read from an in-memory reader.

One realistic session per test: predictions served from every feature-store level, an unknown
symbol, an invalid body, a market-data ingest that resolves a prediction, explicit feedback, and
a pile of hostile inputs. Then every instrument of the contract must exist with its name, unit,
kind and exact label keys, bucket layouts must match the doc, and no label value may come from
user input. Exemplars must point at the request span of the prediction they sample.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

from service.config import Settings
from service.telemetry.instruments import CONFIDENCE_BUCKETS, LATENCY_BUCKETS
from tests.conftest import make_settings
from tests.harness import Server, wait_until
from tests.telemetry import (
    MONITOR_DEADLINE_SECONDS,
    Collected,
    Recorded,
    collect,
    flush_feature_keys,
    label_values,
    next_bar_batch,
    predict,
    recorded_telemetry,
    server_spans,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"


@dataclass(frozen=True)
class Expected:
    unit: str
    kind: type
    labels: frozenset[str]
    scope: str = "service"


def _expect(unit: str, kind: type, *labels: str) -> Expected:
    return Expected(unit, kind, frozenset(labels))


# OpenTelemetry name -> what docs/telemetry.md's row requires. Units decide the Prometheus suffix:
# `s` adds `_seconds`, a `{annotation}` or no unit adds nothing (unit `1` would add `_ratio`).
CONTRACT: dict[str, Expected] = {
    "predictions": _expect("{prediction}", Sum, "symbol", "model_version"),
    "prediction.duration": _expect("s", Histogram, "symbol", "model_version", "outcome"),
    "prediction.confidence": _expect("", Histogram, "symbol", "model_version"),
    "prediction.errors": _expect("{error}", Sum, "reason"),
    "model.accuracy": _expect("", Gauge, "symbol", "model_version"),
    "model.resolved_predictions": _expect("{prediction}", Gauge, "symbol", "model_version"),
    "model.pending_predictions": _expect("{prediction}", Gauge, "symbol"),
    "model.drift_score": _expect("", Gauge, "symbol", "model_version"),
    "model.feature_drift": _expect("", Gauge, "symbol", "feature", "model_version"),
    "model.prediction_drift": _expect("", Gauge, "symbol", "model_version"),
    "model.feature_importance": _expect("", Gauge, "feature", "model_version"),
    "model.info": _expect(
        "", Gauge, "model_version", "model_name", "feature_set_version", "trained_at", "validation_accuracy"
    ),
    "model.reloads": _expect("{reload}", Sum, "outcome"),
    "feature_store.hits": _expect("{lookup}", Sum, "level"),
    "feature_store.misses": _expect("{lookup}", Sum),
    "feature.computation.duration": _expect("s", Histogram),
    "database.operations": _expect("{operation}", Sum, "operation", "table", "outcome"),
    "redis.connection.status": _expect("", Gauge),
    "database.connection.status": _expect("", Gauge),
    "mlflow.connection.status": _expect("", Gauge),
    "service.health.status": _expect("", Gauge),
    "prediction_log.queue.depth": _expect("{row}", Gauge),
    "prediction_log.spool.rows": _expect("{row}", Gauge),
    "prediction_log.spool.size": _expect("By", Gauge),
    "prediction_log.spool.capacity": _expect("By", Gauge),
    "prediction_log.oldest_row.age": _expect("s", Gauge),
    "prediction_log.rows.written": _expect("{row}", Sum),
    "prediction_log.rows.failed": _expect("{row}", Sum, "reason"),
    "prediction_log.batch.size": _expect("{row}", Histogram),
    "prediction_log.write.duration": _expect("s", Histogram),
    "prediction_log.spool.syncs": _expect("{sync}", Sum),
    "prediction_log.spool.records": _expect("{record}", Sum),
}


# FastAPI's own server metric: the contract names three of its labels; semconv adds more.
HTTP_DURATION = "http.server.request.duration"
HTTP_LABELS = frozenset({"http.route", "http.request.method", "http.response.status_code"})
# Who makes it (HTTP_INSTRUMENTATION): FastAPI's own telemetry or the contrib instrumentation.
HTTP_SCOPES = {"native": "fastapi", "contrib": "opentelemetry.instrumentation.fastapi"}

# Closed value sets from the contract; anything else is a cardinality leak.
BOUNDED_VALUES: dict[str, frozenset[str]] = {
    "outcome": frozenset({"success", "error", "failure"}),  # failure: model reloads
    "reason": frozenset(
        {
            "unknown_symbol",
            "invalid_input",
            "no_data",
            "model_unavailable",
            "log_full",
            "shutting_down",
            "internal",
        }
        | {"unavailable", "rejected", "orphaned_feedback"}  # prediction_log.rows.failed
    ),
    "level": frozenset({"l1", "redis"}),
    "operation": frozenset({"select", "insert", "update", "delete", "other"}),
    "table": frozenset({"market_bars", "predictions", "alembic_version", "other"}),
}

# (JSON value of "symbol", statuses a correct service may answer). None of it may become a label.
HOSTILE_SYMBOLS: list[tuple[Any, set[int]]] = [
    ("ZZZZ", {404}),  # well-formed, unknown
    ("QQQQQQQQQQ", {404}),
    ("BRK-B", {404}),
    ("A" * 5000, {422}),
    ("AAPL'; DROP TABLE predictions;--", {422}),
    ("1 OR 1=1", {422}),
    ("äpfel", {422}),
    ("📈📉", {422}),
    ("AAPL\x00", {422}),
    ("../../etc/passwd", {422}),
    ("", {422}),
    (12345, {422}),
    (["AAPL"], {422}),
    (None, {422}),
]
HOSTILE_PATH_SYMBOLS = ["ZZZZ", "BRK-B", "A" * 300, "1 OR 1=1", "äpfel", "📈", "DROP TABLE x;--", "%00"]

# L1 entries expire this fast so the test can observe a Redis hit without touching internals.
SHORT_L1_TTL = 0.5


@dataclass
class Session:
    settings: Settings
    client: TestClient
    recorded: Recorded
    predictions: dict[str, list[dict[str, Any]]]

    def collect(self) -> dict[str, Collected]:
        return collect(self.recorded.reader)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def session(make_client: ClientFactory, data_dir: Path, redis_server: Server) -> Session:
    """Runs the traffic of a short, realistic session and waits for the monitors to publish."""
    flush_feature_keys(redis_server.url)
    settings = make_settings(data_dir, REDIS_URL=redis_server.url, FEATURE_L1_TTL_SECONDS=SHORT_L1_TTL)
    recorded = recorded_telemetry(settings)
    client = make_client(settings, recorded.telemetry)
    made: dict[str, list[dict[str, Any]]] = {"AAPL": [], "MSFT": [], "GOOGL": []}

    made["AAPL"].append(predict(client, "AAPL"))  # computed: a miss
    made["AAPL"].append(predict(client, "AAPL"))  # L1

    def served_from_redis() -> bool:
        made["AAPL"].append(predict(client, "AAPL"))
        return bool(made["AAPL"][-1]["served_from"] == "redis")

    wait_until(served_from_redis, timeout=5 * SHORT_L1_TTL + 5, what="an AAPL prediction served from Redis")
    made["MSFT"].append(predict(client, "MSFT"))
    made["GOOGL"].append(predict(client, "GOOGL"))  # stays pending

    assert client.post("/predict", json={"symbol": "ZZZZ"}).status_code == 404
    assert client.post("/predict", json={"ticker": "AAPL"}).status_code == 422

    as_of = made["AAPL"][0]["as_of"]
    ingest = client.post("/market-data", json=next_bar_batch("AAPL", after=as_of, seed=settings.SEED))
    assert ingest.status_code == 200, ingest.text
    assert ingest.json()["resolved_predictions"] == len(made["AAPL"])
    feedback = {"prediction_id": made["MSFT"][0]["prediction_id"], "actual_direction": "up"}
    assert client.post("/feedback", json=feedback).status_code == 200

    result = Session(settings, client, recorded, made)
    wait_until(lambda: _monitors_published(result), timeout=MONITOR_DEADLINE_SECONDS, what="monitor gauges")
    return result


def _monitors_published(session: Session) -> bool:
    collected = session.collect()
    accuracy = _points_by(collected, "model.accuracy", "symbol")
    pending = _points_by(collected, "model.pending_predictions", "symbol")
    return (
        {"AAPL", "MSFT"} <= set(accuracy)
        and pending.get("GOOGL") == 1
        and "model.drift_score" in collected
        and "model.feature_drift" in collected
    )


def _points_by(collected: dict[str, Collected], name: str, key: str) -> dict[str, Any]:
    if name not in collected:
        return {}
    return {point.attributes[key]: point.value for point in collected[name].points}


def _kind(metric: Any) -> type:
    return type(metric.data)


# --- the contract ----------------------------------------------------------------------------------


def test_every_contract_instrument_exists_with_its_unit_kind_and_label_keys(session: Session) -> None:
    collected = session.collect()
    missing = sorted(set(CONTRACT) - set(collected))
    assert not missing, f"instruments of the contract not emitted: {missing}"
    for name, expected in CONTRACT.items():
        instrument = collected[name]
        metric = instrument.metric
        assert instrument.scope == expected.scope, name
        assert metric.unit == expected.unit, f"{name}: unit {metric.unit!r}"
        assert _kind(metric) is expected.kind, f"{name}: {_kind(metric).__name__}"
        if expected.kind is Sum:
            assert metric.data.is_monotonic, f"{name} must be a counter (monotonic sum)"
        assert instrument.points, name
        for point in instrument.points:
            assert set(point.attributes or {}) == expected.labels, f"{name}: {dict(point.attributes or {})}"


def test_fastapi_server_duration_carries_the_contract_labels(session: Session) -> None:
    duration = session.collect()[HTTP_DURATION]
    assert duration.scope == HTTP_SCOPES[session.settings.HTTP_INSTRUMENTATION]
    assert duration.metric.unit == "s"
    assert _kind(duration.metric) is Histogram
    routes = set()
    for point in duration.points:
        assert set(point.attributes) >= HTTP_LABELS, dict(point.attributes)
        routes.add(point.attributes["http.route"])
    assert {"/predict", "/market-data", "/feedback"} <= routes
    assert not routes & {"/metrics", "/health"}, "excluded paths must not be measured"


def test_bucket_boundaries_match_the_contract(session: Session) -> None:
    collected = session.collect()
    doc_latency, doc_confidence = _doc_bucket_layouts()
    assert tuple(LATENCY_BUCKETS) == doc_latency
    assert tuple(CONFIDENCE_BUCKETS) == doc_confidence
    for point in collected["prediction.duration"].points:
        assert tuple(point.explicit_bounds) == doc_latency
    for point in collected["prediction.confidence"].points:
        assert tuple(point.explicit_bounds) == doc_confidence
        assert 0.5 <= point.min <= point.max <= 1.0


def _doc_bucket_layouts() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The two bucket lists written in docs/telemetry.md ("Bucket layouts")."""
    text = DOC.read_text()
    section = text[text.index("Bucket layouts") :]
    layouts = re.findall(r"`((?:\d+(?:\.\d+)? )+\d+(?:\.\d+)?)`", section)
    assert len(layouts) >= 2, "docs/telemetry.md lost its bucket layouts"
    latency, confidence = ([float(v) for v in layout.split()] for layout in layouts[:2])
    return tuple(latency), tuple(confidence)


def test_counts_follow_the_traffic(session: Session) -> None:
    collected = session.collect()
    served = {symbol: len(made) for symbol, made in session.predictions.items()}
    version = session.predictions["AAPL"][0]["model_version"]
    counts = {p.attributes["symbol"]: p.value for p in collected["predictions"].points}
    assert counts == served
    durations = {
        p.attributes["symbol"]: p.count
        for p in collected["prediction.duration"].points
        if p.attributes["outcome"] == "success" and p.attributes["model_version"] == version
    }
    assert durations == served
    hits = _points_by(collected, "feature_store.hits", "level")
    levels = [made["served_from"] for made in session.predictions["AAPL"]]
    assert hits == {"l1": levels.count("l1"), "redis": levels.count("redis")}
    assert collected["feature_store.misses"].points[0].value == 3  # AAPL, MSFT, GOOGL computed once
    errors = _points_by(collected, "prediction.errors", "reason")
    assert errors == {"unknown_symbol": 1, "invalid_input": 1}
    assert _points_by(collected, "model.reloads", "outcome") == {"success": 1}
    assert _points_by(collected, "model.info", "model_version") == {version: 1}
    statuses = {name: collected[name].points[0].value for name in CONTRACT if name.endswith(".status")}
    assert statuses == {
        "redis.connection.status": 1,
        "database.connection.status": 1,
        "mlflow.connection.status": 1,
        "service.health.status": 2,
    }
    operations = {
        (p.attributes["operation"], p.attributes["table"], p.attributes["outcome"])
        for p in collected["database.operations"].points
    }
    assert {("insert", "predictions", "success"), ("select", "market_bars", "success")} <= operations


def test_accuracy_reflects_the_resolved_outcomes(session: Session) -> None:
    collected = session.collect()
    for symbol in ("AAPL", "MSFT"):
        rows = [
            session.client.get(f"/predictions/{p['prediction_id']}").json()
            for p in session.predictions[symbol]
        ]
        assert all(row["status"] == "resolved" for row in rows), rows
        labels = {"symbol": symbol, "model_version": rows[0]["model_version"]}
        accuracy = _value(collected, "model.accuracy", labels)
        resolved = _value(collected, "model.resolved_predictions", labels)
        assert resolved == len(rows)
        assert accuracy == pytest.approx(sum(bool(row["correct"]) for row in rows) / len(rows))
    assert _points_by(collected, "model.pending_predictions", "symbol").get("GOOGL") == 1


def _value(collected: dict[str, Collected], name: str, labels: dict[str, str]) -> Any:
    matches = [p.value for p in collected[name].points if dict(p.attributes) == labels]
    assert len(matches) == 1, f"{name}{labels}: {matches}"
    return matches[0]


# --- bounded label values --------------------------------------------------------------------------


def test_label_values_stay_bounded_whatever_the_input(session: Session) -> None:
    client = session.client
    for symbol, allowed in HOSTILE_SYMBOLS:
        single = client.post("/predict", json={"symbol": symbol})
        assert single.status_code in allowed, (symbol, single.status_code, single.text[:200])
        batch = client.post("/predict/batch", json={"symbols": ["AAPL", symbol]})
        assert batch.status_code in allowed, (symbol, batch.status_code, batch.text[:200])
    raw = client.post("/predict", content=b"AAPL; DROP TABLE", headers={"content-type": "application/json"})
    assert raw.status_code == 400  # not JSON at all
    for symbol in HOSTILE_PATH_SYMBOLS:
        metadata = client.get(f"/feature-store/metadata/{quote(symbol, safe='')}")
        assert metadata.status_code in {404, 422}, (symbol, metadata.status_code, metadata.text[:200])

    model = client.get("/models/current").json()
    registered = {row["version"] for row in client.get("/models").json()["versions"]}
    allowed_values = {
        **BOUNDED_VALUES,
        "symbol": frozenset(model["symbols"]),
        "model_version": frozenset(registered),
        "feature": frozenset(model["feature_names"]),
    }
    hostile = {str(s) for s, _ in HOSTILE_SYMBOLS if isinstance(s, str) and len(str(s)) >= 3}
    hostile |= {s.upper() for s in hostile} | set(HOSTILE_PATH_SYMBOLS)
    for name, key, value in label_values(session.collect()):
        if key in allowed_values:
            assert value in allowed_values[key], f"{name}{{{key}={value!r}}} is outside the bounded set"
        if isinstance(value, str):
            leaked = [h for h in hostile if h and h in value]
            assert not leaked, f"user input {leaked} became a label value of {name}.{key}"


def test_only_prediction_requests_count_as_prediction_errors(
    make_client: ClientFactory, settings: Settings
) -> None:
    """`prediction_errors_total` feeds the error-ratio SLO: other routes' bad input must stay out."""
    recorded = recorded_telemetry(settings)
    client = make_client(settings, recorded.telemetry)
    assert client.get("/predictions/not-a-uuid").status_code == 422  # the prediction log, not a prediction
    assert client.post("/feedback", json={"prediction_id": "x", "actual_direction": "up"}).status_code == 422
    assert client.get("/feature-store/metadata/1%20OR%201=1").status_code == 422
    assert _points_by(collect(recorded.reader), "prediction.errors", "reason") == {}

    assert client.post("/predict", json={"symbol": "1 OR 1=1"}).status_code == 422
    assert client.post("/predict/batch", json={"symbols": []}).status_code == 422
    assert _points_by(collect(recorded.reader), "prediction.errors", "reason") == {"invalid_input": 2}


# --- exemplars -------------------------------------------------------------------------------------


def test_prediction_histograms_carry_the_request_span_as_exemplar(
    make_client: ClientFactory, settings: Settings
) -> None:
    recorded = recorded_telemetry(settings)
    client = make_client(settings, recorded.telemetry)
    predict(client, "NVDA")  # warm the caches: the sampled request is then a plain L1 hit
    collect(recorded.reader)  # a collection hands out the exemplars so far and resets them
    recorded.exporter.clear()

    served = predict(client, "NVDA")
    collected = collect(recorded.reader)

    (request_span,) = server_spans(recorded.exporter)
    assert format(request_span.context.trace_id, "032x") == served["trace_id"]
    labels = {"symbol": "NVDA", "model_version": served["model_version"]}
    duration = _histogram_point(collected, "prediction.duration", {**labels, "outcome": "success"})
    confidence = _histogram_point(collected, "prediction.confidence", labels)
    for point in (duration, confidence):
        assert len(point.exemplars) == 1, point.exemplars  # exactly the one measurement since the reset
        (exemplar,) = point.exemplars
        assert exemplar.trace_id == request_span.context.trace_id
        assert exemplar.span_id == request_span.context.span_id
        assert not exemplar.filtered_attributes  # every measured label is already on the point
    assert confidence.exemplars[0].value == pytest.approx(served["confidence"])
    assert request_span.end_time is not None
    assert request_span.start_time is not None
    assert 0 < duration.exemplars[0].value <= (request_span.end_time - request_span.start_time) / 1e9


def _histogram_point(collected: dict[str, Collected], name: str, labels: dict[str, str]) -> Any:
    matches = [p for p in collected[name].points if dict(p.attributes) == labels]
    assert len(matches) == 1, f"{name}{labels}"
    return matches[0]
