"""POST /predict, /predict/batch, /feedback and GET /predictions/{id}."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient

from service.api.schemas import Bar
from service.market.synthetic import synthetic_bars_after

KNOWN = ["AAPL", "AMZN", "GOOGL", "MSFT", "NVDA"]


def test_predict_returns_a_logged_prediction(api: TestClient) -> None:
    response = api.post("/predict", json={"symbol": "AAPL"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["symbol"] == "AAPL"
    assert body["direction"] == ("up" if body["probability_up"] >= 0.5 else "down")
    assert body["confidence"] == max(body["probability_up"], 1 - body["probability_up"])
    assert body["model_version"] == api.get("/models/current").json()["version"]
    assert body["feature_set_version"] == "1"
    logged = api.get(f"/predictions/{body['prediction_id']}").json()
    assert logged["status"] == "pending"
    assert logged["direction"] == body["direction"]
    assert logged["trace_id"] == body["trace_id"]
    assert len(body["trace_id"]) == 32


def test_symbols_are_case_insensitive(api: TestClient) -> None:
    assert api.post("/predict", json={"symbol": " msft "}).json()["symbol"] == "MSFT"


def test_second_prediction_is_served_from_cache(api: TestClient) -> None:
    first = api.post("/predict", json={"symbol": "NVDA"}).json()
    second = api.post("/predict", json={"symbol": "NVDA"}).json()
    assert first["served_from"] == "computed"
    assert second["served_from"] == "l1"
    assert second["probability_up"] == first["probability_up"]


def test_unknown_symbol_is_404_naming_it_and_the_known_ones(api: TestClient) -> None:
    response = api.post("/predict", json={"symbol": "ZZZZ"})
    assert response.status_code == 404
    body = response.json()
    assert "ZZZZ" in body["detail"]
    assert body["known_symbols"] == KNOWN


def test_unparsable_bodies_are_400_with_a_message(api: TestClient) -> None:
    for body in (b"{not json", b'{"symbol": NaN}', b'{"symbol": Infinity}', b'{"symbol": 1e400}'):
        response = api.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        assert "not valid JSON" in response.json()["detail"], response.text


def test_malformed_requests_are_422_with_a_message(api: TestClient) -> None:
    cases = [
        ({"json": {"symbol": 12}}, "symbol"),
        ({"json": {"symbol": ""}}, "symbol"),
        ({"json": {"symbol": "AAPL", "extra": 1}}, "extra"),
        ({"json": {}}, "symbol"),
        ({"json": {"symbol": "DROP TABLE;"}}, "ticker"),
    ]
    for kwargs, word in cases:
        response = api.post("/predict", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 422, (kwargs, response.text)
        assert word.lower() in response.json()["detail"].lower(), (kwargs, response.text)


def test_batch_predicts_every_symbol(api: TestClient) -> None:
    response = api.post("/predict/batch", json={"symbols": ["AAPL", "GOOGL"]})
    assert response.status_code == 200, response.text
    assert [p["symbol"] for p in response.json()["predictions"]] == ["AAPL", "GOOGL"]


def test_batch_with_an_unknown_symbol_serves_and_logs_nothing(api: TestClient) -> None:
    response = api.post("/predict/batch", json={"symbols": ["AAPL", "NOPE"]})
    assert response.status_code == 404
    assert "NOPE" in response.json()["detail"]
    assert api.get("/feature-store/stats").json()["lookups"] == 0


def test_batch_limits(api: TestClient) -> None:
    assert api.post("/predict/batch", json={"symbols": ["AAPL", "AAPL"]}).status_code == 422
    assert api.post("/predict/batch", json={"symbols": []}).status_code == 422
    too_many = api.post("/predict/batch", json={"symbols": KNOWN})
    assert too_many.status_code == 413
    assert "at most 3" in too_many.json()["detail"]


def test_next_bar_resolves_the_prediction(api: TestClient) -> None:
    prediction = api.post("/predict", json={"symbol": "AMZN"}).json()
    as_of = prediction["as_of"]
    nxt = synthetic_bars_after("AMZN", after=datetime.fromisoformat(as_of), count=1)[0]
    ingested = api.post("/market-data", json={"bars": [Bar.from_bar_in(nxt).model_dump(mode="json")]})
    assert ingested.status_code == 200, ingested.text
    assert ingested.json()["resolved_predictions"] >= 1
    logged = api.get(f"/predictions/{prediction['prediction_id']}").json()
    assert logged["status"] == "resolved"
    assert logged["resolution_source"] == "bars"
    assert logged["correct"] == (logged["actual_direction"] == prediction["direction"])
    # the new bar invalidated the cached features: the next prediction is about the new bar
    again = api.post("/predict", json={"symbol": "AMZN"}).json()
    assert again["served_from"] == "computed"
    assert again["as_of"] != as_of


def test_feedback_resolves_once(api: TestClient) -> None:
    prediction = api.post("/predict", json={"symbol": "MSFT"}).json()
    pid = prediction["prediction_id"]
    first = api.post("/feedback", json={"prediction_id": pid, "actual_direction": "up"})
    assert first.status_code == 200, first.text
    assert first.json()["correct"] == (prediction["direction"] == "up")
    assert api.post("/feedback", json={"prediction_id": pid, "actual_direction": "up"}).status_code == 200
    conflict = api.post("/feedback", json={"prediction_id": pid, "actual_direction": "down"})
    assert conflict.status_code == 409
    assert "already resolved" in conflict.json()["detail"]


def test_feedback_and_lookup_of_unknown_ids(api: TestClient) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    assert api.post("/feedback", json={"prediction_id": missing, "actual_direction": "up"}).status_code == 404
    assert api.get(f"/predictions/{missing}").status_code == 404
    assert api.post("/feedback", json={"prediction_id": "short", "actual_direction": "up"}).status_code == 422
    bad = api.post("/feedback", json={"prediction_id": missing, "actual_direction": "sideways"})
    assert bad.status_code == 422
