"""POST /market-data: validated, atomic, idempotent."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def bar(ts: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "symbol": "TEST",
        "timestamp": ts,
        "open": 10.0,
        "high": 11.0,
        "low": 9.5,
        "close": 10.5,
        "volume": 1000,
    }
    return {**values, **overrides}


def test_batch_is_stored_and_resending_it_is_idempotent(api: TestClient) -> None:
    batch = {"bars": [bar("2020-01-02T21:00:00Z"), bar("2020-01-03T21:00:00Z")]}
    first = api.post("/market-data", json=batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"inserted": 2, "updated": 0, "symbols": ["TEST"], "resolved_predictions": 0}
    again = api.post("/market-data", json=batch)
    assert again.json()["inserted"] == 0
    assert again.json()["updated"] == 2


def test_naive_timestamps_are_utc(api: TestClient) -> None:
    first = api.post("/market-data", json={"bars": [bar("2020-02-01T21:00:00")]}).json()
    second = api.post("/market-data", json={"bars": [bar("2020-02-01T21:00:00+00:00")]}).json()
    assert (first["inserted"], second["updated"]) == (1, 1)


def test_bad_bars_are_rejected_with_a_message(api: TestClient) -> None:
    cases = [
        (bar("2020-01-02T21:00:00Z", close=-1), "greater than 0"),
        (bar("2020-01-02T21:00:00Z", volume=-5), "greater than or equal to 0"),
        (bar("2020-01-02T21:00:00Z", high=9.0, low=9.5), "below low"),
        (bar("2020-01-02T21:00:00Z", open=20.0), "within [low, high]"),
        (bar("not-a-date"), "date-time"),
        (bar(1700000000), "date-time"),
        (bar("2020-01-02T21:00:00Z", close="ten"), "number"),
        (bar("2020-01-02T21:00:00Z", symbol="bad symbol!"), "ticker"),
    ]
    for payload, message in cases:
        response = api.post("/market-data", json={"bars": [payload]})
        assert response.status_code == 422, (payload, response.text)
        assert message in response.json()["detail"], (payload, response.text)


def test_a_rejected_batch_writes_nothing(api: TestClient) -> None:
    good = bar("2020-03-02T21:00:00Z", symbol="ATOM")
    bad = bar("2020-03-03T21:00:00Z", symbol="ATOM", low=50.0)
    assert api.post("/market-data", json={"bars": [good, bad]}).status_code == 422
    duplicated = api.post("/market-data", json={"bars": [good, good]})
    assert duplicated.status_code == 422
    assert "duplicated bar" in duplicated.json()["detail"]
    # Had either batch written `good`, this would count it as an update.
    assert api.post("/market-data", json={"bars": [good]}).json()["inserted"] == 1


def test_oversized_and_empty_batches(api: TestClient) -> None:
    too_many = {"bars": [bar(f"2021-01-{day:02d}T21:00:00Z") for day in range(1, 29)] * 2}
    response = api.post("/market-data", json=too_many)
    assert response.status_code == 413
    assert "at most 50" in response.json()["detail"]
    assert api.post("/market-data", json={"bars": []}).status_code == 422


def test_numbers_that_would_poison_the_features_are_rejected(api: TestClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (bar("2020-04-01T21:00:00Z", volume=True), "not a boolean"),
        (bar("2020-04-01T21:00:00Z", close=True), "valid number"),
        (bar("2020-04-01T21:00:00Z", close="10.5"), "valid number"),
        (bar("2020-04-01T21:00:00Z", volume=10.5), "whole number"),
        (bar("2020-04-01T21:00:00Z", high=1e300, close=1e300), "must be <= 1e+06"),
        (bar("2020-04-01T21:00:00Z", volume=10**13), "must be <= 1e+12"),
        (bar("2099-04-01T21:00:00Z"), "in the future"),
    ]
    for payload, message in cases:
        response = api.post("/market-data", json={"bars": [payload]})
        assert response.status_code == 422, (payload, response.text)
        assert message in response.json()["detail"], (payload, response.text)
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"bars": [{"symbol": "TEST", "timestamp": "2020-04-01T21:00:00Z", "open": 1, "high": 2, '
        body += b'"low": 1, "close": ' + literal + b', "volume": 1}]}'
        response = api.post("/market-data", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (literal, response.text)
    # Nothing of the above was stored.
    assert api.post("/market-data", json={"bars": [bar("2020-04-01T21:00:00Z")]}).json()["inserted"] == 1


def test_a_whole_float_is_a_volume(api: TestClient) -> None:
    response = api.post("/market-data", json={"bars": [bar("2020-05-01T21:00:00Z", volume=1000.0)]})
    assert response.status_code == 200, response.text
