"""Health, models, feature store introspection, docs: what operators read."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_health_reports_every_component(api: TestClient) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["components"]) == {"database", "prediction_log", "redis", "mlflow", "model"}
    assert body["components"]["database"]["status"] == "up"
    assert body["components"]["prediction_log"]["status"] == "up"
    assert body["components"]["redis"]["status"] == "disabled"
    assert body["components"]["model"]["status"] == "up"


def test_models_lists_the_champion_and_what_is_served(api: TestClient) -> None:
    current = api.get("/models/current").json()
    assert current["alias"] == "champion"
    assert set(current["symbols"]) == {"AAPL", "AMZN", "GOOGL", "MSFT", "NVDA"}
    assert abs(sum(current["feature_importances"].values()) - 1) < 1e-6
    listing = api.get("/models").json()
    assert listing["registry_reachable"] is True
    champions = [v for v in listing["versions"] if v["champion"]]
    assert [v["version"] for v in champions] == [current["version"]]
    assert champions[0]["served"] is True


def test_feature_store_stats_count_lookups_per_level(api: TestClient) -> None:
    api.post("/predict", json={"symbol": "AAPL"})
    api.post("/predict", json={"symbol": "AAPL"})
    stats = api.get("/feature-store/stats").json()
    assert stats["lookups"] == 2
    assert stats["misses"] == 1
    assert stats["hits"] == {"l1": 1, "redis": 0}
    assert stats["hit_rate"] == 0.5
    assert stats["keys"]["l1"] == 1
    assert stats["redis"]["configured"] is False


def test_feature_metadata(api: TestClient) -> None:
    body = api.get("/feature-store/metadata/googl").json()
    assert body["symbol"] == "GOOGL"
    assert body["version"] == "1"
    assert len(body["features"]) == 9
    assert body["served_from"] == "computed"
    assert 0 < body["ttl_seconds_left"]["l1"] <= 30
    assert body["source_bars"]["count"] == 60
    assert api.get("/feature-store/metadata/googl").json()["served_from"] == "l1"
    unknown = api.get("/feature-store/metadata/XXXX")
    assert unknown.status_code == 404
    assert "AAPL" in unknown.json()["detail"]


def test_docs_and_openapi(api: TestClient) -> None:
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch", "/feedback", "/market-data", "/health", "/metrics"):
        assert path in paths
    assert "/feature-store/metadata/{symbol}" in paths


def test_no_input_produces_a_server_error(api: TestClient) -> None:
    bodies: list[object] = [
        None,
        [],
        "x",
        1,
        {"symbol": None},
        {"symbols": "AAPL"},
        {"bars": [{}]},
        {"a": "é" * 5000},
    ]
    for path in ("/predict", "/predict/batch", "/market-data", "/feedback"):
        for body in bodies:
            response = api.post(path, json=body)
            assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
    for path in ("/predictions/%00", "/feature-store/metadata/%20", "/predictions/" + "9" * 500):
        assert api.get(path).status_code < 500, path
