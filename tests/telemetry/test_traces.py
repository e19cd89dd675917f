"""Traces of the real app: one trace per request, the right children, W3C propagation, errors.

FastAPI's native telemetry makes the server span; our spans (`feature_store.lookup`,
`features.compute`, `model.inference`), contrib's SQLAlchemy and Redis spans hang below it.
Background loops (health checks, monitors) make their own root spans in other traces, so every
assertion selects the request's trace by id instead of counting all finished spans.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from service.config import Settings
from tests.conftest import make_settings
from tests.harness import Server, wait_until
from tests.telemetry import (
    Recorded,
    collect,
    flush_feature_keys,
    hex_span_id,
    hex_trace_id,
    predict,
    recorded_telemetry,
    server_spans,
    trace_of,
)

ClientFactory = Callable[..., TestClient]

# A caller's span context, as another service would send it (W3C Trace Context, sampled).
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def redis_settings(data_dir: Path, redis_server: Server) -> Settings:
    """Redis as L2, its feature keys flushed so the first lookup misses everywhere."""
    flush_feature_keys(redis_server.url)
    return make_settings(data_dir, REDIS_URL=redis_server.url)


@pytest.fixture
def redis_app(make_client: ClientFactory, redis_settings: Settings) -> tuple[TestClient, Recorded]:
    return _started(make_client, redis_settings)


def _started(make_client: ClientFactory, settings: Settings) -> tuple[TestClient, Recorded]:
    recorded = recorded_telemetry(settings)
    client = make_client(settings, recorded.telemetry)
    recorded.exporter.clear()  # start-up work (migrations, prefill) is not part of any request
    return client, recorded


@pytest.fixture
def app(make_client: ClientFactory, settings: Settings) -> tuple[TestClient, Recorded]:
    return _started(make_client, settings)


def _only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matches = [span for span in spans if span.name == name]
    assert len(matches) == 1, f"{name}: {[s.name for s in spans]}"
    return matches[0]


def _request_trace(recorded: Recorded) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (server,) = server_spans(recorded.exporter)
    return server, trace_of(recorded.exporter, server.context.trace_id)


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _is_descendant(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    parent = _parent_id(span)
    while parent is not None:
        if parent == ancestor.context.span_id:
            return True
        parent = _parent_id(by_id[parent]) if parent in by_id else None
    return False


def test_a_prediction_is_one_trace_with_every_step_below_the_server_span(
    redis_app: tuple[TestClient, Recorded],
) -> None:
    client, recorded = redis_app
    served = predict(client, "AAPL")
    assert served["served_from"] == "computed"

    server, spans = _request_trace(recorded)
    assert server.kind is SpanKind.SERVER
    assert server.parent is None, "without a caller's context the server span is the root"
    assert server.name == "POST /predict"
    assert _attrs(server)["http.route"] == "/predict"
    assert _attrs(server)["http.response.status_code"] == 200

    ids = {span.context.span_id for span in spans}
    for span in spans:
        if span is not server:
            assert _parent_id(span) in ids, f"{span.name}'s parent is outside the request trace"

    lookup = _only(spans, "feature_store.lookup")
    compute = _only(spans, "features.compute")
    inference = _only(spans, "model.inference")
    assert _attrs(lookup)["feature_store.level"] == "computed"
    assert _parent_id(lookup) == server.context.span_id
    assert _parent_id(compute) == lookup.context.span_id
    assert _parent_id(inference) == server.context.span_id
    assert _attrs(inference)["model.version"] == served["model_version"]

    redis_spans = [s for s in spans if _attrs(s).get("db.system") == "redis"]
    assert redis_spans, f"no Redis command span in {[s.name for s in spans]}"
    for span in redis_spans:
        assert span.kind is SpanKind.CLIENT
        assert _is_descendant(span, lookup, spans), f"Redis span {span.name} outside the lookup"
    sql = [s for s in spans if _attrs(s).get("db.system") == "sqlite"]
    assert not [s for s in sql if _is_prediction_insert(s)], "the log write is off the request path"
    assert any(_is_descendant(s, compute, spans) for s in sql), "the bars query belongs to features.compute"

    # The row is written by the prediction log's writer, in a span of its own that links back.
    write = _wait_for_log_write(recorded, server)
    assert write.kind is SpanKind.INTERNAL
    assert _attrs(write)["prediction_log.rows"] >= 1
    write_trace = trace_of(recorded.exporter, write.context.trace_id)
    inserts = [s for s in write_trace if _is_prediction_insert(s)]
    assert len(inserts) == 1, [s.attributes for s in write_trace]
    assert _parent_id(inserts[0]) == write.context.span_id

    # Nothing the request did leaked into another trace.
    request_names = {"feature_store.lookup", "features.compute", "model.inference"}
    strays = [s for s in recorded.exporter.get_finished_spans() if s.name in request_names and s not in spans]
    assert not strays


def _is_prediction_insert(span: ReadableSpan) -> bool:
    return str(_attrs(span).get("db.statement")).startswith("INSERT INTO predictions")


def _wait_for_log_write(recorded: Recorded, server: ReadableSpan) -> ReadableSpan:
    """The writer's span whose links include the request's server span (it drains within ms)."""
    found: list[ReadableSpan] = []

    def written() -> bool:
        found[:] = [
            span
            for span in recorded.exporter.get_finished_spans()
            if span.name == "prediction_log.write"
            and any(link.context.span_id == server.context.span_id for link in span.links)
        ]
        return bool(found)

    wait_until(written, timeout=10, what="the prediction log's write span linking the request")
    return found[0]


def test_redis_and_l1_hits_are_traced_as_such(
    redis_app: tuple[TestClient, Recorded], make_client: ClientFactory, redis_settings: Settings
) -> None:
    first, _ = redis_app
    predict(first, "MSFT")  # computes, writes L1 and Redis
    # A second replica on the same Redis starts with an empty L1: its lookup is answered by Redis.
    client, recorded = _started(make_client, redis_settings)

    served = predict(client, "MSFT")
    assert served["served_from"] == "redis"
    _, spans = _request_trace(recorded)
    lookup = _only(spans, "feature_store.lookup")
    assert _attrs(lookup)["feature_store.level"] == "redis"
    assert not [s for s in spans if s.name == "features.compute"]
    commands = [s for s in spans if _attrs(s).get("db.system") == "redis"]
    assert [s.name for s in commands] == ["HGETALL"]
    assert _parent_id(commands[0]) == lookup.context.span_id

    recorded.exporter.clear()
    served = predict(client, "MSFT")
    assert served["served_from"] == "l1"
    _, spans = _request_trace(recorded)
    assert _attrs(_only(spans, "feature_store.lookup")) == {
        "feature_store.level": "l1",
        "feature_set.version": served["feature_set_version"],
    }
    assert not [s for s in spans if s.name == "features.compute"]
    assert not [s for s in spans if _attrs(s).get("db.system") == "redis"], "an L1 hit asks nobody"


def test_metrics_and_health_are_not_traced(app: tuple[TestClient, Recorded]) -> None:
    client, recorded = app
    assert client.get("/metrics").status_code == 200
    assert client.get("/health").status_code == 200
    traced = [s for s in recorded.exporter.get_finished_spans() if _attrs(s).get("url.path")]
    assert not traced, [s.name for s in traced]
    assert not server_spans(recorded.exporter)
    assert client.get("/models/current").status_code == 200  # the control: other routes are traced
    (control,) = server_spans(recorded.exporter)
    assert control.name == "GET /models/current"


def test_a_callers_traceparent_is_continued(app: tuple[TestClient, Recorded]) -> None:
    client, recorded = app
    served = predict(client, "GOOGL", traceparent=f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01")
    server, spans = _request_trace(recorded)
    assert hex_trace_id(server) == CALLER_TRACE_ID
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    assert served["trace_id"] == CALLER_TRACE_ID
    assert {"feature_store.lookup", "model.inference"} <= {s.name for s in spans}


def test_the_logged_prediction_carries_the_trace_id(app: tuple[TestClient, Recorded]) -> None:
    client, recorded = app
    served = predict(client, "AMZN")
    (server,) = server_spans(recorded.exporter)
    assert served["trace_id"] == hex_trace_id(server)
    row = client.get(f"/predictions/{served['prediction_id']}")
    assert row.status_code == 200
    assert row.json()["trace_id"] == hex_trace_id(server)


def test_a_failure_inside_the_request_marks_the_spans_and_records_the_exception(
    app: tuple[TestClient, Recorded], settings: Settings
) -> None:
    client, recorded = app
    # A real database failure: the bars table disappears under the running service.
    with sqlite3.connect(settings.DATA_DIR / "stockpred.db") as connection:
        connection.execute("DROP TABLE market_bars")
    recorded.exporter.clear()
    collect(recorded.reader)

    response = client.post("/predict", json={"symbol": "NVDA"})  # first lookup: must compute
    assert response.status_code == 503, response.text

    server, spans = _request_trace(recorded)
    assert server.status.status_code is StatusCode.ERROR
    assert _attrs(server)["http.response.status_code"] == 503
    # The app's handler turned the exception into a 503, so FastAPI names the status, not the class.
    assert _attrs(server)["error.type"] == "503"

    compute = _only(spans, "features.compute")
    lookup = _only(spans, "feature_store.lookup")
    for span in (compute, lookup):
        assert span.status.status_code is StatusCode.ERROR, span.name
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "sqlalchemy.exc.OperationalError"
        assert "market_bars" in str(event.attributes["exception.message"])
    failed_sql = [s for s in spans if _attrs(s).get("db.system") == "sqlite"]
    assert [s.status.status_code for s in failed_sql] == [StatusCode.ERROR]
    assert not [s for s in spans if s.name == "model.inference"], "no inference without features"

    errors = {p.attributes["reason"]: p.value for p in collect(recorded.reader)["prediction.errors"].points}
    assert errors == {"internal": 1}
    assert hex_span_id(server) != hex_span_id(compute)
