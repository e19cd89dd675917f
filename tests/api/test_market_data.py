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
    batch = {"bars": [bar("2030-01-02T21:00:00Z"), bar("2030-01-03T21:00:00Z")]}
    first = api.post("/market-data", json=batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"inserted": 2, "updated": 0, "symbols": ["TEST"], "resolved_predictions": 0}
    again = api.post("/market-data", json=batch)
    assert again.json()["inserted"] == 0
    assert again.json()["updated"] == 2


def test_naive_timestamps_are_utc(api: TestClient) -> None:
    first = api.post("/market-data", json={"bars": [bar("2030-02-01T21:00:00")]}).json()
    second = api.post("/market-data", json={"bars": [bar("2030-02-01T21:00:00+00:00")]}).json()
    assert (first["inserted"], second["updated"]) == (1, 1)


def test_bad_bars_are_rejected_with_a_message(api: TestClient) -> None:
    cases = [
        (bar("2030-01-02", close=-1), "greater than 0"),
        (bar("2030-01-02", volume=-5), "greater than or equal to 0"),
        (bar("2030-01-02", high=9.0, low=9.5), "below low"),
        (bar("2030-01-02", open=20.0), "within [low, high]"),
        (bar("not-a-date"), "datetime"),
        (bar("2030-01-02", close="ten"), "number"),
        (bar("2030-01-02", symbol="bad symbol!"), "ticker"),
    ]
    for payload, message in cases:
        response = api.post("/market-data", json={"bars": [payload]})
        assert response.status_code == 422, (payload, response.text)
        assert message in response.json()["detail"], (payload, response.text)


def test_a_rejected_batch_writes_nothing(api: TestClient) -> None:
    good = bar("2030-03-02T21:00:00Z", symbol="ATOM")
    bad = bar("2030-03-03T21:00:00Z", symbol="ATOM", low=50.0)
    assert api.post("/market-data", json={"bars": [good, bad]}).status_code == 422
    duplicated = api.post("/market-data", json={"bars": [good, good]})
    assert duplicated.status_code == 422
    assert "duplicated bar" in duplicated.json()["detail"]
    # Had either batch written `good`, this would count it as an update.
    assert api.post("/market-data", json={"bars": [good]}).json()["inserted"] == 1


def test_oversized_and_empty_batches(api: TestClient) -> None:
    too_many = {"bars": [bar(f"2031-01-{day:02d}T21:00:00Z") for day in range(1, 29)] * 2}
    response = api.post("/market-data", json=too_many)
    assert response.status_code == 413
    assert "at most 50" in response.json()["detail"]
    assert api.post("/market-data", json={"bars": []}).status_code == 422
