"""Serving, logging and resolving predictions through a bootstrapped container (no threads).

Outcomes are checked against closes read from the synthetic market, not against the code's view.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select

from service.container import Container
from service.market.ingestion import IngestResult, InvalidBatchError, ingest
from service.market.synthetic import synthetic_bars_after
from service.model.features import FEATURE_SET, latest_vector
from service.serving.predictions import (
    ConflictingFeedbackError,
    PredictionNotFoundError,
    PredictionResult,
    UnknownSymbolError,
)
from service.storage.market_bars import BarIn, count_bars, last_bar, recent_bars
from service.storage.tables import PENDING, RESOLVED, MarketBar, Prediction


def prediction_count(container: Container) -> int:
    with container.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Prediction)) or 0)


def newest_bar(container: Container, symbol: str) -> MarketBar:
    with container.database.session() as session:
        bar = last_bar(session, symbol=symbol)
    assert bar is not None
    return bar


def next_bar(container: Container, symbol: str) -> BarIn:
    """The synthetic market's bar after the newest stored one."""
    after = newest_bar(container, symbol).ts
    (bar,) = synthetic_bars_after(symbol, after=after, count=1, seed=container.settings.SEED)
    return bar


def ingest_into(container: Container, bars: list[BarIn]) -> IngestResult:
    return ingest(
        bars,
        database=container.database,
        feature_store=container.feature_store,
        predictions=container.predictions,
    )


# --- predict -------------------------------------------------------------------------------------


def test_predict_logs_a_pending_row_matching_the_result(container: Container) -> None:
    result = container.predictions.predict("AAPL")
    row = container.predictions.get(result.prediction_id)
    model = container.models.current
    assert model is not None
    assert row.status == PENDING
    assert row.trace_id is None  # no span is active outside a request
    assert (row.symbol, row.direction, row.model_version) == ("AAPL", result.direction, model.version)
    assert row.probability_up == pytest.approx(result.probability_up)
    assert row.as_of == newest_bar(container, "AAPL").ts == result.as_of


def test_direction_and_confidence_follow_probability_up(container: Container) -> None:
    for symbol in container.predictions.known_symbols():
        result = container.predictions.predict(symbol)
        p = result.probability_up
        assert 0.0 <= p <= 1.0
        assert result.direction == ("up" if p >= 0.5 else "down")
        assert result.confidence == pytest.approx(max(p, 1 - p))
        assert result.confidence >= 0.5


def test_probability_comes_from_the_served_model_on_the_newest_features(container: Container) -> None:
    model = container.models.current
    assert model is not None
    with container.database.session() as session:
        bars = recent_bars(session, symbol="MSFT", limit=FEATURE_SET.lookback_bars)
    vector = latest_vector(bars)
    up_column = list(model.estimator.classes_).index(1)
    expected = float(model.estimator.predict_proba(vector.reshape(1, -1))[0][up_column])
    result = container.predictions.predict("MSFT")
    assert result.probability_up == pytest.approx(expected)
    assert np.allclose(list(result.features.values()), vector)


def test_predict_inside_a_span_logs_its_trace_id(container: Container) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        result = container.predictions.predict("NVDA")
    expected = format(span.get_span_context().trace_id, "032x")
    assert result.trace_id == expected
    assert container.predictions.get(result.prediction_id).trace_id == expected


def test_unknown_symbol_is_refused_listing_the_known_ones(container: Container) -> None:
    before = prediction_count(container)
    with pytest.raises(UnknownSymbolError) as raised:
        container.predictions.predict("TSLA")
    known = container.predictions.known_symbols()
    assert raised.value.symbols == ["TSLA"]
    assert raised.value.known == known
    assert all(symbol in str(raised.value) for symbol in known)
    assert prediction_count(container) == before


# --- outcomes ------------------------------------------------------------------------------------


def test_ingesting_the_next_bar_resolves_the_prediction(container: Container) -> None:
    result = container.predictions.predict("AAPL")
    base_close = newest_bar(container, "AAPL").close
    following = next_bar(container, "AAPL")
    went_up = following.close > base_close
    outcome = ingest_into(container, [following])
    assert (outcome.inserted, outcome.updated, outcome.resolved_predictions) == (1, 0, 1)
    row = container.predictions.get(result.prediction_id)
    assert row.status == RESOLVED
    assert row.actual_direction == ("up" if went_up else "down")
    assert row.correct == ((result.direction == "up") == went_up)
    assert row.resolution_source == "bars"


def test_after_ingestion_predictions_use_the_new_bar(container: Container) -> None:
    container.predictions.predict("GOOGL")  # fills the feature cache
    following = next_bar(container, "GOOGL")
    ingest_into(container, [following])
    assert container.predictions.predict("GOOGL").as_of == following.ts


def test_feedback_resolves_and_is_idempotent_but_not_contradictable(container: Container) -> None:
    result: PredictionResult = container.predictions.predict("AMZN")
    first = container.predictions.record_feedback(result.prediction_id, "down")
    assert (first.status, first.actual_direction, first.resolution_source) == (RESOLVED, "down", "feedback")
    assert first.correct == (result.direction == "down")
    again = container.predictions.record_feedback(result.prediction_id, "down")
    assert (again.resolved_at, again.correct) == (first.resolved_at, first.correct)
    with pytest.raises(ConflictingFeedbackError, match="already resolved as 'down'"):
        container.predictions.record_feedback(result.prediction_id, "up")
    assert container.predictions.get(result.prediction_id).actual_direction == "down"


def test_feedback_for_an_unknown_prediction_is_not_found(container: Container) -> None:
    with pytest.raises(PredictionNotFoundError):
        container.predictions.record_feedback("00000000-0000-0000-0000-000000000000", "up")


# --- ingestion rules -----------------------------------------------------------------------------


def bar_count(container: Container) -> int:
    with container.database.session() as session:
        return count_bars(session)


def test_a_batch_with_one_bad_bar_writes_nothing(container: Container) -> None:
    good = next_bar(container, "AAPL")
    bad = replace(next_bar(container, "MSFT"), high=1.0, low=2.0)
    before = bar_count(container)
    with pytest.raises(InvalidBatchError) as raised:
        ingest_into(container, [good, bad])
    assert any(problem.startswith("bar 1 (MSFT@") for problem in raised.value.problems)
    assert not any(problem.startswith("bar 0") for problem in raised.value.problems)
    assert bar_count(container) == before
    assert newest_bar(container, "AAPL").ts < good.ts


def test_a_batch_with_a_duplicated_bar_is_rejected(container: Container) -> None:
    following = next_bar(container, "NVDA")
    before = bar_count(container)
    with pytest.raises(InvalidBatchError, match="duplicated bar in batch: NVDA@"):
        ingest_into(container, [following, replace(following, close=following.close * 1.01)])
    assert bar_count(container) == before
