"""Who may write, what errors look like, and what the OpenAPI document promises about both."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.container import Container
from tests.conftest import ClientFactory, make_settings
from tests.harness import free_port

KEY = "test-key-7d2e"
BAR = {
    "symbol": "TEST",
    "timestamp": "2020-06-01T21:00:00Z",
    "open": 10.0,
    "high": 11.0,
    "low": 9.5,
    "close": 10.5,
    "volume": 1000,
}


def with_overrides(settings: Settings, **values: Any) -> Settings:
    """The same settings with some values changed, validated like any other."""
    return Settings(_env_file=None, **{**settings.model_dump(), **values})  # type: ignore[call-arg]


def remote_client(settings: Settings, host: str) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False, client=(host, 40000))


def test_writes_need_the_api_key_when_one_is_set(
    make_client: ClientFactory, backend_settings: Settings
) -> None:
    api = make_client(with_overrides(backend_settings, API_KEY=KEY))
    missing = api.post("/market-data", json={"bars": [BAR]})
    assert missing.status_code == 401
    assert "X-API-Key" in missing.json()["detail"]
    wrong = api.post("/market-data", json={"bars": [BAR]}, headers={"X-API-Key": KEY + "x"})
    assert wrong.status_code == 401
    assert "does not hold the configured API key" in wrong.json()["detail"]
    feedback = {"prediction_id": str(uuid.uuid4()), "actual_direction": "up"}
    assert api.post("/feedback", json=feedback).status_code == 401
    right = api.post("/market-data", json={"bars": [BAR]}, headers={"X-API-Key": KEY})
    assert right.status_code == 200, right.text
    assert api.post("/feedback", json=feedback, headers={"X-API-Key": KEY}).status_code == 404
    # Reads stay open.
    assert api.post("/predict", json={"symbol": "AAPL"}).status_code == 200
    assert api.get("/health").status_code == 200


def test_a_key_is_accepted_from_any_client(data_dir: Path) -> None:
    with remote_client(make_settings(data_dir, API_KEY=KEY), "203.0.113.5") as api:
        response = api.post("/market-data", json={"bars": [BAR]}, headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text


def test_without_a_key_only_loopback_clients_may_write(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(data_dir)
    with caplog.at_level(logging.WARNING), remote_client(settings, "203.0.113.5") as api:
        refused = api.post("/market-data", json={"bars": [BAR]})
        assert refused.status_code == 403
        assert "loopback clients only" in refused.json()["detail"]
        assert api.post("/predict", json={"symbol": "AAPL"}).status_code == 200
    assert any("API_KEY is not set" in record.getMessage() for record in caplog.records)
    for host in ("127.0.0.1", "::1"):
        with remote_client(settings, host) as api:
            assert api.post("/market-data", json={"bars": [BAR]}).status_code == 200, host


def test_pool_exhaustion_is_503_with_retry_after(
    make_client: ClientFactory, backend_settings: Settings
) -> None:
    settings = with_overrides(
        backend_settings, DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0, DATABASE_POOL_TIMEOUT_SECONDS=0.2
    )
    api = make_client(settings)
    container: Container = api.app.state.container  # type: ignore[attr-defined]
    with container.database.engine.connect():  # the only connection, held
        response = api.get(f"/predictions/{uuid.uuid4()}")
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert response.json() == {"detail": "database unavailable; nothing was written"}
    assert api.get(f"/predictions/{uuid.uuid4()}").status_code == 404  # and it recovers


def test_an_oversized_body_is_413(make_client: ClientFactory, backend_settings: Settings) -> None:
    api = make_client(with_overrides(backend_settings, MAX_BODY_BYTES=2000))
    response = api.post("/market-data", json={"bars": [BAR] * 30})
    assert response.status_code == 413
    assert set(response.json()) == {"detail"}


def test_registry_errors_stay_out_of_health_and_models(make_client: ClientFactory, data_dir: Path) -> None:
    port = free_port()  # nothing listens: connections are refused
    api = make_client(make_settings(data_dir, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"))
    listing = api.get("/models").json()
    assert listing["registry_reachable"] is False
    mlflow = api.get("/health").json()["components"]["mlflow"]
    assert mlflow["status"] == "down"
    for text in (listing["detail"], mlflow["detail"]):
        assert str(port) not in text, text
        assert "Error" not in text, text
        assert "http" not in text, text


def test_the_openapi_document_describes_the_real_answers(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": document["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("2") or path == "/health":
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
    writes = {("post", "/market-data"), ("post", "/feedback")}
    for method, path in writes:
        operation = document["paths"][path][method]
        assert operation["security"] == [{"ApiKey": []}]
        assert {"401", "403"} <= set(operation["responses"])
    bar = schemas["Bar"]["properties"]
    assert bar["close"]["maximum"] == 1e6
    assert bar["volume"] == {**bar["volume"], "type": "integer", "minimum": 0, "maximum": 10**12}
    assert schemas["PredictRequest"]["properties"]["symbol"]["pattern"].startswith("^")
    assert schemas["MarketDataBatch"]["properties"]["bars"]["maxItems"] == 50  # MAX_BATCH_BARS here
